"""SecretSync, the core the ensurer and the reconciler share: a copy from every source format.

Against kmock's emulator on loopback (``tests/kube_fixtures.py``): the real client, nothing patched.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.builders import injected, review, warnings
from tests.conftest import RuntimeFactory
from tests.kube_fixtures import Apiserver, Cluster, decoded
from tests.scenario import POLICY, QUAY, SHARED_CONFIG, handler_for
from webhook.observability.stats import Stats
from webhook.policy.matching import load_policy
from webhook.secrets.dockerconfig import (
    SOURCE_ANNOTATION,
)


@pytest.mark.parametrize(
    ("secret_type", "data"),
    [
        pytest.param(
            "kubernetes.io/dockercfg",
            {".dockercfg": json.dumps({"quay.io": {"auth": QUAY, "email": "ops@example.com"}})},
            id="legacy-dockercfg",
        ),
        pytest.param(
            "Opaque",
            {"auth.json": json.dumps({"auths": {"quay.io": {"auth": QUAY, "email": "ops@example.com"}}}, indent=2)},
            id="podman-auth-json",
        ),
        pytest.param(
            "Opaque",
            {
                "config.json": json.dumps(
                    {"auths": {"quay.io": {"auth": QUAY, "email": "ops@example.com"}}, "credsStore": "x"}
                )
            },
            id="docker-config-json",
        ),
    ],
)
async def test_every_source_format_becomes_a_dockerconfigjson_copy(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory, secret_type: str, data: dict[str, str]
) -> None:
    await cluster.namespace("ops")
    await cluster.secret("ops", "shared", data, type=secret_type)
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False)

    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))

    assert warnings(response) == []
    copy = apiserver.secret("team-a", "quay-pull")
    assert copy is not None
    assert copy["type"] == "kubernetes.io/dockerconfigjson"
    assert list(copy["data"]) == [".dockerconfigjson"]
    assert decoded(copy) == b'{"auths":{"quay.io":{"email":"ops@example.com","auth":"' + QUAY.encode() + b'"}}}'


GAR_POLICY = load_policy("""
rules:
  - name: artifact-registry
    registries: ["*-docker.pkg.dev"]
    secret: gar-pull
    source:
      credentials:
        registry: europe-docker.pkg.dev
        username: _json_key
        email: ci@example.com
        passwordFrom: {namespace: ops, name: gar-key, key: key.json}
""")


async def test_the_credentials_source_is_byte_compatible_with_kubectl(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    key_file = '{\n  "type": "service_account",\n  "client_email": "ci@p.iam.gserviceaccount.com"\n}\n'
    await cluster.namespace("ops")
    await cluster.secret("ops", "gar-key", {"key.json": key_file}, type="Opaque")
    await cluster.namespace("team-a")
    runtime = await make_runtime(GAR_POLICY, elect=False)

    response = await handler_for(runtime, GAR_POLICY).handle(review("team-a", "europe-docker.pkg.dev/p/app:1"))

    assert injected(response) == ["gar-pull"]
    copy = apiserver.secret("team-a", "gar-pull")
    assert copy is not None
    # kubectl create secret docker-registry gar-pull --docker-server=europe-docker.pkg.dev
    #   --docker-username=_json_key --docker-email=ci@example.com --docker-password="$(cat key.json)"
    # (with the file's trailing newline kept), written out by hand:
    assert decoded(copy) == (
        b'{"auths":{"europe-docker.pkg.dev":{"username":"_json_key",'
        b'"password":"{\\n  \\"type\\": \\"service_account\\",\\n  \\"client_email\\": '
        b'\\"ci@p.iam.gserviceaccount.com\\"\\n}\\n",'
        b'"email":"ci@example.com",'
        b'"auth":"' + base64.b64encode(b"_json_key:" + key_file.encode()) + b'"}}}'
    )
    assert copy["metadata"]["annotations"][SOURCE_ANNOTATION] == "credentials:ops/gar-key/key.json"


class _Secrets:
    """A SecretCache stand-in that knows everything: objects by (namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}

    def lookup(self, namespace: str, name: str) -> tuple[bool, dict[str, Any] | None]:
        return True, self.objects.get((namespace, name))


def test_the_current_verdict_is_remembered_per_copy_version_and_source_object() -> None:
    from typing import cast

    from webhook.secrets.grants import GrantIndex

    grant_for = GrantIndex().grant_for
    from webhook.secrets.sync import SecretSync

    secrets = _Secrets()
    sync = SecretSync(
        api=cast(Any, None),
        runner=cast(Any, None),
        secrets=cast(Any, secrets),
        namespaces=cast(Any, None),
        stats=Stats(),
    )
    source = {"metadata": {"namespace": "ops", "name": "shared"}, "type": "kubernetes.io/dockerconfigjson"}
    source["data"] = {".dockerconfigjson": base64.b64encode(json.dumps(SHARED_CONFIG).encode()).decode()}
    secrets.objects[("ops", "shared")] = source
    grant = grant_for(POLICY, "team-a", "quay-pull", {})
    assert grant is not None
    assert grant_for(POLICY, "team-b", "quay-pull", {}) is grant  # one Grant per distinct admission answer

    def copy(version: str, **changes: Any) -> dict[str, Any]:
        manifest = sync._base_copy("quay-pull", grant, secrets.objects[("ops", "shared")]).manifest()
        manifest["metadata"].update(namespace="team-a", uid="u-1", resourceVersion=version)
        manifest.update(changes)
        return manifest

    assert sync.current_in_cache("team-a", "quay-pull", grant) is False  # no copy yet
    secrets.objects[("team-a", "quay-pull")] = copy("1")
    assert sync.current_in_cache("team-a", "quay-pull", grant) is True
    assert sync.current_in_cache("team-a", "quay-pull", grant) is True  # remembered
    # Edited by hand: a new resourceVersion, and not current any more.
    secrets.objects[("team-a", "quay-pull")] = copy("2", data={".dockerconfigjson": "e30="})
    assert sync.current_in_cache("team-a", "quay-pull", grant) is False
    # Taken over by someone else (our label gone).
    unmanaged = copy("3")
    unmanaged["metadata"]["labels"] = {}
    secrets.objects[("team-a", "quay-pull")] = unmanaged
    assert sync.current_in_cache("team-a", "quay-pull", grant) is False
    secrets.objects[("team-a", "quay-pull")] = copy("4")
    assert sync.current_in_cache("team-a", "quay-pull", grant) is True
    # The source rotates: a new source object, so the same copy version is no longer current.
    other = {"auths": {"quay.io": {"auth": base64.b64encode(b"quay-user:rotated").decode()}}}
    secrets.objects[("ops", "shared")] = {
        **source,
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(other).encode()).decode()},
    }
    assert sync.current_in_cache("team-a", "quay-pull", grant) is False
    secrets.objects[("team-a", "quay-pull")] = copy("5")
    assert sync.current_in_cache("team-a", "quay-pull", grant) is True
    # A source that no longer parses is "not current" here (the full path reports it).
    secrets.objects[("ops", "shared")] = {**source, "data": {".dockerconfigjson": "bm90IGpzb24="}}
    assert sync.current_in_cache("team-a", "quay-pull", grant) is False
