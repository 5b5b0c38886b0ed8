"""The permission preflight (webhook.kube.access): what a policy needs, and how a denial reads.

``review`` is given the authorizer's answers as a function of the request attributes: a
table of what the chart's RBAC would allow, standing in for the API server's authorizer
(the real one answers in tests/e2e/test_policy_live_e2e.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from webhook.kube.access import (
    AccessUnknown,
    CachedReviewer,
    Need,
    Reviewer,
    check_policy,
    cleanup_needs,
    required,
    review,
)
from webhook.kube.errors import ApiError, ApiForbidden, ApiTimeout, ApiUnavailable
from webhook.policy.matching import load_policy

POLICY = load_policy(
    """
rules:
  - name: gar
    registries: [europe-docker.pkg.dev]
    secret: gar-pull
    source: {secret: {namespace: vault, name: gar-credentials}}
  - name: gar-eu
    registries: [gcr.io]
    secret: gar-pull
    source: {secret: {namespace: vault, name: gar-credentials}}
  - name: harbor
    registries: [harbor.example.com]
    secret: harbor-pull
    source:
      credentials: {registry: harbor.example.com, username: robot, passwordFrom: {namespace: ci, name: robot, key: t}}
  - name: reference-only
    registries: [quay.io]
    secret: quay-pull
"""
)


def test_required_lists_copies_sources_and_create() -> None:
    assert required(POLICY) == [
        Need("copy", "", "gar-pull", ("gar", "gar-eu")),
        Need("copy", "", "harbor-pull", ("harbor",)),
        Need("create", "", "", ("gar", "gar-eu", "harbor")),
        Need("source", "ci", "robot", ("harbor",)),
        Need("source", "vault", "gar-credentials", ("gar", "gar-eu")),
    ]


def test_a_reference_only_policy_needs_nothing() -> None:
    assert required(load_policy("rules: [{name: q, registries: [quay.io], secret: quay-pull}]")) == []


def allow(*granted: tuple[str, str, str]) -> Reviewer:
    """An authorizer allowing exactly ``(verb, namespace, name)`` (``"*"``: any name)."""

    def reviewer(attrs: dict[str, str]) -> tuple[bool, str]:
        key = (attrs["verb"], attrs.get("namespace", ""), attrs.get("name", ""))
        ok = key in granted or (key[0], key[1], "*") in granted
        return ok, "RBAC: allowed" if ok else ""

    return reviewer


CHART = [
    ("create", "", ""),
    *[(v, "", n) for n in ("gar-pull", "harbor-pull") for v in ("get", "list", "watch", "patch", "delete")],
    *[(v, "vault", "gar-credentials") for v in ("get", "list", "watch")],
    *[(v, "ci", "robot") for v in ("get", "list", "watch")],
]


def missing(what: str, rules: str, fix: str) -> str:
    """The problem ``check_policy`` reports for a permission the chart's RBAC lacks, and how to grant it."""
    return f"missing permission to {what} (rule {rules}): {fix}"


#: How the chart grants a name it does not cover by default (either way).
EXTRA_NAME = "to the chart value rbac.extraSecretNames (or set rbac.secretAccess: clusterWide)"
EXTRA_SOURCE = "to the chart value rbac.extraSourceSecrets (or set rbac.secretAccess: clusterWide)"


