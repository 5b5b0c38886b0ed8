"""Short-lived tokens on the real node: a Pod pulls with the first token, a later Pod with the next.

The one acceptance point of issue 13 that needs a kubelet: a private registry on loopback
(CNCF Distribution, htpasswd + TLS, trusted by the session ``node``'s containerd) accepts
exactly one credential, user ``oauth2accesstoken`` with the token the loopback GCE metadata
server (:mod:`tests.tokens.google_servers`) issued last: the server rewrites the htpasswd
(``Registry.set_password``) with each token before it answers with it. The webhook
(a real ``serve`` process, as in ``test_tokens_e2e``) mints through google-auth's own
Application Default Credentials (``GCE_METADATA_HOST``/``GCE_METADATA_IP``); tokens live
60 s, so the webhook refreshes during the test.

1. Pod 1 in a new namespace: the copy holds the first token, the registry accepts it, the
   kubelet pulls with it and the Pod Succeeds;
2. the copy gets the next token (same uid), the registry accepts only that one (the first is
   refused); Pod 2, created after the refresh, pulls with it and Succeeds.

Every container has ``imagePullPolicy: Always``: each start authenticates at the registry.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.builders import pull_secrets, wait_for
from tests.registries import BusyboxImages, PushedImage, Registry
from tests.tokens.google_servers import GoogleServers

from .conftest import require_node
from .controlplane import ControlPlane
from .node import Node
from .test_node_e2e import (
    POD_TIMEOUT,
    _describe,
    finished,
    node_pod,
    pull_failure_messages,
    termination_messages,
    wait_pod,
)
from .test_webhook_e2e import Namespaces, _delete_namespace, dockerconfig_secret, read_secret
from .webhook import WebhookProcess

HOOK = "psi-e2e-tokens-node"
SYSTEM_NS = "psi-e2e-tokens-node-system"
USER = "oauth2accesstoken"
SECRET = "gcp-token-pull"
PROBE_IMAGE = "probe.example.com/team/app:1.0"
LIFETIME = 60
KEEP = os.environ.get("PSI_E2E_KEEP") == "1"


@pytest.fixture(scope="session", autouse=True)
def _node_prerequisites() -> None:
    require_node()


@pytest.fixture(scope="module")
def core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


@dataclass
class TokenIssuingServers(GoogleServers):
    """The loopback metadata server, and a registry whose ``oauth2accesstoken`` is its latest token.

    Each token is written to the registry's htpasswd (``set_password``: effective, the previous
    token refused, when it returns) before the metadata server answers with it: the webhook never
    holds a token the registry does not take yet.
    """

    registry: Registry | None = None
    _sync: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def issue(self) -> str:
        with self._sync:
            token = super().issue()
            if self.registry is not None:
                self.registry.set_password(USER, token)
            return token

    def accepts_only(self, token: str) -> bool:
        """The registry takes ``token`` and refuses every other token this server issued."""
        assert self.registry is not None
        if not self.registry.login_ok(USER, token):
            return False
        return not any(self.registry.login_ok(USER, old) for old in self.issued if old != token)


@pytest.fixture(scope="module")
def registry(node: Node) -> Iterator[Registry]:
    """Its own registry (one user, no token yet), trusted by the session node's containerd."""
    own = Registry(users={USER: "placeholder-before-any-token"}, name="registry-gcp", keep_workdir=KEEP)
    own.start()
    try:
        node.trust(own)
        yield own
    finally:
        own.stop()


@pytest.fixture(scope="module")
def google(registry: Registry) -> Iterator[TokenIssuingServers]:
    servers = TokenIssuingServers(lifetime=LIFETIME, prefix="ya29.e2e-node-", registry=registry)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def image(registry: Registry, node_images: BusyboxImages) -> PushedImage:
    built = node_images.image("gcp-app", entrypoint=["/bin/sh", "-c", "printf 'ran:gcp-app' > /dev/termination-log"])
    return registry.push(built, "team/gcp-app", "1.0")  # with the placeholder, before any token


def _policy(host: str) -> dict[str, Any]:
    return {
        "rules": [
            {
                "name": "gcp-token",
                "registries": [host],
                "secret": SECRET,
                "source": {"token": {"provider": "gcp", "registry": host}},
            },
            # a static source for the registration probe: no mint before the first Pod
            {
                "name": "probe",
                "registries": ["probe.example.com"],
                "secret": "probe-pull",
                "source": {"secret": {"namespace": SYSTEM_NS, "name": "probe-credentials"}},
            },
        ]
    }


@pytest.fixture(scope="module")
def token_hook(
    control_plane: ControlPlane,
    api_client: Any,
    core: Any,
    google: TokenIssuingServers,
    registry: Registry,
    image: PushedImage,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WebhookProcess]:
    from tests.builders import auth_entry, pod_body

    core.create_namespace({"metadata": {"name": SYSTEM_NS}})
    core.create_namespaced_secret(
        SYSTEM_NS, dockerconfig_secret("probe-credentials", {"probe.example.com": auth_entry("probe", "pw")})
    )
    env = {
        "GCE_METADATA_HOST": google.host,
        "GCE_METADATA_IP": google.host,
        "CLOUDSDK_CONFIG": str(tmp_path_factory.mktemp("gcloud")),
    }
    saved = {key: os.environ.get(key) for key in (*env, "GOOGLE_APPLICATION_CREDENTIALS")}
    hook = WebhookProcess(
        control_plane=control_plane,
        name=HOOK,
        namespace=SYSTEM_NS,
        policy=_policy(registry.host),
        extra_args=("--resync-seconds", "30"),
    )
    probes = Namespaces(control_plane, core)
    try:
        os.environ.update(env)  # the subprocess inherits them, as a container's env
        os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        probe_ns = probes.one("e2e-tokn-probe", hook=HOOK)
        hook.start()

        def probe() -> bool:
            pod = core.create_namespaced_pod(probe_ns, pod_body(PROBE_IMAGE, name="probe"), dry_run="All")
            return "probe-pull" in pull_secrets(pod)

        hook.register(api_client, probe=probe)
        yield hook
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        probes.close()
        hook.cleanup(keep=KEEP)
        _delete_namespace(core, SYSTEM_NS)


