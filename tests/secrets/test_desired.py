"""The desired managed copy: built from a source, owned by us, compared with the cluster and patched (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.builders import api_secret, b64
from tests.scenario import DOCKER_CONFIG, GAR_JSON_KEY
from webhook.policy.model import Credentials, SecretKeyRef, SecretRef, Source
from webhook.secrets.desired import build_copy, is_current, is_managed, needs_recreate, update_patch
from webhook.secrets.dockerconfig import (
    DOCKERCONFIGJSON_TYPE,
    HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    RULE_ANNOTATION,
    SOURCE_ANNOTATION,
    MalformedSource,
    NoMatchingCredentials,
    SourceError,
    SourceNotFound,
    content_hash,
    credentials_auths,
    encode_config,
)

SOURCE = Source(secret=SecretRef(namespace="ops", name="src"))


def quay_copy(**overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "name": "quay-pull",
        "namespace": "team-a",
        "source": SOURCE,
        "rules": ["quay"],
        "registries": ["quay.io"],
        "source_secret": api_secret(
            DOCKERCONFIGJSON_TYPE,
            {".dockerconfigjson": json.dumps(DOCKER_CONFIG)},
            labels={"argocd.argoproj.io/instance": "ops", "team": "x"},
            annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        ),
    }
    arguments.update(overrides)
    return build_copy(**arguments)


def test_manifest_carries_our_ownership_and_none_of_the_source_metadata() -> None:
    copy = quay_copy()
    manifest = copy.manifest()
    assert manifest["type"] == DOCKERCONFIGJSON_TYPE
    assert manifest["metadata"]["labels"] == {MANAGED_BY_LABEL: "pullsecret-injector"}
    assert manifest["metadata"]["annotations"] == {
        RULE_ANNOTATION: "quay",
        SOURCE_ANNOTATION: "secret:ops/src",
        HASH_ANNOTATION: content_hash(copy.config),
    }
    assert manifest["metadata"]["namespace"] == "team-a"
    assert manifest["data"] == {".dockerconfigjson": b64(copy.config)}


def test_credentials_source_reference_and_content() -> None:
    source = Source(
        credentials=Credentials(
            registry="europe-docker.pkg.dev",
            username="_json_key",
            password_from=SecretKeyRef(namespace="ops", name="gar", key="key.json"),
        )
    )
    copy = build_copy(
        name="gar-pull",
        namespace="team-a",
        source=source,
        rules=["gar-b", "gar-a"],
        registries=["*-docker.pkg.dev"],
        source_secret=api_secret("Opaque", {"key.json": GAR_JSON_KEY}),
    )
    assert copy.annotations[SOURCE_ANNOTATION] == "credentials:ops/gar/key.json"
    assert copy.annotations[RULE_ANNOTATION] == "gar-a,gar-b"
    assert copy.config == encode_config(
        credentials_auths(registry="europe-docker.pkg.dev", username="_json_key", password=GAR_JSON_KEY)
    )


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        pytest.param({"source_secret": None}, SourceNotFound, "source Secret ops/src not found", id="missing-source"),
        pytest.param(
            {"registries": ["ghcr.io"]}, NoMatchingCredentials, "no credentials for ghcr.io", id="nothing-for-registry"
        ),
        pytest.param(
            {
                "source": Source(
                    credentials=Credentials(
                        registry="quay.io",
                        username="u",
                        password_from=SecretKeyRef(namespace="ops", name="p", key="pw"),
                    )
                ),
                "source_secret": api_secret("Opaque", {"other": "x"}),
            },
            MalformedSource,
            "no key 'pw'",
            id="password-key-missing",
        ),
    ],
)
def test_unusable_sources_raise_source_errors(
    overrides: dict[str, Any], error: type[SourceError], message: str
) -> None:
    with pytest.raises(error, match=message):
        quay_copy(**overrides)


def test_current_means_managed_same_type_data_and_annotations() -> None:
    copy = quay_copy()
    live = copy.manifest()
    assert is_managed(live)
    assert is_current(live, copy)
    edited = {**live, "data": {".dockerconfigjson": b64('{"auths":{}}')}}
    assert not is_current(edited, copy)
    extra_key = {**live, "data": {**live["data"], "extra": "eA=="}}
    assert not is_current(extra_key, copy)
    foreign = {**live, "metadata": {**live["metadata"], "labels": {}}}
    assert not is_managed(foreign)
    assert not is_current(foreign, copy)
    renamed_rule = {
        **live,
        "metadata": {**live["metadata"], "annotations": {**copy.annotations, RULE_ANNOTATION: "old"}},
    }
    assert not is_current(renamed_rule, copy)


def test_update_patch_restores_data_and_keeps_the_resource_version_precondition() -> None:
    copy = quay_copy()
    live = {
        "metadata": {
            "name": "quay-pull",
            "namespace": "team-a",
            "resourceVersion": "42",
            "labels": {MANAGED_BY_LABEL: "pullsecret-injector"},
        },
        "type": DOCKERCONFIGJSON_TYPE,
        "data": {".dockerconfigjson": "e30=", "stray": "eA=="},
    }
    assert update_patch(live, copy) == {
        "metadata": {
            "labels": {MANAGED_BY_LABEL: "pullsecret-injector"},
            "annotations": copy.annotations,
            "resourceVersion": "42",
        },
        "data": {"stray": None, ".dockerconfigjson": copy.encoded},
    }


def test_a_managed_secret_of_another_type_must_be_recreated() -> None:
    live = {"metadata": {"labels": {MANAGED_BY_LABEL: "pullsecret-injector"}}, "type": "Opaque"}
    assert needs_recreate(live)
    assert not needs_recreate({"metadata": {}, "type": "Opaque"})
