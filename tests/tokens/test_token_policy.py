"""The ``token`` source in the policy, ``alsoFor`` on every source kind, and ``check`` explaining them."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from tests.builders import copy_of
from webhook.cli import main
from webhook.policy.model import PolicyError, Source, TokenSource, parse_policy
from webhook.secrets.desired import source_reference
from webhook.tokens import extras
from webhook.tokens.base import Token
from webhook.tokens.minter import EXPIRES_AT_ANNOTATION, MINTED_AT_ANNOTATION, token_object

RULE: dict[str, Any] = {"name": "r", "registries": ["registry.example.com"], "secret": "pull"}
GCP = {"provider": "gcp", "registry": "europe-docker.pkg.dev"}


def policy_with(source: dict[str, Any]) -> str:
    return json.dumps({"rules": [{**RULE, "source": source}]})


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(GCP, id="gcp-adc"),
        pytest.param(
            {**GCP, "gcp": {"credentialsFrom": {"namespace": "psi", "name": "gcp-cred", "key": "credentials.json"}}},
            id="gcp-credentials-from",
        ),
        pytest.param({"provider": "ecr"}, id="ecr-registry-from-proxy-endpoint"),
        pytest.param(
            {"provider": "ecr", "ecr": {"region": "us-east-1", "roleArn": "arn:aws:iam::123456789012:role/puller"}},
            id="ecr-role",
        ),
        pytest.param(
            {"provider": "acr", "registry": "example.azurecr.io", "acr": {"tenantId": "t", "clientId": "c"}}, id="acr"
        ),
        pytest.param(
            {
                "provider": "exec",
                "registry": "registry.example.com",
                "exec": {"command": ["/plugins/p"], "env": {"A": "b"}, "defaultCacheDuration": "1h"},
            },
            id="exec",
        ),
        pytest.param({**GCP, "alsoFor": ["auth.example.com"]}, id="also-for"),
    ],
)
def test_valid_token_sources(token: dict[str, Any]) -> None:
    policy = parse_policy(policy_with({"token": token}))
    source = policy.rules[0].source
    assert source is not None
    assert source.token is not None
    hash(source)  # sources key memo tables: an exec env (a dict) must not break that


@pytest.mark.parametrize(
    ("token", "message"),
    [
        pytest.param({"provider": "gcp"}, "needs 'registry'", id="gcp-without-registry"),
        pytest.param({"provider": "vault", "registry": "r.example.com"}, "provider", id="unknown-provider"),
        pytest.param({**GCP, "ecr": {"region": "x"}}, "'ecr' options given for provider 'gcp'", id="wrong-options"),
        pytest.param({"provider": "exec", "registry": "r.example.com"}, "needs 'exec.command'", id="exec-no-command"),
        pytest.param(
            {"provider": "exec", "registry": "r.example.com", "exec": {"command": ["x"], "defaultCacheDuration": "1d"}},
            "unknown unit",
            id="bad-duration",
        ),
        pytest.param({**GCP, "registry": "not a host/x"}, "invalid registry host", id="bad-registry"),
        pytest.param({**GCP, "alsoFor": ["bad host"]}, "invalid registry host", id="bad-also-for"),
        pytest.param({**GCP, "lifetime": "1h"}, "unknown field", id="unknown-key"),
    ],
)
def test_invalid_token_sources(token: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(policy_with({"token": token}))


def test_two_source_kinds_at_once_are_rejected() -> None:
    with pytest.raises(PolicyError, match="exactly one of"):
        parse_policy(policy_with({"token": GCP, "secret": {"namespace": "a", "name": "b"}}))


def test_a_provider_whose_extra_is_missing_is_rejected_with_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # the table of which module each provider needs is ours: point gcp at a module that does not exist
    missing = MappingProxyType({**extras.EXTRAS, "gcp": ("no_such_sdk_module_for_tests", "gcp")})
    monkeypatch.setattr(extras, "EXTRAS", missing)
    with pytest.raises(PolicyError, match=r"pip install 'pullsecret-injector\[gcp\]'"):
        parse_policy(policy_with({"token": GCP}))


def _auths(config: bytes) -> dict[str, Any]:
    auths: dict[str, Any] = json.loads(config)["auths"]
    return auths


SOURCE_SECRET = {
    "type": "kubernetes.io/dockerconfigjson",
    "data": {
        ".dockerconfigjson": base64.b64encode(
            json.dumps(
                {
                    "auths": {
                        "registry.example.com": {"username": "u", "password": "p1"},
                        "auth.example.com": {"username": "u", "password": "p1"},
                        "other.example.com": {"username": "x", "password": "p2"},
                    }
                }
            ).encode()
        ).decode()
    },
}
PASSWORD_SECRET = {"type": "Opaque", "data": {"password": base64.b64encode(b"p1").decode()}}


@pytest.mark.parametrize(
    ("source", "source_secret"),
    [
        pytest.param(
            {
                "credentials": {
                    "registry": "registry.example.com",
                    "username": "u",
                    "passwordFrom": {"namespace": "psi", "name": "pw", "key": "password"},
                    "alsoFor": ["auth.example.com"],
                }
            },
            PASSWORD_SECRET,
            id="credentials",
        ),
        pytest.param(
            {"secret": {"namespace": "psi", "name": "src", "alsoFor": ["auth.example.com"]}},
            SOURCE_SECRET,
            id="copied-source",
        ),
        pytest.param(
            {
                "token": {
                    "provider": "exec",
                    "registry": "registry.example.com",
                    "alsoFor": ["auth.example.com"],
                    "exec": {"command": ["x"]},
                }
            },
            None,
            id="token",
        ),
    ],
)
def test_also_for_puts_the_credential_under_the_registry_and_the_auth_host_only(
    source: dict[str, Any], source_secret: dict[str, Any] | None
) -> None:
    parsed = Source.model_validate(source)
    if parsed.token is not None:
        token = Token(username="u", password="p1", minted_at=1000.0, expires_at=2000.0)
        source_secret = token_object(parsed.token, token)
    copy = copy_of(source_secret, source=parsed, registries=["registry.example.com"])
    auths = _auths(copy.config)
    assert sorted(auths) == ["auth.example.com", "registry.example.com"], "the registry and the auth host, no more"
    for entry in auths.values():
        assert (entry["username"], entry["password"]) == ("u", "p1")
    if parsed.token is not None:
        assert copy.annotations[MINTED_AT_ANNOTATION] == "1970-01-01T00:16:40Z"
        assert copy.annotations[EXPIRES_AT_ANNOTATION] == "1970-01-01T00:33:20Z"
        assert source_reference(parsed) == "token:exec/registry.example.com"


def test_check_and_validate_explain_a_token_rule_offline(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        policy_with(
            {
                "token": {
                    **GCP,
                    "alsoFor": ["auth.example.com"],
                    "gcp": {"credentialsFrom": {"namespace": "psi", "name": "gcp-cred", "key": "credentials.json"}},
                }
            }
        ).replace("registry.example.com", "europe-docker.pkg.dev")
    )
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: team}\n"
        "spec: {containers: [{name: app, image: europe-docker.pkg.dev/p/r/app:1}]}\n"
    )
    out = io.StringIO()
    assert main(["check", "--policy", str(policy), str(pod)], out=out) == 0
    text = out.getvalue()
    assert "source:     token from gcp for europe-docker.pkg.dev, minted at runtime" in text
    assert "Secret psi/gcp-cred key credentials.json" in text
    assert "also for auth.example.com" in text
    out = io.StringIO()
    assert main(["validate", str(policy)], out=out) == 0
    assert "rule r: token from gcp for europe-docker.pkg.dev, minted at runtime" in out.getvalue()


def test_token_source_hashes_by_content() -> None:
    one = TokenSource.model_validate(
        {"provider": "exec", "registry": "r.example.com", "exec": {"command": ["x"], "env": {"A": "1"}}}
    )
    two = TokenSource.model_validate(
        {"provider": "exec", "registry": "r.example.com", "exec": {"command": ["x"], "env": {"A": "1"}}}
    )
    assert hash(one) == hash(two)
    assert one == two
