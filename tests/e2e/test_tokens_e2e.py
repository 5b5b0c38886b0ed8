"""Short-lived tokens on the real API server: minted at admission, refreshed in place, failures kept quiet.

The webhook process gets its Google identity the way it would on GKE: google-auth's
Application Default Credentials find the metadata server through ``GCE_METADATA_HOST`` /
``GCE_METADATA_IP``, here a loopback server (:mod:`tests.tokens.google_servers`) issuing
tokens that live 60 s. The tests run in order, on one webhook process:

1. a Pod in a new namespace, with a cold minter, gets a copy holding username
   ``oauth2accesstoken`` and the token the metadata server just issued, when its create returns;
2. every copy holds a new token before the old one expires, with the Secret's uid unchanged;
3. a failing metadata server: the copies keep the last good token, a Warning Event says so,
   and the next good mint reaches them;
4. the log (at DEBUG) never holds a token.
"""

from __future__ import annotations

import base64
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.builders import pod_body, pull_secrets, wait_for
from tests.tokens.google_servers import GoogleServers

from .cluster import Namespaces, copy_auths, read_secret
from .controlplane import ControlPlane, free_port
from .report import Measurements, Note
from .tokens_support import token_webhook
from .webhook import WebhookProcess

TOKEN_NS = "psi-e2e-tokens"
TOKEN_HOOK = "psi-e2e-tokens"
GAR_IMAGE = "europe-docker.pkg.dev/my-project/team/app:1.0"
LIFETIME = 60
MINTED_AT = "pullsecret-injector.io/minted-at"
EXPIRES_AT = "pullsecret-injector.io/expires-at"

RULE: dict[str, Any] = {
    "name": "gar-token",
    "registries": ["europe-docker.pkg.dev"],
    "secret": "gar-token-pull",
    "source": {"token": {"provider": "gcp", "registry": "europe-docker.pkg.dev"}},
}


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleServers]:
    servers = GoogleServers(lifetime=LIFETIME, prefix="ya29.e2e-canary-").start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def token_hook(
    control_plane: ControlPlane,
    api_client: Any,
    core: Any,
    google: GoogleServers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WebhookProcess]:
    with token_webhook(
        control_plane,
        api_client,
        core,
        google,
        name=TOKEN_HOOK,
        namespace=TOKEN_NS,
        rules=[RULE],  # the probe's static rule keeps the token minter cold until test 1
        gcloud_config=tmp_path_factory.mktemp("gcloud"),
        extra_args=("--log-level", "DEBUG", "--resync-seconds", "30"),
        metrics_port=free_port(),
    ) as hook:
        yield hook


@pytest.fixture(scope="module")
def token_namespaces(control_plane: ControlPlane, core: Any) -> Iterator[Namespaces]:
    """Namespaces shared by the tests of this module (they run in order on the same copies)."""
    factory = Namespaces(control_plane, core, hook=TOKEN_HOOK)
    try:
        yield factory
    finally:
        factory.close()


def copy_token(secret: Any) -> tuple[str, str]:
    auths = copy_auths(secret)
    assert list(auths) == ["europe-docker.pkg.dev"], "the registry, and nothing else"
    entry = auths["europe-docker.pkg.dev"]
    assert base64.b64decode(entry["auth"]).decode() == f"{entry['username']}:{entry['password']}"
    return entry["username"], entry["password"]


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def token_copies(core: Any, names: list[str]) -> dict[str, Any]:
    return {ns: read_secret(core, ns, "gar-token-pull") for ns in names}


def tokens(copies: dict[str, Any]) -> set[str]:
    """The tokens the copies hold (one, when every copy is current)."""
    return {copy_token(s)[1] for s in copies.values()}


def expiry(copies: dict[str, Any]) -> float:
    """When the token of (the first of) the copies expires, as its annotation says."""
    return stamp(next(iter(copies.values())).metadata.annotations[EXPIRES_AT])


