"""Docker credential formats, kubectl-compatible rendering and least-privilege filtering (pure, no cluster)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.builders import api_secret, b64, copy_of
from tests.scenario import DOCKER_CONFIG, GAR_JSON_KEY
from webhook.observability.logs import REDACTED, redact
from webhook.secrets.dockerconfig import (
    DOCKERCONFIGJSON_TYPE,
    AuthEntry,
    MalformedSource,
    content_hash,
    credentials_auths,
    dockerconfigjson_secret,
    encode_config,
    filter_auths,
    go_json_string,
    parse_source_secret,
)

CANARY = "canary-Pa55w0rd-dockercfg-7f3a"


# --------------------------------------------------------------------------- kubectl compatibility


@pytest.mark.parametrize(
    ("registry", "username", "password", "email", "expected"),
    [
        pytest.param(
            "registry.example.com:5000",
            "robot",
            "s3cr3t",
            None,
            b'{"auths":{"registry.example.com:5000":{"username":"robot","password":"s3cr3t","auth":"cm9ib3Q6czNjcjN0"}}}',
            id="plain",
        ),
        pytest.param(
            "https://index.docker.io/v1/",
            "robot",
            "p4ss",
            "robot@example.com",
            b'{"auths":{"https://index.docker.io/v1/":{"username":"robot","password":"p4ss",'
            b'"email":"robot@example.com","auth":"cm9ib3Q6cDRzcw=="}}}',
            id="kubectl-default-server-with-email",
        ),
        pytest.param(
            "europe-docker.pkg.dev",
            "_json_key",
            GAR_JSON_KEY,
            None,
            b'{"auths":{"europe-docker.pkg.dev":{"username":"_json_key","password":"{\\n  \\"type\\": '
            b'\\"service_account\\",\\n  \\"private_key\\": \\"-----BEGIN PRIVATE KEY-----\\\\nMIIE\\\\n-----END '
            b'PRIVATE KEY-----\\\\n\\"\\n}","auth":"X2pzb25fa2V5OnsKICAidHlwZSI6ICJzZXJ2aWNlX2FjY291bnQiLAogICJwcml2'
            b'YXRlX2tleSI6ICItLS0tLUJFR0lOIFBSSVZBVEUgS0VZLS0tLS1cbk1JSUVcbi0tLS0tRU5EIFBSSVZBVEUgS0VZLS0tLS1cbiIKfQ=="}}}',
            id="gar-json-key",
        ),
        pytest.param(
            "quay.io",
            "u",
            "a<b>&c",
            None,
            b'{"auths":{"quay.io":{"username":"u","password":"a\\u003cb\\u003e\\u0026c","auth":"dTphPGI+JmM="}}}',
            id="go-html-escaping",
        ),
        pytest.param(
            "quay.io",
            "u",
            "tab\there\x01\u00e9\u2028",
            None,
            '{"auths":{"quay.io":{"username":"u","password":"tab\\there\\u0001\u00e9\\u2028",'
            '"auth":"dTp0YWIJaGVyZQHDqeKAqA=="}}}'.encode(),
            id="control-and-non-ascii",
        ),
    ],
)
def test_credentials_are_byte_compatible_with_kubectl(
    registry: str, username: str, password: str, email: str | None, expected: bytes
) -> None:
    """What `kubectl create secret docker-registry` stores, written out by hand."""
    auths = credentials_auths(registry=registry, username=username, password=password, email=email)
    assert encode_config(auths) == expected


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_go_strings_round_trip_and_never_carry_html_or_controls(text: str) -> None:
    encoded = go_json_string(text)
    assert json.loads(encoded) == text
    assert not any(ch in encoded for ch in "<>&\u2028\u2029")
    assert all(ord(ch) >= 0x20 for ch in encoded)


def test_lone_surrogates_become_replacement_characters_as_in_go() -> None:
    assert go_json_string("a\ud800b") == '"a\\ufffdb"'


def test_servers_are_sorted_like_go_map_keys() -> None:
    auths = {"z.example.com": AuthEntry(auth="eg=="), "a.example.com": AuthEntry(auth="eg==")}
    assert encode_config(auths) == b'{"auths":{"a.example.com":{"auth":"eg=="},"z.example.com":{"auth":"eg=="}}}'


# --------------------------------------------------------------------------- source formats

EXPECTED = {"quay.io": AuthEntry(username="quay-user", password="quay-pass", auth=b64("quay-user:quay-pass"))}


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(
            api_secret(DOCKERCONFIGJSON_TYPE, {".dockerconfigjson": json.dumps(DOCKER_CONFIG)}), id="dockerconfigjson"
        ),
        pytest.param(
            api_secret("kubernetes.io/dockercfg", {".dockercfg": json.dumps(DOCKER_CONFIG["auths"])}),
            id="legacy-dockercfg",
        ),
        pytest.param(api_secret("Opaque", {"config.json": json.dumps(DOCKER_CONFIG)}), id="opaque-docker-config-json"),
        pytest.param(
            api_secret("Opaque", {"auth.json": json.dumps(DOCKER_CONFIG, indent=2)}), id="opaque-podman-auth-json"
        ),
        pytest.param(api_secret(None, {".dockerconfigjson": json.dumps(DOCKER_CONFIG)}), id="opaque-without-type"),
        pytest.param(
            api_secret("Opaque", {".dockercfg": json.dumps(DOCKER_CONFIG["auths"])}), id="opaque-legacy-dockercfg"
        ),
        pytest.param(
            api_secret(
                "Opaque", {"config.json": json.dumps({**DOCKER_CONFIG, "credsStore": "desktop", "HttpHeaders": {}})}
            ),
            id="docker-config-with-extras",
        ),
    ],
)
def test_every_source_format_yields_the_same_auths(source: dict[str, Any]) -> None:
    assert parse_source_secret(source, what="source Secret ops/src") == EXPECTED


def test_a_built_secret_reads_back_as_the_same_auths() -> None:
    auths = credentials_auths(registry="quay.io", username="bot", password="pw")
    config = encode_config(auths)
    secret = dockerconfigjson_secret({"name": "quay-pull", "namespace": "team-a"}, config)
    assert secret["metadata"] == {"name": "quay-pull", "namespace": "team-a"}
    assert secret["type"] == DOCKERCONFIGJSON_TYPE
    assert base64.b64decode(secret["data"][".dockerconfigjson"]) == config
    assert parse_source_secret(secret, what="built") == auths


def test_legacy_dockercfg_converts_to_dockerconfigjson() -> None:
    legacy = api_secret(
        "kubernetes.io/dockercfg",
        {
            ".dockercfg": json.dumps(
                {"https://index.docker.io/v1/": {"auth": b64("hub-user:hub-pass"), "email": "e@x.io"}}
            )
        },
    )
    copy = copy_of(legacy, source="ops/src", registries=["docker.io"])
    assert (
        copy.config == b'{"auths":{"https://index.docker.io/v1/":{"email":"e@x.io","auth":"aHViLXVzZXI6aHViLXBhc3M="}}}'
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param(
            {"type": DOCKERCONFIGJSON_TYPE, "data": {".dockerconfigjson": "%%%"}}, "not base64", id="bad-base64"
        ),
        pytest.param(
            api_secret(DOCKERCONFIGJSON_TYPE, {".dockerconfigjson": '{"auths": '}), "not valid JSON", id="bad-json"
        ),
        pytest.param(api_secret(DOCKERCONFIGJSON_TYPE, {".dockerconfigjson": "[]"}), "JSON object", id="not-an-object"),
        pytest.param(api_secret(DOCKERCONFIGJSON_TYPE, {}), "'.dockerconfigjson' is missing", id="missing-key"),
        pytest.param(
            api_secret(DOCKERCONFIGJSON_TYPE, {".dockerconfigjson": '{"auths": []}'}),
            "must be a JSON object",
            id="auths-list",
        ),
        pytest.param(
            api_secret(DOCKERCONFIGJSON_TYPE, {".dockerconfigjson": json.dumps({"auths": {"q.io": "x"}})}),
            "'q.io' is not an object",
            id="entry-not-object",
        ),
        pytest.param(
            api_secret(DOCKERCONFIGJSON_TYPE, {".dockerconfigjson": json.dumps({"auths": {"q.io": {"password": 7}}})}),
            "password must be strings",
            id="field-not-string",
        ),
        pytest.param(
            api_secret("Opaque", {"config.json": json.dumps({"credsStore": "osxkeychain"})}),
            "credential helpers",
            id="creds-store-only",
        ),
        pytest.param(api_secret("Opaque", {"password": "x"}), "has none of the keys", id="opaque-without-config"),
    ],
)
def test_malformed_sources_are_reported_without_their_content(source: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedSource) as info:
        parse_source_secret(source, what="source Secret ops/src")
    assert message in str(info.value)
    assert str(info.value).startswith("source Secret ops/src")


def test_a_malformed_source_never_shows_its_password() -> None:
    text = json.dumps({"auths": {"q.io": {"password": CANARY, "auth": 12}}})
    with pytest.raises(MalformedSource) as info:
        parse_source_secret(
            api_secret(DOCKERCONFIGJSON_TYPE, {".dockerconfigjson": text}), what="source Secret ops/src"
        )
    assert CANARY not in str(info.value)
    # ... and the redactor knows the value anyway, should any other path print it.
    assert redact(f"leak {CANARY}") == f"leak {REDACTED}"


def test_decoded_credentials_are_registered_with_the_redactor() -> None:
    password = "registered-" + CANARY
    auths = parse_source_secret(
        api_secret("Opaque", {"auth.json": json.dumps({"auths": {"q.io": {"auth": b64("user:" + password)}}})}),
        what="source",
    )
    assert password not in repr(auths)
    assert redact(f"a {password} b") == f"a {REDACTED} b"


# --------------------------------------------------------------------------- least privilege

SHARED = {
    "https://index.docker.io/v1/": AuthEntry(auth=b64("hub-user:hub-pass")),
    "quay.io": AuthEntry(auth=b64("quay-user:quay-pass")),
    "quay.io.evil.com": AuthEntry(auth="ZXZpbDpldmls"),
    "ghcr.io/my-org": AuthEntry(auth="Z2g6Z2g="),
    "registry.example.com:5000": AuthEntry(auth="cjpy"),
    "europe-docker.pkg.dev": AuthEntry(auth="ZzpnCg=="),
    "not a registry": AuthEntry(auth="eDp4"),
}


@pytest.mark.parametrize(
    ("registries", "kept"),
    [
        pytest.param(["quay.io"], ["quay.io"], id="quay-only-no-lookalike"),
        pytest.param(["docker.io"], ["https://index.docker.io/v1/"], id="docker-hub-alias-url"),
        pytest.param(["ghcr.io"], ["ghcr.io/my-org"], id="path-scoped-key"),
        pytest.param(["registry.example.com"], [], id="port-must-match"),
        pytest.param(["registry.example.com:5000"], ["registry.example.com:5000"], id="with-port"),
        pytest.param(["*-docker.pkg.dev"], ["europe-docker.pkg.dev"], id="wildcard"),
        pytest.param(["quay.io", "docker.io"], ["https://index.docker.io/v1/", "quay.io"], id="union"),
        pytest.param(
            ["*"],
            [k for k in SHARED if k != "not a registry"],
            id="catch-all-still-drops-garbage",
        ),
    ],
)
def test_filter_keeps_only_the_rules_registries(registries: list[str], kept: list[str]) -> None:
    assert sorted(filter_auths(SHARED, registries)) == sorted(kept)


def test_copy_for_quay_does_not_carry_the_docker_hub_password() -> None:
    config = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": b64("hub-user:hub-pass")},
            "quay.io": {"auth": b64("quay-user:quay-pass")},
        }
    }
    source = api_secret(DOCKERCONFIGJSON_TYPE, {".dockerconfigjson": json.dumps(config)})
    copy = copy_of(source, source="ops/shared", registries=["quay.io"])
    assert json.loads(copy.config) == {"auths": {"quay.io": {"auth": b64("quay-user:quay-pass")}}}
    assert b"hub" not in base64.b64decode(copy.encoded)


# --------------------------------------------------------------------------- the copy's hash and repr


def test_content_hash_is_stable_and_content_sensitive() -> None:
    assert (
        content_hash(b"a")
        == content_hash(b"a")
        == "sha256:" + "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    )
    assert content_hash(b"a") != content_hash(b"b")


def test_auth_entry_repr_hides_secret_fields() -> None:
    entry = AuthEntry(username="u", password=CANARY, auth=b64("u:" + CANARY), identitytoken=CANARY)
    assert CANARY not in repr(entry)
    assert b64("u:" + CANARY) not in repr(entry)
