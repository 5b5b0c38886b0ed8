"""The chart's choices for who owns the policy and what the webhook may touch (issue 11).

Rendered by real Helm (helm_sdkpy) into the in-memory API of ``tests/test_chart.py``, which
also answers Helm's ``lookup``: a ledger ConfigMap placed there is what a live cluster holds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.test_chart import FULLNAME, NAMESPACE, FakeApiServer, helm_install, render, secret_rules

LEDGER_PATH = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{FULLNAME}-ledger"
RULE: dict[str, Any] = {
    "name": "gar",
    "registries": ["europe-docker.pkg.dev"],
    "secret": "gar-pull",
    "source": {"secret": {"namespace": NAMESPACE, "name": "gar-credentials"}},
}


def _named(rendered: Any) -> set[str]:
    role = rendered.one("ClusterRole")
    return {name for rule in secret_rules(role) for name in rule.get("resourceNames", [])}


def _flag(args: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(name + "=")), None)


def test_existing_configmap_is_watched_and_never_rendered() -> None:
    r = render({"policy": {"existingConfigMap": "platform-policy", "rules": []}})
    assert not r.all("ConfigMap"), "the chart must not render (or later revert) a ConfigMap the user owns"
    assert _flag(r.args, "--policy-configmap") == "platform-policy"
    role = r.one("Role", FULLNAME)
    policy_rule = next(rule for rule in role["rules"] if "platform-policy" in (rule.get("resourceNames") or []))
    assert policy_rule["verbs"] == ["get", "list", "watch", "patch"]


def test_the_rendered_policy_carries_no_chart_only_key() -> None:
    r = render({"policy": {"rules": [RULE]}})
    (configmap,) = r.all("ConfigMap")
    assert "existingConfigMap" not in configmap["data"]["policy.yaml"]


@pytest.mark.parametrize(
    ("ledger_names", "extra", "expected"),
    [
        pytest.param(None, [], {"gar-pull"}, id="no-ledger-yet"),
        pytest.param(["gone-pull"], [], {"gar-pull", "gone-pull"}, id="ledger-keeps-a-removed-rule"),
        pytest.param(["gar-pull"], ["kept-pull"], {"gar-pull", "kept-pull"}, id="ledger-and-extra"),
        pytest.param(["Not A Name", "ok-pull"], [], {"gar-pull", "ok-pull"}, id="ledger-garbage-ignored"),
    ],
)
def test_rbac_keeps_names_pending_cleanup(ledger_names: list[str] | None, extra: list[str], expected: set[str]) -> None:
    """``lookup`` of the webhook's ledger: copies of a removed rule stay deletable across helm upgrade."""
    values = {"policy": {"rules": [RULE]}, "rbac": {"extraSecretNames": extra}}
    with FakeApiServer() as api:
        if ledger_names is not None:
            api.objects[LEDGER_PATH] = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"{FULLNAME}-ledger", "namespace": NAMESPACE},
                "data": {"names": json.dumps(ledger_names)},
            }
        rendered = helm_install(api, values)
    assert _named(rendered) == expected


def test_ledger_rbac() -> None:
    role = render({"policy": {"rules": [RULE]}}).one("Role", FULLNAME)
    configmap_rules = [r for r in role["rules"] if r["resources"] == ["configmaps"]]
    assert {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]} in configmap_rules
    ledger = next(r for r in configmap_rules if r.get("resourceNames") == [f"{FULLNAME}-ledger"])
    assert ledger["verbs"] == ["get", "list", "watch", "patch"]
    assert _flag(render({}).args, "--ledger-configmap") == f"{FULLNAME}-ledger"


def test_cluster_wide_secret_access_is_an_explicit_opt_in() -> None:
    default = render({"policy": {"rules": [RULE]}})
    assert all(
        rule.get("resourceNames") or rule["verbs"] == ["create"] for rule in secret_rules(default.one("ClusterRole"))
    )
    wide = render({"policy": {"rules": [RULE]}, "rbac": {"secretAccess": "clusterWide"}})
    (rule,) = secret_rules(wide.one("ClusterRole"))
    assert "resourceNames" not in rule
    assert rule["verbs"] == ["create", "get", "list", "watch", "patch", "delete"]
    # without any rule at all, too: rules added by editing the ConfigMap work at once
    (rule,) = secret_rules(render({"rbac": {"secretAccess": "clusterWide"}}).one("ClusterRole"))
    assert "resourceNames" not in rule


def test_extra_source_secrets_get_a_role_in_their_namespace() -> None:
    r = render(
        {
            "policy": {"rules": [RULE]},
            "rbac": {
                "extraSourceSecrets": [{"namespace": "vault", "name": "robot"}, {"namespace": NAMESPACE, "name": "x"}]
            },
        }
    )
    roles = {
        (role["metadata"]["namespace"]): role for role in r.all("Role") if role["metadata"]["name"].endswith("-sources")
    }
    assert set(roles) == {NAMESPACE, "vault"}
    assert roles["vault"]["rules"][0]["resourceNames"] == ["robot"]
    assert roles[NAMESPACE]["rules"][0]["resourceNames"] == ["gar-credentials", "x"]


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"rbac": {"secretAccess": "everything"}}, id="unknown-secret-access"),
        pytest.param({"rbac": {"extraSourceSecrets": [{"namespace": "Bad NS", "name": "x"}]}}, id="bad-namespace"),
        pytest.param({"rbac": {"extraSourceSecrets": [{"namespace": "ok"}]}}, id="no-name"),
    ],
)
def test_bad_rbac_values_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(Exception, match=r"(?i)secretAccess|extraSourceSecrets|namespace|name"):
        render(values)
