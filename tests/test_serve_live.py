"""``serve --policy-configmap``: the policy read, watched and reported on through the API (kmock).

The emulator is taught to answer SelfSubjectAccessReviews (it has no authorizer): allowed,
except for the Secret names a test denies, as the chart's RBAC by name would. The same
on the real API server with the chart's RBAC: tests/e2e/test_policy_live_e2e.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import pytest

from tests import builders
from tests.builders import eventually, injected, kubeconfig, review
from tests.kube_fixtures import EVENTS, LEASES, NAMESPACES, SECRETS, Apiserver, Cluster
from webhook.cli import build_parser, settings_from_args
from webhook.policy import status as st
from webhook.server import Components, build_components

CONFIGMAPS = kmock.resource("", "v1", "configmaps")
NAMESPACE = "pullsecret-system"
CONFIGMAP = "psi-policy"
AUTH = '{"auths":{"quay.io":{"auth":"cTpw"},"ghcr.io":{"auth":"cTpw"}}}'


def rule(name: str, registry: str) -> dict[str, Any]:
    return builders.rule(name, registry, f"{name}-pull", source="ops/shared")


def policy(*rules: dict[str, Any]) -> str:
    return builders.policy_yaml(*rules)


@attrs.define(kw_only=True)
class AuthorizingApiserver(Apiserver):
    """The emulator plus an authorizer for SelfSubjectAccessReviews: every Secret name but ``denied``."""

    denied: set[str] = attrs.field(factory=set)
    reviews: int = 0

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.url.path.endswith("/selfsubjectaccessreviews"):
            self.reviews += 1
            attributes = ((request.data or {}).get("spec") or {}).get("resourceAttributes") or {}
            allowed = attributes.get("name", "") not in self.denied
            return aiohttp.web.json_response(
                {
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": attributes},
                    "status": {"allowed": allowed},
                },
                status=201,
            )
        response: aiohttp.web.StreamResponse = await super()._handle(request)
        return response


@pytest.fixture
async def authz() -> AsyncIterator[AuthorizingApiserver]:
    async with AuthorizingApiserver() as api, kmock.Server(api):
        for resource in (SECRETS, NAMESPACES, EVENTS, LEASES, CONFIGMAPS):
            api.resources[resource] = kmock.ResourceInfo()
        yield api


async def running(components: Components) -> list[asyncio.Task[None]]:
    for start in components.on_start:
        await start()
    return [asyncio.create_task(job()) for job in components.background]


#: How long the stopped jobs may take to end (closing the watches: a few seconds) before the test says which hung.
STOP_WITHIN = 30.0


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the serve wiring's jobs; every one must end (a job that loses its cancellation hangs ``serve``)."""
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=STOP_WITHIN)
    assert not pending, f"still running after the stop: {sorted(str(task.get_coro()) for task in pending)}"


def configmap(api: Apiserver) -> dict[str, Any]:
    raw: dict[str, Any] = api.objects[(CONFIGMAPS, NAMESPACE, CONFIGMAP)].raw
    return raw


async def test_the_policy_comes_from_the_configmap_and_edits_are_served_at_once(
    authz: AuthorizingApiserver, tmp_path: Path
) -> None:
    cluster = Cluster(authz)
    for ns in (NAMESPACE, "ops", "team-a"):
        await cluster.namespace(ns)
    await cluster.secret("ops", "shared", {".dockerconfigjson": AUTH})
    await cluster._send(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        {
            "metadata": {"name": CONFIGMAP, "namespace": NAMESPACE},
            "data": {"policy.yaml": policy(rule("quay", "quay.io"))},
        },
    )
    host = str(authz.url).rstrip("/")
    args = build_parser().parse_args(
        [
            "serve",
            "--dev",  # (certificates only; no --policy file at all)
            "--kubeconfig",
            str(kubeconfig(tmp_path / "kc", host)),
            "--namespace",
            NAMESPACE,
            "--policy-configmap",
            CONFIGMAP,
            "--ensure-timeout",
            "1",
        ]
    )
    # blocking start-up reads; kmock runs on this loop
    components = await asyncio.to_thread(build_components, settings_from_args(args, env={}))
    assert components.holder.version == st.digest(policy(rule("quay", "quay.io")))
    assert authz.reviews > 0  # the preflight asked the authorizer
    tasks = await running(components)
    try:
        assert injected(await components.handler.handle(review("team-a", "quay.io/acme/web:1"))) == ["quay-pull"]

        # an edit: served from the watch, no file involved
        t0 = time.monotonic()
        edited = policy(rule("quay", "quay.io"), rule("ghcr", "ghcr.io"))
        await cluster._send(
            "PATCH", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{CONFIGMAP}", {"data": {"policy.yaml": edited}}
        )
        await eventually(lambda: components.holder.version == st.digest(edited))
        print(f"\nserve: edit served {time.monotonic() - t0:.3f}s after the patch")
        assert injected(await components.handler.handle(review("team-a", "ghcr.io/acme/tool:1"))) == ["ghcr-pull"]
        await eventually(lambda: (configmap(authz)["metadata"].get("annotations") or {}).get(st.STATUS) == "Accepted")

        # a rule the "RBAC" does not cover: rejected, the last good one serves, the status and an Event say why
        authz.denied = {"denied-pull"}
        denied = policy(rule("quay", "quay.io"), rule("ghcr", "ghcr.io"), rule("denied", "denied.example.com"))
        await cluster._send(
            "PATCH", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{CONFIGMAP}", {"data": {"policy.yaml": denied}}
        )

        def rejected() -> bool:
            return (configmap(authz)["metadata"].get("annotations") or {}).get(st.STATUS) == "Rejected"

        await eventually(rejected)
        annotations = configmap(authz)["metadata"]["annotations"]
        assert "denied-pull" in annotations[st.MESSAGE]
        assert "rbac.extraSecretNames" in annotations[st.MESSAGE]
        assert annotations[st.SERVING] == st.digest(edited) == components.holder.version
        assert configmap(authz)["data"]["policy.yaml"] == denied, "the data is the user's: never written"
        await eventually(lambda: "PolicyRejected" in [event["reason"] for event in authz.events(NAMESPACE)])
        assert injected(await components.handler.handle(review("team-a", "denied.example.com/x:1"))) == []

        # the grant arrives (helm upgrade): the webhook re-checks on its own, no second edit
        authz.denied = set()
        await eventually(lambda: components.holder.version == st.digest(denied))
    finally:
        await stop(tasks)


async def test_an_unreadable_configmap_falls_back_to_a_mounted_file(
    authz: AuthorizingApiserver, tmp_path: Path
) -> None:
    """A newer image under an older chart (no ConfigMap RBAC, the file still mounted) keeps working."""
    file = tmp_path / "policy.yaml"
    file.write_text(policy(rule("quay", "quay.io")))
    host = str(authz.url).rstrip("/")
    args = build_parser().parse_args(
        [
            "serve",
            "--dev",
            "--kubeconfig",
            str(kubeconfig(tmp_path / "kc", host)),
            "--namespace",
            NAMESPACE,
            "--policy-configmap",
            "absent",
            "--policy",
            str(file),
        ]
    )
    # blocking start-up reads; kmock runs on this loop
    components = await asyncio.to_thread(build_components, settings_from_args(args, env={}))
    assert components.holder.version == st.digest(file.read_text())
