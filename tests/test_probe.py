"""The mirror ``check`` against real registries on loopback.

Two CNCF Distribution registries with TLS: ``first`` with htpasswd (Basic auth), ``second``
with the distribution spec's token auth (Bearer, a token server of our own issuing ES256
JWTs). Images are busybox built with umoci and pushed with skopeo; the rewritten
``rancher/pause`` exists on the second registry only. Plus a server that accepts
connections and never answers. The Handler is the real one; the credentials come from
real ``kubernetes.io/dockerconfigjson`` Secrets through the rules' sources.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mirror_registries import (
    INSTALL_HINT,
    HangingServer,
    LoopbackCA,
    LoopbackRegistry,
    TokenServer,
    build_image,
    missing_tools,
)
from webhook.admission.handler import Handler
from webhook.admission.mirroring import MirrorChecker, SecretCredentials, apply_mirrors
from webhook.admission.wire import AdmissionReview, AdmissionReviewResponse
from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.policy.mirrors import ORIGINAL_IMAGES_ANNOTATION
from webhook.registry.probe import ManifestProbe, RegistryAuth

SYSTEM = "pullsecret-system"
REWRITTEN = "mirrorproject/rancher-images/pause"

if missing_tools():
    if os.environ.get("PSI_REQUIRE_E2E") == "1":
        pytest.fail(f"missing {', '.join(missing_tools())}: {INSTALL_HINT}", pytrace=False)
    pytest.skip(f"missing {', '.join(missing_tools())}: {INSTALL_HINT}", allow_module_level=True)


@dataclass
class Registries:
    ca: LoopbackCA
    first: LoopbackRegistry
    second: LoopbackRegistry
    token: TokenServer
    hanging: HangingServer
    hanging_too: HangingServer
    digest: str
    secrets: dict[tuple[str, str], dict[str, Any]]


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    root = tmp_path_factory.mktemp("registries")
    ca = LoopbackCA.create()
    image = build_image(root / "oci", "pause", marker="pause 3.6")
    other = build_image(root / "oci", "busybox", marker="busybox 1.36")
    token = TokenServer(ca, users={"bob": "second-password"}).start()
    first = LoopbackRegistry(root / "first", ca, users={"alice": "first-password"}).start()
    second = LoopbackRegistry(root / "second", ca, token=token).start()
    hanging, hanging_too = HangingServer(), HangingServer()
    try:
        digest = second.push(image, REWRITTEN, "3.6")
        first.push(other, "library/busybox", "1.36")
        secrets = {
            (SYSTEM, "first-creds"): first.dockerconfig_secret("first-creds", SYSTEM),
            (SYSTEM, "second-creds"): second.dockerconfig_secret("second-creds", SYSTEM),
        }
        yield Registries(ca, first, second, token, hanging, hanging_too, digest, secrets)
    finally:
        first.stop()
        second.stop()
        token.stop()
        hanging.close()
        hanging_too.close()


#: The probe's timeout where a registry must answer: generous, so that a loaded machine is not a failure.
ANSWERS_WITHIN = 10.0
#: The probe's timeout where a registry never answers: the timeout is then the event awaited.
HANGS_FOR = 0.5
#: A timeout or budget that must never be the one that ends a wait (a test bounds its wait below it).
NEVER = 60.0
#: The bound on a wait that the shorter timeout or budget must end first (well below ``NEVER``).
BOUND = 30.0


@pytest.fixture
async def probe(registries: Registries) -> AsyncIterator[ManifestProbe]:
    probe = ManifestProbe(timeout=ANSWERS_WITHIN, verify=registries.ca.client_context())
    try:
        yield probe
    finally:
        await probe.aclose()


# --------------------------------------------------------------------------- the probe itself


async def test_basic_auth_registry(registries: Registries, probe: ManifestProbe) -> None:
    auth = RegistryAuth("alice", "first-password")
    url = registries.first.url
    assert (await probe.has_manifest(url, "library/busybox", "1.36", auth)).present is True
    assert (await probe.has_manifest(url, "library/busybox", "9.99", auth)).present is False
    refused = await probe.has_manifest(url, "library/busybox", "1.36", None)
    assert refused.present is False
    assert "credentials" in refused.detail
    wrong = await probe.has_manifest(url, "library/busybox", "1.36", RegistryAuth("alice", "wrong"))
    assert wrong.present is False


async def test_bearer_token_registry(registries: Registries, probe: ManifestProbe) -> None:
    auth = RegistryAuth("bob", "second-password")
    url = registries.second.url
    assert (await probe.has_manifest(url, REWRITTEN, "3.6", auth)).present is True
    assert (await probe.has_manifest(url, REWRITTEN, registries.digest, auth)).present is True
    assert (await probe.has_manifest(url, REWRITTEN, "sha256:" + "0" * 64, auth)).present is False
    assert (await probe.has_manifest(url, REWRITTEN, "3.6", None)).present is False
    assert (await probe.has_manifest(url, REWRITTEN, "3.6", RegistryAuth("bob", "wrong"))).present is False
    scopes = [r["scope"] for r in registries.token.requests if r["user"] == "bob"]
    assert [f"repository:{REWRITTEN}:pull"] in scopes


async def test_identity_token_is_exchanged_at_the_realm(registries: Registries, probe: ManifestProbe) -> None:
    registries.token.refresh_tokens["refresh-for-bob"] = "bob"
    url = registries.second.url
    result = await probe.has_manifest(url, REWRITTEN, "3.6", RegistryAuth(identity_token="refresh-for-bob"))
    assert result.present is True
    assert any(r.get("grant") == "refresh_token" and r["user"] == "bob" for r in registries.token.requests)
    refused = await probe.has_manifest(url, REWRITTEN, "3.6", RegistryAuth(identity_token="unknown-token"))
    assert refused.present is False


async def test_answers_are_cached_and_the_cache_is_bounded(registries: Registries) -> None:
    probe = ManifestProbe(timeout=ANSWERS_WITHIN, max_entries=2, verify=registries.ca.client_context())
    auth = RegistryAuth("bob", "second-password")
    url = registries.second.url
    try:
        first = await probe.has_manifest(url, REWRITTEN, "3.6", auth)
        sent = probe.requests
        again = await probe.has_manifest(url, REWRITTEN, "3.6", auth)
        assert (first.cached, again.cached, again.present) == (False, True, True)
        assert probe.requests == sent
        await probe.has_manifest(url, REWRITTEN, "a", auth)
        await probe.has_manifest(url, REWRITTEN, "b", auth)
        assert len(probe._cache) == 2
        assert not (await probe.has_manifest(url, REWRITTEN, "3.6", auth)).cached  # evicted, asked again
    finally:
        await probe.aclose()


async def test_a_registry_that_never_answers_costs_one_timeout(registries: Registries) -> None:
    """The probe's own timeout ends the wait (not the bound), and the unknown answer is cached: no second wait."""
    url = f"https://{registries.hanging.host}"
    probe = ManifestProbe(timeout=HANGS_FOR, unknown_ttl=NEVER, verify=registries.ca.client_context())
    try:
        result = await asyncio.wait_for(probe.has_manifest(url, "library/nginx", "1", None), timeout=BOUND)
        assert (result.present, result.detail) == (None, f"no answer within {HANGS_FOR:g}s")
        sent = probe.requests
        again = await probe.has_manifest(url, "library/nginx", "1", None)
        assert (again.cached, again.present, again.detail) == (True, None, result.detail)
        assert probe.requests == sent, "asked from the cache: nothing sent to the hanging registry again"
    finally:
        await probe.aclose()


