"""Fail-open recovery (issue 12): the pure decision as a table, and its settings from the chart to the CLI.

The decision (:func:`webhook.recovery.decide.decide`) says which Pending Pod, admitted without
a Secret the policy would have injected and stuck on pulling the image that needs it, is
deleted (a controller owns it: it is recreated through the webhook), only reported (a bare
Pod), waited for (in its grace period), or given up on (its controller's budget is spent).
The loop that acts on it runs in tests/e2e (a real API server; the node scenario).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.builders import PULL_SECRETS_ENABLED, policy_yaml, rule
from tests.test_chart import render
from webhook.cli import build_parser, settings_from_args
from webhook.config import KubeSettings, RecoverySettings, SettingsError
from webhook.policy.matching import load_policy
from webhook.recovery.decide import Decision, Owner, controller_of, decide

POLICY = load_policy(
    policy_yaml(
        rule("example", "registry.example.com", "example-pull", source="psi-system/example-credentials"),
        rule(
            "labelled",
            "labelled.example.com",
            "labelled-pull",
            source="psi-system/labelled-credentials",
            namespaces=PULL_SECRETS_ENABLED,
        ),
        exclude=["kube-system", "excluded-*"],
    )
)
SETTINGS = RecoverySettings(enabled=True, grace_seconds=60, max_per_owner=3, window_seconds=3600)
NOW = 10_000.0
WALL = 1_764_547_200.0  # the wall clock the deletions are on (the ledger's), unrelated to NOW
PRIVATE = "registry.example.com/team/app:1.0"
PUBLIC = "docker.io/library/busybox:1.36"
OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f", "uid": "rs-1", "controller": True}


def waiting(name: str, reason: str) -> dict[str, Any]:
    return {"name": name, "state": {"waiting": {"reason": reason, "message": "..."}}}


def pod(
    *,
    image: str = PRIVATE,
    reason: str | None = "ImagePullBackOff",
    owners: list[dict[str, Any]] | None = None,
    namespace: str = "team-a",
    pull_secrets: list[str] | None = None,
    phase: str = "Pending",
    init_image: str | None = None,
    init_reason: str | None = None,
    labels: dict[str, str] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [waiting("app", reason)] if reason else []}
    if init_image is not None:
        spec["initContainers"] = [{"name": "init", "image": init_image}]
        status["initContainerStatuses"] = [waiting("init", init_reason)] if init_reason else []
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    metadata: dict[str, Any] = {"name": "web-7d9f-abcde", "namespace": namespace, "uid": "pod-1"}
    metadata["ownerReferences"] = [OWNER] if owners is None else owners
    if labels:
        metadata["labels"] = labels
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": metadata, "spec": spec, "status": status}


@dataclass(frozen=True)
class Case:
    id: str
    pod: dict[str, Any]
    action: str
    stuck_since: float | None = NOW - 61
    deletions: tuple[float, ...] = ()
    labels: dict[str, str] | None = field(default_factory=dict)
    missing: tuple[str, ...] | None = None
    why: str = ""
    wall_now: float | None = None


CASES = [
    Case("owned-stuck-past-grace-is-deleted", pod(), "delete", missing=("example-pull",), why="ReplicaSet web-7d9f"),
    Case("err-image-pull-counts-too", pod(reason="ErrImagePull"), "delete"),
    Case("within-grace-waits", pod(), "wait", stuck_since=NOW - 30, why="30s of a 60s grace"),
    Case("first-seen-now-waits", pod(), "wait", stuck_since=None),
    Case("grace-is-inclusive", pod(), "delete", stuck_since=NOW - 60),
    Case("bare-pod-is-only-reported", pod(owners=[]), "report", why="no controller owns it"),
    Case(
        "owner-reference-that-is-not-a-controller-is-bare",
        pod(owners=[{**OWNER, "controller": False}]),
        "report",
    ),
    Case("budget-spent-gives-up", pod(), "give_up", deletions=(NOW - 100, NOW - 200, NOW - 300), why="3 Pods"),
    Case("old-deletions-leave-the-window", pod(), "delete", deletions=(NOW - 4000, NOW - 100, NOW - 200)),
    Case(
        "deletions-on-the-wall-clock",
        pod(),
        "give_up",
        deletions=(WALL - 100, WALL - 200, WALL - 300),
        wall_now=WALL,
        why="3 Pods",
    ),
    Case("wall-clock-deletions-out-of-the-window", pod(), "delete", deletions=(WALL - 3600,) * 3, wall_now=WALL),
    Case("a-replica-clock-a-little-ahead-counts", pod(), "give_up", deletions=(NOW + 5, NOW - 100, NOW - 200)),
    Case("a-deletion-far-in-the-future-is-a-bad-clock", pod(), "delete", deletions=(NOW + 4000, NOW - 1, NOW - 2)),
    Case("has-its-reference-already", pod(pull_secrets=["example-pull"]), "none", why="references every"),
    Case("image-no-rule-matches", pod(image=PUBLIC), "none", why="references every"),
    Case("pulling-fine-from-a-private-registry", pod(reason="ContainerCreating"), "none", why="no container"),
    Case("no-status-yet", pod(reason=None), "none", missing=("example-pull",)),
    Case(
        "stuck-container-is-not-the-one-needing-the-secret",
        pod(image=PRIVATE, reason=None, init_image=PUBLIC, init_reason="ImagePullBackOff"),
        "none",
        why="no container",
    ),
    Case(
        "init-container-stuck-on-the-secret",
        pod(image=PUBLIC, init_image=PRIVATE, init_reason="ErrImagePull"),
        "delete",
    ),
    Case("running-pod-is-left-alone", pod(phase="Running"), "none", why="not Pending"),
    Case("being-deleted", pod(deleting=True), "none"),
    Case("skip-label", pod(labels={"pullsecret-injector.io/skip": "true"}), "none"),
    Case("excluded-namespace", pod(namespace="excluded-batch"), "none", why="excluded"),
    Case("selector-rule-namespace-not-selected", pod(image="labelled.example.com/x:1"), "none"),
    Case(
        "selector-rule-namespace-selected",
        pod(image="labelled.example.com/x:1"),
        "delete",
        labels={"pull-secrets": "enabled"},
        missing=("labelled-pull",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decide(case: Case) -> None:
    before = copy.deepcopy(case.pod)
    decision = decide(
        case.pod,
        policy=POLICY,
        namespace_labels=case.labels,
        stuck_since=case.stuck_since,
        now=NOW,
        owner_deletions=case.deletions,
        settings=SETTINGS,
        wall_now=case.wall_now,
    )
    assert decision.action == case.action, decision
    assert case.why in decision.why
    if case.missing is not None:
        assert decision.missing == case.missing
    if case.action in ("delete", "give_up"):
        assert decision.owner == Owner(kind="ReplicaSet", name="web-7d9f", uid="rs-1")
    assert decision.stuck_now == (case.action != "none")
    assert case.pod == before, "the decision must not change the Pod"


def test_a_decision_names_no_credential() -> None:
    decision = decide(
        pod(), policy=POLICY, namespace_labels={}, stuck_since=0.0, now=NOW, owner_deletions=(), settings=SETTINGS
    )
    assert isinstance(decision, Decision)
    assert "example-credentials" not in decision.why  # the source's name is not the user's business here


@pytest.mark.parametrize(
    ("owners", "expected"),
    [
        pytest.param([], None, id="none"),
        pytest.param([{**OWNER, "controller": False}], None, id="not-controller"),
        pytest.param([{"kind": "Node", "name": "n"}, OWNER], Owner("ReplicaSet", "web-7d9f", "rs-1"), id="second"),
    ],
)
def test_controller_of(owners: list[dict[str, Any]], expected: Owner | None) -> None:
    assert controller_of({"metadata": {"ownerReferences": owners}}) == expected


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("build", "setting"),
    [
        pytest.param(lambda: RecoverySettings(grace_seconds=-1), "grace_seconds", id="grace"),
        pytest.param(lambda: RecoverySettings(interval=0), "interval", id="interval"),
        pytest.param(lambda: RecoverySettings(max_per_owner=0), "max_per_owner", id="budget"),
        pytest.param(lambda: KubeSettings(lease_duration=0.5), "lease_duration", id="lease-under-1s"),
        pytest.param(lambda: KubeSettings(renew_deadline=15.0), "renew_deadline", id="renew-not-below-lease"),
        pytest.param(lambda: KubeSettings(retry_period=9.0), "retry_period", id="retry-jitter-above-renew"),
    ],
)
def test_bad_settings_are_refused(build: Any, setting: str) -> None:
    with pytest.raises(SettingsError) as info:
        build()
    assert info.value.setting == setting


def test_chart_defaults_leave_recovery_off_and_grant_no_pod_access() -> None:
    rendered = render({})
    args = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = settings_from_args(build_parser().parse_args(args), env={})
    assert settings.recovery == RecoverySettings()
    assert not settings.recovery.enabled
    rules = [rule for role in rendered.all("ClusterRole") for rule in role.get("rules") or []]
    assert not [rule for rule in rules if "pods" in rule.get("resources", [])]


def test_chart_recovery_and_leader_election_values_reach_the_settings() -> None:
    rendered = render(
        {
            "recovery": {"enabled": True, "graceSeconds": 45, "intervalSeconds": 5},
            "server": {"leaderElection": {"leaseDuration": 20, "renewDeadline": 12, "retryPeriod": 3}},
        }
    )
    args = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = settings_from_args(build_parser().parse_args(args), env={})
    assert settings.recovery == RecoverySettings(enabled=True, grace_seconds=45, interval=5)
    assert (settings.kube.lease_duration, settings.kube.renew_deadline, settings.kube.retry_period) == (20, 12, 3)
    # Its own ClusterRole: list and delete Pods, nothing else, bound to the chart's ServiceAccount.
    (role,) = [r for r in rendered.all("ClusterRole") if r["metadata"]["name"].endswith("-recovery")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]}]
    (binding,) = [b for b in rendered.all("ClusterRoleBinding") if b["metadata"]["name"].endswith("-recovery")]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["kind"] == "ServiceAccount"


def test_chart_default_leader_election_values_are_the_settings_defaults() -> None:
    rendered = render({})
    args = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    kube = settings_from_args(build_parser().parse_args(args), env={}).kube
    defaults = KubeSettings()
    assert (kube.lease_duration, kube.renew_deadline, kube.retry_period) == (
        defaults.lease_duration,
        defaults.renew_deadline,
        defaults.retry_period,
    )
