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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.builders import pull_secrets, wait_for
from tests.registries import BusyboxImages, PushedImage, Registry
from tests.tokens.google_servers import GoogleServers

from .cluster import (
    Namespaces,
    copy_auths,
    read_secret,
)
from .conftest import require_node
from .controlplane import KEEP, ControlPlane
from .node import Node
from .pods import finishing, node_pod, pull_failure_messages, run_pod, succeeded
from .tokens_support import token_webhook
from .webhook import WebhookProcess

HOOK = "psi-e2e-tokens-node"
SYSTEM_NS = "psi-e2e-tokens-node-system"
USER = "oauth2accesstoken"
SECRET = "gcp-token-pull"
LIFETIME = 60


@pytest.fixture(scope="session", autouse=True)
def _node_prerequisites() -> None:
    require_node()


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
    built = node_images.image("gcp-app", entrypoint=finishing("ran:gcp-app"))
    return registry.push(built, "team/gcp-app", "1.0")  # with the placeholder, before any token


def _rule(host: str) -> dict[str, Any]:
    return {
        "name": "gcp-token",
        "registries": [host],
        "secret": SECRET,
        "source": {"token": {"provider": "gcp", "registry": host}},
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
    with token_webhook(
        control_plane,
        api_client,
        core,
        google,
        name=HOOK,
        namespace=SYSTEM_NS,
        rules=[_rule(registry.host)],  # the probe's static rule: no mint before the first Pod
        gcloud_config=tmp_path_factory.mktemp("gcloud"),
        extra_args=("--resync-seconds", "30"),
    ) as hook:
        yield hook


def copy_token(secret: Any, host: str) -> str:
    auths = copy_auths(secret)
    assert list(auths) == [host], "the registry, and nothing else"
    entry = auths[host]
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
    pod, first_seconds = succeeded(core, node, ns, "first", messages={"c0": "ran:gcp-app"})
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
    second_pod = run_pod(core, node, ns, "second", image.reference, messages={"c0": "ran:gcp-app"})
    assert pull_secrets(second_pod.created) == [SECRET]
    second_seconds = second_pod.waited
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
