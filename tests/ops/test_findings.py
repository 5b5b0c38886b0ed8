"""``diagnose`` table-tested: one healthy snapshot, and one change per diagnosis with its verdict and fix."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.builders import PULL_SECRETS_ENABLED, policy_yaml, rule
from webhook.ops.findings import diagnose, exit_code, render_json, render_text
from webhook.ops.snapshot import Finding, Snapshot, Unreadable, WebhookProbe, selector_fix
from webhook.policy.matching import load_policy
from webhook.policy.model import LabelSelector
from webhook.secrets.desired import build_copy

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
NS = "shop"
POLICY = load_policy(
    policy_yaml(
        rule("shop", "registry.example.com", "shop-pull", source="sys/shop-src"),
        rule("labelled", "labelled.example.com", "lab-pull", namespaces=PULL_SECRETS_ENABLED),
        rule("only-prod", "prod.example.com", "prod-pull", namespaces={"include": ["prod-*"]}),
        rule("hand", "hand.example.com", "hand-pull"),
        exclude=["kube-system", "ex-*"],
    )
)
SECRET_VALUE = "findings-pass-31f0"


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def config(auths: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(json.dumps({"auths": auths}))},
        "metadata": {"name": "x"},
    }


def entry(user: str = "robot", password: str = SECRET_VALUE) -> dict[str, str]:
    return {"username": user, "password": password, "auth": b64(f"{user}:{password}")}


SOURCE = config({"registry.example.com": entry(), "quay.io": entry("q", "other-pass")})


def managed_copy(source: dict[str, Any] = SOURCE) -> dict[str, Any]:
    rule = POLICY.rules_by_name["shop"]
    assert rule.source is not None
    desired = build_copy(
        name="shop-pull",
        namespace=NS,
        source=rule.source,
        rules=["shop"],
        registries=rule.registries,
        source_secret=source,
    )
    return desired.manifest()


def hook_config(**webhook: Any) -> dict[str, Any]:
    hook: dict[str, Any] = {
        "name": "mutate.pullsecret-injector.io",
        "clientConfig": {"url": "https://127.0.0.1:8443/mutate", "caBundle": b64("pem")},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "failurePolicy": "Ignore",
        "namespaceSelector": {},
        "objectSelector": {
            "matchExpressions": [{"key": "pullsecret-injector.io/skip", "operator": "NotIn", "values": ["true"]}]
        },
    }
    hook.update(webhook)
    return {
        "metadata": {"name": "pullsecret-injector", "creationTimestamp": "2026-11-01T00:00:00Z"},
        "webhooks": [hook],
    }


OK_PROBE = WebhookProbe("https://127.0.0.1:8443", True, "", True, "GET https://127.0.0.1:8443/readyz answered 200")


def healthy(image: str = "registry.example.com/shop/web:1.4", secret: str = "shop-pull") -> Snapshot:  # noqa: S107
    return Snapshot(
        kind="Pod",
        name="web",
        namespace=NS,
        pod={
            "metadata": {
                "name": "web",
                "creationTimestamp": "2026-12-01T11:00:00Z",
                "annotations": {"pullsecret-injector.io/injected": secret},
            },
            "spec": {"containers": [{"name": "web", "image": image}], "imagePullSecrets": [{"name": secret}]},
        },
        namespace_object={"metadata": {"name": NS, "labels": {"kubernetes.io/metadata.name": NS}}},
        service_account={"metadata": {"name": "default"}},
        secrets={"shop-pull": managed_copy()},
        sources={("sys", "shop-src"): SOURCE},
        webhook_configs=[hook_config()],
        probes={("pullsecret-injector", "mutate.pullsecret-injector.io"): OK_PROBE},
        policy=POLICY,
        policy_origin="file p.yaml",
        now=NOW,
    )


def jwt(exp: int) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': exp})}.sig"


def find(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def test_a_healthy_pod_has_no_problem() -> None:
    snap = healthy()
    findings = diagnose(snap)
    assert exit_code(findings) == 0, render_text(snap, findings)
    for check in ("webhook-scope", "webhook-ca", "webhook-ready", "rule", "listed", "secret", "auths", "current"):
        assert [f.verdict for f in find(findings, check)] == ["ok"], check
    report = render_json(snap, findings)
    assert report["exitCode"] == 0
    assert SECRET_VALUE not in json.dumps(report)
    assert SECRET_VALUE not in render_text(snap, findings)


def _set(path: str, value: Any) -> Callable[[Snapshot], None]:
    """A change to the snapshot's Pod at ``a.b.c`` (dict keys)."""

    def change(snap: Snapshot) -> None:
        *parents, last = path.split(".")
        target: Any = snap.pod
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value

    return change