def scrape(hook: WebhookProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{hook.metrics_port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


STATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def measurements(request: pytest.FixtureRequest) -> Measurements:
    """Listed at the end of the run; ``note`` (conftest.py) adds to them."""
    return Measurements.register(request, "pullsecret-injector token e2e measurements", "psi-e2e-token-measurements")


def test_first_pod_in_a_new_namespace_gets_a_freshly_minted_token(
    token_hook: WebhookProcess, core: Any, token_namespaces: Namespaces, google: GoogleServers, note: Note
) -> None:
    assert not [s for s in google.seen if "/token" in s.path], "the minter is cold"
    ns = token_namespaces.one("e2e-tok")
    t0 = time.monotonic()
    pod = core.create_namespaced_pod(ns, pod_body(GAR_IMAGE, name="first"))
    seconds = time.monotonic() - t0
    secret = read_secret(core, ns, "gar-token-pull")  # at once: it exists when the create returns
    assert pull_secrets(pod) == ["gar-token-pull"]
    assert secret is not None, "the copy exists when the Pod is admitted"
    username, password = copy_token(secret)
    assert username == "oauth2accesstoken"
    assert password == google.issued[-1], "the token the metadata server issued"
    annotations = secret.metadata.annotations
    assert stamp(annotations[EXPIRES_AT]) - stamp(annotations[MINTED_AT]) == pytest.approx(LIFETIME, abs=2)
    assert annotations["pullsecret-injector.io/source"] == "token:gcp/europe-docker.pkg.dev"
    note("cold-mint-admission", f"Pod create with a cold minter took {seconds:.2f} s (mint included)")
    more = token_namespaces.make("e2e-tok", count=4)
    for other in more:
        core.create_namespaced_pod(other, pod_body(GAR_IMAGE, name="first"))
    copies = token_copies(core, [ns, *more])
    assert tokens(copies) == {password}, "one minter, one token, every namespace"
    assert len([s for s in google.seen if "/token" in s.path]) == 1, "minted once for five namespaces"
    STATE["namespaces"] = [ns, *more]


def test_every_copy_gets_a_new_token_before_the_old_one_expires(
    token_hook: WebhookProcess, core: Any, google: GoogleServers, note: Note
) -> None:
    names: list[str] = STATE["namespaces"]
    before = token_copies(core, names)
    old = tokens(before)
    assert len(old) == 1
    expires = expiry(before)
    uids = {ns: s.metadata.uid for ns, s in before.items()}

    def all_refreshed() -> dict[str, Any] | None:
        copies = token_copies(core, names)
        if all(copy_token(s)[1] not in old for s in copies.values()):
            return copies
        return None

    after = wait_for(all_refreshed, "every copy to hold a new token", timeout=max(1.0, expires - time.time()))
    reached = time.time()
    assert reached < expires, "the refresh reached every copy before the old token expired"
    assert {ns: s.metadata.uid for ns, s in after.items()} == uids, "patched in place: same uid"
    new = tokens(after)
    assert len(new) == 1
    assert new.pop() in google.issued
    note("refresh", f"{len(names)} copies refreshed {expires - reached:.1f} s before the old token expired")


def test_a_failed_mint_keeps_the_last_good_token_and_says_so(
    token_hook: WebhookProcess, core: Any, google: GoogleServers, note: Note
) -> None:
    names: list[str] = STATE["namespaces"]
    before = token_copies(core, names)
    current = tokens(before)
    expires = expiry(before)
    google.fail = True
    try:

        def failure_event() -> Any:
            events = core.list_namespaced_event(TOKEN_NS).items
            return [e for e in events if e.reason == "TokenMintFailed" and e.type == "Warning"]

        (event,) = wait_for(failure_event, "a TokenMintFailed Warning Event", timeout=max(1.0, expires - time.time()))
        assert "token from gcp for europe-docker.pkg.dev" in event.message
        assert "the last good token stays in the copies" in event.message
        assert not any(t in event.message for t in google.issued)
        assert tokens(token_copies(core, names)) == current, "the last good token is kept"
        text = scrape(token_hook)
        assert 'pullsecret_injector_token_mints_total{provider="gcp",result="error"}' in text
        assert "pullsecret_injector_token_expiry_timestamp_seconds" in text
    finally:
        google.fail = False

    def recovered() -> bool:
        return all(copy_token(s)[1] not in current for s in token_copies(core, names).values())

    wait_for(recovered, "the next good mint to reach every copy", timeout=max(1.0, expires - time.time()))
    assert time.time() < expires
    note("failure", "mint failure: Warning Event, last good token kept; recovered before expiry")


def test_no_token_ever_reaches_the_log(token_hook: WebhookProcess, google: GoogleServers) -> None:
    log = token_hook.logs()
    assert "DEBUG" in log, "the webhook logged at DEBUG"
    assert google.issued
    leaked = [token for token in google.issued if token in log]
    assert not leaked, "a token reached the webhook's log"
    assert "e2e-canary" not in log
    assert "minted, expires at" in log