async def test_no_credential_reaches_a_result_or_the_log(
    registries: Registries, probe: ManifestProbe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    results = [
        await probe.has_manifest(registries.second.url, REWRITTEN, "3.6", RegistryAuth("bob", "second-password")),
        await probe.has_manifest(registries.second.url, REWRITTEN, "3.6", RegistryAuth("bob", "wrong-password-x")),
        await probe.has_manifest(registries.first.url, "x", "1", RegistryAuth("alice", "first-password")),
    ]
    text = caplog.text + repr(results) + repr(RegistryAuth("bob", "second-password"))
    for secret in ("second-password", "wrong-password-x", "first-password"):
        assert secret not in text


# --------------------------------------------------------------------------- admission with check: true


def policy_for(endpoints: list[str], *, fallback: str = "original", registries: Registries) -> CompiledPolicy:
    first, second = registries.first.host, registries.second.host
    return load_policy(
        json.dumps(
            {
                "mirrors": {
                    "docker.io": {
                        "endpoint": endpoints,
                        "rewrite": {"^rancher/(.*)": "mirrorproject/rancher-images/$1"},
                        "check": True,
                        "fallback": fallback,
                    }
                },
                "rules": [
                    {
                        "name": "first",
                        "registries": [first],
                        "secret": "first-pull",
                        "source": {"secret": {"namespace": SYSTEM, "name": "first-creds"}},
                    },
                    {
                        "name": "second",
                        "registries": [second],
                        "secret": "second-pull",
                        "source": {"secret": {"namespace": SYSTEM, "name": "second-creds"}},
                    },
                ],
            }
        )
    )


def review(*images: str) -> AdmissionReview:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "probe-0000",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "app"},
                "spec": {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]},
            },
        },
    }


def checker_for(probe: ManifestProbe, registries: Registries, budget: float = 1.0) -> MirrorChecker:
    lookup: Callable[[str, str], Mapping[str, Any] | None] = lambda ns, name: registries.secrets.get((ns, name))  # noqa: E731
    return MirrorChecker(probe=probe, credentials=SecretCredentials(lookup), budget=budget)


def handler_for(policy: CompiledPolicy, probe: ManifestProbe, registries: Registries, budget: float = 1.0) -> Handler:
    return Handler(policy=lambda: policy, mirror_checker=checker_for(probe, registries, budget))


def patch_of(response: AdmissionReviewResponse) -> list[dict[str, Any]]:
    encoded = response["response"].get("patch")
    return json.loads(base64.b64decode(encoded)) if encoded else []