def _image(image: str, listed: list[str] | None = None) -> Callable[[Snapshot], None]:
    def change(snap: Snapshot) -> None:
        snap.pod["spec"]["containers"][0]["image"] = image
        snap.pod["spec"]["imagePullSecrets"] = [{"name": n} for n in (listed or [])]

    return change


def _ns(name: str, **labels: str) -> Callable[[Snapshot], None]:
    def change(snap: Snapshot) -> None:
        snap.namespace = name
        snap.namespace_object = {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}

    return change


def _attr(name: str, value: Any) -> Callable[[Snapshot], None]:
    def change(snap: Snapshot) -> None:
        setattr(snap, name, value)

    return change


def _secret(name: str, value: Any) -> Callable[[Snapshot], None]:
    def change(snap: Snapshot) -> None:
        snap.secrets[name] = value

    return change


def _all(*changes: Callable[[Snapshot], None]) -> Callable[[Snapshot], None]:
    def change(snap: Snapshot) -> None:
        for one in changes:
            one(snap)

    return change


def _pull_failure(snap: Snapshot) -> None:
    snap.pod["status"] = {
        "containerStatuses": [{"name": "web", "state": {"waiting": {"reason": "ErrImagePull", "message": "401"}}}]
    }


EDITED = managed_copy()
EDITED["data"] = {".dockerconfigjson": b64('{"auths":{"registry.example.com":{"auth":"eDp5"}}}')}
ROTATED_SOURCE = config({"registry.example.com": entry(password="rotated-pass")})