@pytest.fixture
def namespaces(control_plane: ControlPlane, core: Any) -> Iterator[Namespaces]:
    factory = Namespaces(control_plane, core)
    try:
        yield factory
    finally:
        factory.close()


def copy_token(secret: Any, host: str) -> str:
    config = json.loads(base64.b64decode(secret.data[".dockerconfigjson"]))
    assert list(config["auths"]) == [host], "the registry, and nothing else"
    entry = config["auths"][host]
    assert entry["username"] == USER
    assert base64.b64decode(entry["auth"]).decode() == f"{USER}:{entry['password']}"
    return str(entry["password"])


def test_a_pod_pulls_with_the_first_token_and_a_pod_after_the_refresh_with_the_next(
    token_hook: WebhookProcess,
    core: Any,
    node: Node,
    google: TokenIssuingServers,
    registry: Registry,
    image: PushedImage,
    namespaces: Namespaces,
) -> None:
    host = registry.host
    assert not google.issued, "no token before the first Pod"
    ns = namespaces.one("e2e-tokn", hook=HOOK)

    # Pod 1: the webhook mints the first token at admission.
    mark = registry.log_mark()
    t0 = time.monotonic()
    created = core.create_namespaced_pod(ns, node_pod(node, "first", image.reference))
    assert pull_secrets(created) == [SECRET]
    copy = read_secret(core, ns, SECRET)
    assert copy is not None, "the copy exists when the Pod is admitted"
    first = copy_token(copy, host)
    assert first == google.issued[-1], "the token the metadata server just issued"
    uid = copy.metadata.uid
    mint_seconds = time.monotonic() - t0
    assert google.accepts_only(first), "the registry takes the first token, and only it"
    pod, first_seconds = wait_pod(core, node, ns, "first", finished, "finished", POD_TIMEOUT)
    assert pod.status.phase == "Succeeded", _describe(core, node, ns, "first")
    assert termination_messages(pod) == {"c0": "ran:gcp-app"}, "the private image itself ran"
    assert pull_failure_messages(core, ns, "first") == [], "pulled at the first attempt"
    (status,) = pod.status.container_statuses
    assert status.image_id.endswith(image.digest)
    assert registry.manifest_requests("team/gcp-app", since=mark) >= 1, "authenticated manifest request"
    print(f"pod 1: admitted (first mint) in {mint_seconds:.2f}s; Succeeded {first_seconds:.2f}s later")

    # The refresh: the copy gets the next token before the first expires, patched in place.
    t1 = time.monotonic()

    def refreshed() -> Any:
        secret = read_secret(core, ns, SECRET)
        return secret if secret is not None and copy_token(secret, host) != first else None

    after = wait_for(refreshed, "the copy to hold the next token", timeout=LIFETIME + 10, interval=0.25)
    refresh_seconds = time.monotonic() - t1
    second = copy_token(after, host)
    assert second in google.issued
    assert after.metadata.uid == uid, "patched in place: same uid"
    wait_for(lambda: google.accepts_only(second), "the registry to accept only the next token", timeout=15)
    assert not registry.login_ok(USER, first), "the first token is refused now"
    current = copy_token(read_secret(core, ns, SECRET), host)
    assert current == second, "no further refresh meanwhile"

    # Pod 2, created after the refresh: pulls with the next token.
    mark = registry.log_mark()
    t2 = time.monotonic()
    created = core.create_namespaced_pod(ns, node_pod(node, "second", image.reference))
    assert pull_secrets(created) == [SECRET]
    pod, second_seconds = wait_pod(core, node, ns, "second", finished, "finished", POD_TIMEOUT)
    assert pod.status.phase == "Succeeded", _describe(core, node, ns, "second")
    assert termination_messages(pod) == {"c0": "ran:gcp-app"}
    assert pull_failure_messages(core, ns, "second") == [], "pulled at the first attempt"
    assert registry.manifest_requests("team/gcp-app", since=mark) >= 1, "authenticated manifest request"
    final = read_secret(core, ns, SECRET)
    assert final.metadata.uid == uid, "the copy's uid is unchanged"
    assert registry.login_ok(USER, copy_token(final, host))
    print(
        f"refresh: next token in the copy {refresh_seconds:.2f}s after pod 1 finished "
        f"({len(google.issued)} tokens issued); pod 2 Succeeded {second_seconds:.2f}s after create "
        f"({time.monotonic() - t2:.2f}s)"
    )
    log = token_hook.logs()
    assert not [token for token in google.issued if token in log], "no token in the webhook's log"