def images_of(ops: list[dict[str, Any]]) -> dict[str, str]:
    return {op["path"]: op["value"] for op in ops if op["path"].endswith("/image")}


async def test_present_on_the_second_endpoint_only_goes_there(registries: Registries, probe: ManifestProbe) -> None:
    first, second = registries.first.host, registries.second.host
    handler = handler_for(policy_for([first, second], registries=registries), probe, registries)
    response = await handler.handle(review("rancher/pause:3.6", f"rancher/pause@{registries.digest}"))
    ops = patch_of(response)
    assert images_of(ops) == {
        "/spec/containers/0/image": f"{second}/{REWRITTEN}:3.6",
        "/spec/containers/1/image": f"{second}/{REWRITTEN}@{registries.digest}",
    }
    added = [op for op in ops if op["path"] == "/spec/imagePullSecrets"]
    assert added == [{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "second-pull"}]}]
    record = next(op["value"] for op in ops if op["path"] == "/metadata/annotations")[ORIGINAL_IMAGES_ANNOTATION]
    assert json.loads(record) == {
        "containers/c0": "rancher/pause:3.6",
        "containers/c1": f"rancher/pause@{registries.digest}",
    }
    assert "warnings" not in response["response"]


async def test_present_on_the_first_endpoint_wins(registries: Registries, probe: ManifestProbe) -> None:
    first, second = registries.first.host, registries.second.host
    handler = handler_for(policy_for([first, second], registries=registries), probe, registries)
    ops = patch_of(await handler.handle(review("busybox:1.36")))
    assert images_of(ops) == {"/spec/containers/0/image": f"{first}/library/busybox:1.36"}


@pytest.mark.parametrize("fallback", ["original", "deny"])
async def test_absent_everywhere(registries: Registries, probe: ManifestProbe, fallback: str) -> None:
    first, second = registries.first.host, registries.second.host
    handler = handler_for(policy_for([first, second], fallback=fallback, registries=registries), probe, registries)
    response = (await handler.handle(review("rancher/absent:1")))["response"]
    if fallback == "original":
        assert response["allowed"] is True
        assert "patch" not in response
        assert response["warnings"][0].startswith("pullsecret-injector: rancher/absent:1 kept as written")
    else:
        assert response["allowed"] is False
        message = response["status"]["message"]
        assert "'rancher/absent:1'" in message
        assert f"{first} absent (404)" in message
        assert f"{second} absent (404)" in message


@pytest.mark.parametrize(
    ("layout", "probe_timeout", "budget", "expected", "why"),
    [
        # the budget ends the wait for the hanging endpoint; the second answered before it
        pytest.param("hanging-then-second", NEVER, 3.0, "second", None, id="hanging-then-second"),
        pytest.param("all-hanging", HANGS_FOR, NEVER, None, f"no answer within {HANGS_FOR:g}s", id="all-hanging"),
        pytest.param("all-hanging", NEVER, 1.0, None, "no answer within the 1s budget", id="all-hanging-budget-cuts"),
    ],
)
async def test_a_registry_that_never_answers_stays_within_the_budget(
    registries: Registries, layout: str, probe_timeout: float, budget: float, expected: str | None, why: str | None
) -> None:
    """The shorter of the probe timeout and the budget ends the admission's wait (the bound is below the other)."""
    hanging, hanging_too = registries.hanging.host, registries.hanging_too.host
    endpoints = [hanging, registries.second.host] if layout == "hanging-then-second" else [hanging, hanging_too]
    probe = ManifestProbe(timeout=probe_timeout, verify=registries.ca.client_context())
    policy = policy_for(endpoints, registries=registries)
    try:
        handler = handler_for(policy, probe, registries, budget=budget)
        response = await asyncio.wait_for(handler.handle(review("rancher/pause:3.6")), timeout=BOUND)
        images = images_of(patch_of(response))
        if expected == "second":
            assert images == {"/spec/containers/0/image": f"{registries.second.host}/{REWRITTEN}:3.6"}
            return
        assert images == {}
        assert response["response"]["allowed"] is True
        [warning] = response["response"]["warnings"]
        assert warning.startswith("pullsecret-injector: rancher/pause:3.6 kept as written")
        # The verdicts in full (an admission warning is cut at 120 characters), asked again the
        # same way: the probe's cached answer, or the budget again.
        pod = review("rancher/pause:3.6")["request"]["object"]
        assert pod is not None
        checker = checker_for(probe, registries, budget)
        checked = apply_mirrors(pod=pod, namespace="team-a", labels=None, policy=policy, checker=checker)
        [image] = (await asyncio.wait_for(checked, timeout=BOUND)).images
    finally:
        await probe.aclose()
    assert [(target.endpoint.name, result.detail) for target, result in image.tried] == [
        (hanging, why),
        (hanging_too, why),
    ], "each endpoint's verdict names what ended the wait"


def test_fixture_paths_stay_on_loopback(registries: Registries) -> None:
    for host in (registries.first.host, registries.second.host, registries.hanging.host):
        assert host.startswith("127.0.0.1:")
    assert registries.token.realm.startswith("https://127.0.0.1:")
    assert Path(registries.first.root).is_dir()
