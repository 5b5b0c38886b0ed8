"""The chart and token sources: RBAC for ``gcp.credentialsFrom``, the projected ServiceAccount token."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_chart import READ, render, source_roles

TOKEN_RULE: dict[str, Any] = {
    "name": "gar",
    "registries": ["europe-docker.pkg.dev"],
    "secret": "gar-pull",
    "source": {
        "token": {
            "provider": "gcp",
            "registry": "europe-docker.pkg.dev",
            "gcp": {"credentialsFrom": {"namespace": "identity", "name": "gcp-cred", "key": "credentials.json"}},
        }
    },
}


def test_credentials_from_is_readable_in_its_namespace_only() -> None:
    r = render({"policy": {"rules": [TOKEN_RULE]}})
    roles = source_roles(r)
    assert {ns: role["rules"][0]["resourceNames"] for ns, role in roles.items()} == {"identity": ["gcp-cred"]}
    assert roles["identity"]["rules"][0]["verbs"] == READ


def test_a_token_source_without_credentials_needs_no_source_role() -> None:
    rule = {**TOKEN_RULE, "source": {"token": {"provider": "gcp", "registry": "europe-docker.pkg.dev"}}}
    assert source_roles(render({"policy": {"rules": [rule]}})) == {}


def test_the_projected_service_account_token_is_mounted_with_its_audience() -> None:
    values = {
        "tokens": {
            "projectedServiceAccountToken": {
                "enabled": True,
                "audience": "sts.amazonaws.com",
                "expirationSeconds": 7200,
                "mountPath": "/var/run/secrets/aws",
                "path": "token",
            }
        },
        "server": {"extraEnv": [{"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/aws/token"}]},
    }
    r = render(values)
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    assert volumes["federation-token"]["projected"]["sources"] == [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 7200, "audience": "sts.amazonaws.com"}}
    ]
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    assert mounts["federation-token"] == {
        "name": "federation-token",
        "mountPath": "/var/run/secrets/aws",
        "readOnly": True,
    }
    assert {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/aws/token"} in r.container["env"]


def test_no_projected_token_by_default() -> None:
    r = render({})
    assert "federation-token" not in {v["name"] for v in r.pod_spec["volumes"]}


@pytest.mark.parametrize(
    "token",
    [
        pytest.param({"provider": "exec", "registry": "r.example.com", "exec": {"command": ["x"], "timeout": "1d"}}),
        pytest.param({"provider": "nope", "registry": "r.example.com"}),
    ],
    ids=["bad-duration", "unknown-provider"],
)
def test_the_schema_rejects_a_bad_token_source(token: dict[str, Any]) -> None:
    rule = {**TOKEN_RULE, "source": {"token": token}}
    with pytest.raises(Exception, match=r"(?i)schema|values"):
        render({"policy": {"rules": [rule]}})