CASES = [
    pytest.param(_attr("webhook_configs", []), "webhook-config", "fail", "install the chart", id="webhook-missing"),
    pytest.param(
        _attr("webhook_configs", Unreadable("forbidden")), "webhook-config", "warn", "may get", id="webhook-unreadable"
    ),
    pytest.param(
        _attr(
            "webhook_configs",
            [
                hook_config(
                    rules=[{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]
                )
            ],
        ),
        "webhook-rules",
        "fail",
        "operations [CREATE]",
        id="webhook-rules-without-create",
    ),
    pytest.param(
        _attr("webhook_configs", [hook_config(namespaceSelector={"matchLabels": {"injector": "on"}})]),
        "webhook-namespace",
        "fail",
        "label namespace shop injector=on: kubectl label namespace shop injector=on",
        id="webhook-namespace-unlabelled",
    ),
    pytest.param(
        _attr(
            "webhook_configs",
            [
                hook_config(
                    namespaceSelector={
                        "matchExpressions": [
                            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NS]}
                        ]
                    }
                )
            ],
        ),
        "webhook-namespace",
        "fail",
        "excludes namespace shop by name",
        id="webhook-namespace-excluded-by-name",
    ),
    pytest.param(
        _set("metadata.labels", {"pullsecret-injector.io/skip": "true"}),
        "webhook-object",
        "fail",
        "unlabel the Pod pullsecret-injector.io/skip-",
        id="webhook-object-skip-label",
    ),
    pytest.param(
        _attr(
            "probes",
            {
                ("pullsecret-injector", "mutate.pullsecret-injector.io"): WebhookProbe(
                    "https://127.0.0.1:8443",
                    False,
                    "certificate verify failed: unable to get local issuer certificate",
                    True,
                    "200",
                )
            },
        ),
        "webhook-ca",
        "fail",
        "put the CA that signed",
        id="webhook-wrong-ca",
    ),
    pytest.param(
        _attr(
            "probes",
            {
                ("pullsecret-injector", "mutate.pullsecret-injector.io"): WebhookProbe(
                    "https://127.0.0.1:8443", None, "unreachable", False, "https://127.0.0.1:8443 unreachable"
                )
            },
        ),
        "webhook-ready",
        "fail",
        "logs",
        id="webhook-not-ready",
    ),
    pytest.param(
        _attr("webhook_configs", [hook_config(clientConfig={"url": "https://x/mutate"})]),
        "webhook-ca",
        "warn",
        "set caBundle",
        id="webhook-no-ca-bundle",
    ),
    pytest.param(_ns("ex-team"), "rule", "fail", "excludeNamespaces", id="namespace-excluded-by-policy"),
    pytest.param(
        _image("labelled.example.com/app:1"),
        "rule",
        "fail",
        "label namespace shop pull-secrets=enabled: kubectl label namespace shop pull-secrets=enabled (rule labelled)",
        id="namespace-unlabelled-for-a-selector-rule",
    ),
    pytest.param(
        _image("prod.example.com/app:1"), "rule", "fail", "add shop to namespaces.include", id="namespace-not-included"
    ),
    pytest.param(_image("ghcr.io/app:1"), "rule", "info", "add a rule for it", id="no-rule-public-image"),
    pytest.param(
        _all(_image("ghcr.io/app:1"), _pull_failure), "rule", "fail", "add a rule for it", id="no-rule-pull-failing"
    ),
    pytest.param(_pull_failure, "pull", "fail", "", id="pull-failure-quoted"),
    pytest.param(
        _all(_image("registry.example.com/app:1"), _set("metadata.creationTimestamp", "2026-10-01T00:00:00Z")),
        "listed",
        "fail",
        "delete the Pod",
        id="pod-predates-the-webhook",
    ),
    pytest.param(
        _all(_image("registry.example.com/app:1"), _set("metadata.annotations", {})),
        "listed",
        "fail",
        "check the webhook findings",
        id="pod-not-mutated",
    ),
    pytest.param(
        _secret("shop-pull", None), "secret", "fail", "the webhook creates it from sys/shop-src", id="copy-missing"
    ),
    pytest.param(
        _all(_secret("shop-pull", None), _attr("sources", {("sys", "shop-src"): None})),
        "secret",
        "fail",
        "create the source Secret sys/shop-src",
        id="copy-and-source-missing",
    ),
    pytest.param(
        _all(_image("hand.example.com/app:1", ["hand-pull"]), _secret("hand-pull", None)),
        "secret",
        "fail",
        "pullsecret-injector import docker-config --registry hand.example.com --name hand-pull -n shop --apply",
        id="secret-without-source-missing",
    ),
    pytest.param(
        _secret("shop-pull", {"type": "Opaque", "data": {}, "metadata": {}}),
        "secret-type",
        "fail",
        "recreate it",
        id="wrong-type",
    ),
    pytest.param(
        _all(
            _image("hand.example.com/app:1", ["hand-pull"]),
            _secret("hand-pull", config({"hand.example.com:5000": entry()})),
        ),
        "auths",
        "fail",
        "the Secret lacks an auths entry for hand.example.com",
        id="unmanaged-without-matching-entry",
    ),
    pytest.param(
        _all(
            _image("docker.io/team/app:1", ["hand-pull"]),
            _secret("hand-pull", config({"registry-1.docker.io": entry()})),
        ),
        "auths",
        "fail",
        "",
        id="docker-hub-alias-the-kubelet-ignores",
    ),
    pytest.param(
        _all(
            _image("hand.example.com/app:1", ["hand-pull"]),
            _secret("hand-pull", config({"hand.example.com": {"email": "x@y"}})),
        ),
        "auths",
        "fail",
        "put a username and password",
        id="matching-entry-without-credential",
    ),
    pytest.param(
        _all(
            _image("hand.example.com/app:1", ["hand-pull"]),
            _secret("hand-pull", config({"hand.example.com": {"username": "u", "password": jwt(1_700_000_000)}})),
        ),
        "expiry",
        "fail",
        "refresh",
        id="expired-token",
    ),
    pytest.param(
        _all(
            _image("hand.example.com/app:1", ["hand-pull"]),
            _secret("hand-pull", config({"hand.example.com": {"username": "u", "password": jwt(1_900_000_000)}})),
        ),
        "expiry",
        "info",
        "",
        id="token-expiry-shown",
    ),
    pytest.param(_attr("sources", {("sys", "shop-src"): ROTATED_SOURCE}), "current", "fail", "resync", id="stale-copy"),
    pytest.param(_secret("shop-pull", EDITED), "current", "fail", "resync", id="copy-edited-by-hand"),
    pytest.param(
        _attr("sources", {("sys", "shop-src"): Unreadable("forbidden")}), "current", "warn", "", id="source-unreadable"
    ),
    pytest.param(_attr("policy", None), "policy", "warn", "--policy FILE", id="no-policy"),
    pytest.param(_secret("shop-pull", Unreadable("forbidden")), "secret", "warn", "", id="secret-unreadable"),
]