@pytest.mark.parametrize(
    ("missing_grant", "problems"),
    [
        pytest.param(lambda g: False, [], id="all-granted"),
        pytest.param(
            lambda g: g[2] == "harbor-pull",
            [
                missing(
                    "get, list, watch, patch, delete Secrets named 'harbor-pull' cluster-wide",
                    "harbor",
                    f"add harbor-pull {EXTRA_NAME}",
                )
            ],
            id="copy-name-not-covered",
        ),
        pytest.param(
            lambda g: g == ("watch", "", "gar-pull"),
            [missing("watch Secrets named 'gar-pull' cluster-wide", "gar, gar-eu", f"add gar-pull {EXTRA_NAME}")],
            id="one-verb",
        ),
        pytest.param(
            lambda g: g[1] == "ci",
            [
                missing(
                    "get, list, watch the source Secret ci/robot",
                    "harbor",
                    f"add {{namespace: ci, name: robot}} {EXTRA_SOURCE}",
                )
            ],
            id="source-not-covered",
        ),
        pytest.param(
            lambda g: g[0] == "create",
            [
                missing(
                    "create Secrets", "gar, gar-eu, harbor", "the chart grants it with rbac.create and any copy name"
                )
            ],
            id="no-create",
        ),
    ],
)
def test_review(missing_grant: Callable[[tuple[str, str, str]], bool], problems: list[str]) -> None:
    """The chart's grants (``CHART``) but those ``missing_grant`` picks: each gap is one problem, said exactly."""
    report = check_policy(POLICY, allow(*[g for g in CHART if not missing_grant(g)]))
    assert report.problems() == problems
    assert report.ok is (not problems)


def test_cleanup_shortfall_warns_but_does_not_reject() -> None:
    report = check_policy(POLICY, allow(*CHART), retired=["old-pull"])
    assert report.ok
    assert report.warnings() == [
        "copies of 'old-pull' await cleanup but the webhook may not list, watch, delete them: "
        "keep old-pull in rbac.extraSecretNames until they are gone"
    ]
    granted = [*CHART, *[(v, "", "old-pull") for v in ("list", "watch", "delete")]]
    assert check_policy(POLICY, allow(*granted), retired=["old-pull"]).warnings() == []
    assert cleanup_needs(["b", "a", "a"]) == [Need("cleanup", "", "a"), Need("cleanup", "", "b")]


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        pytest.param(ApiUnavailable(action="create SelfSubjectAccessReview"), "unknown", id="api-down"),
        pytest.param(ApiTimeout(action="create SelfSubjectAccessReview"), "unknown", id="timeout"),
        pytest.param(ApiForbidden(action="create SelfSubjectAccessReview", status=403), "unverified", id="403"),
    ],
)
def test_when_the_authorizer_cannot_be_asked(error: ApiError, outcome: str) -> None:
    def failing(attrs: dict[str, str]) -> tuple[bool, str]:
        raise error

    if outcome == "unknown":
        with pytest.raises(AccessUnknown):
            review(required(POLICY), failing)
    else:
        report = review(required(POLICY), failing)
        assert report.ok
        assert report.unverified


def test_attributes_of_a_review() -> None:
    (copy_need,) = [n for n in required(POLICY) if n.name == "harbor-pull"]
    attrs = [p.attributes() for p in copy_need.permissions()]
    assert attrs[0] == {"verb": "get", "group": "", "resource": "secrets", "name": "harbor-pull"}
    (source,) = [n for n in required(POLICY) if n.kind == "source" and n.namespace == "ci"]
    assert source.permissions()[0].attributes() == {
        "verb": "get",
        "group": "",
        "resource": "secrets",
        "namespace": "ci",
        "name": "robot",
    }


def test_allowed_answers_are_remembered_for_a_while_denials_never() -> None:
    now = [0.0]
    answers = {"a": True, "b": False}
    cached = CachedReviewer(lambda attrs: (answers[attrs["name"]], ""), ttl=30.0, clock=lambda: now[0])
    for _ in range(3):
        assert cached({"verb": "get", "name": "a"})[0] is True
        assert cached({"verb": "get", "name": "b"})[0] is False
    assert cached.asked == 4  # "a" once, "b" every time
    answers["b"] = True  # granted by a helm upgrade: seen at once
    assert cached({"verb": "get", "name": "b"})[0] is True
    answers["a"] = False  # revoked: noticed once the answer expires
    assert cached({"verb": "get", "name": "a"})[0] is True
    now[0] = 31.0
    assert cached({"verb": "get", "name": "a"})[0] is False