@pytest.mark.parametrize(("change", "check", "verdict", "fix"), CASES)
def test_each_diagnosis(change: Callable[[Snapshot], None], check: str, verdict: str, fix: str) -> None:
    snap = healthy()
    snap.pod = copy.deepcopy(snap.pod)
    change(snap)
    findings = diagnose(snap)
    text = render_text(snap, findings)
    matching = [f for f in find(findings, check) if f.verdict == verdict]
    assert matching, text
    if fix:
        assert any(fix in (f.fix or "") for f in matching), text
    assert exit_code(findings) == (1 if any(f.verdict == "fail" for f in findings) else 0)
    assert SECRET_VALUE not in text
    assert SECRET_VALUE not in json.dumps(render_json(snap, findings))


def test_a_workload_template_is_not_expected_to_list_the_secret() -> None:
    snap = healthy()
    snap.kind = "Deployment"
    snap.pod["spec"]["imagePullSecrets"] = []
    findings = diagnose(snap)
    assert [f.verdict for f in find(findings, "listed")] == ["info"]
    assert exit_code(findings) == 0


def test_a_secret_from_the_service_account_is_said_so() -> None:
    snap = healthy()
    snap.service_account = {"imagePullSecrets": [{"name": "shop-pull"}]}
    (listed,) = find(diagnose(snap), "listed")
    assert listed.message == "the Pod lists imagePullSecret shop-pull (from ServiceAccount default)"


SELECTOR_CASES = [
    pytest.param({"matchLabels": {"a": "1"}}, {}, "label ns a=1: kubectl label ns a=1", id="match-labels"),
    pytest.param(
        {"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", "y"]}]}, {}, "label ns a=x", id="in"
    ),
    pytest.param(
        {"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, "unlabel ns a-", id="not-exist"
    ),
    pytest.param({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, "label ns a=true", id="exists"),
]


@pytest.mark.parametrize(("selector", "labels", "expected"), SELECTOR_CASES)
def test_selector_fix(selector: dict[str, Any], labels: dict[str, str], expected: str) -> None:
    assert selector_fix(LabelSelector.model_validate(selector), labels, "ns", "kubectl label ns").startswith(expected)


def test_an_entry_for_the_registry_the_kubelet_does_not_match_is_pointed_out() -> None:
    snap = healthy()
    _all(
        _image("docker.io/team/app:1", ["hand-pull"]), _secret("hand-pull", config({"registry-1.docker.io": entry()}))
    )(snap)
    (auths,) = find(diagnose(snap), "auths")
    assert "'registry-1.docker.io' names the registry but the kubelet does not match it" in auths.message
