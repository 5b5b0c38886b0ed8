"""The Kubernetes-side metrics carry the values the test drove, and never a credential.

The runtime runs against the API emulator on loopback with its ``Stats`` wired into
``Metrics`` exactly as ``serve`` wires them; the exposition text is what ``/metrics`` serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import generate_latest

from tests.builders import eventually, review
from tests.conftest import FAST_SETTINGS
from tests.kube_fixtures import Apiserver, Cluster, Fault, client_configuration
from tests.metrics_text import value
from tests.scenario import CANARY, config, forms, gar_key
from tests.scenario import CANARY_POLICY as POLICY
from webhook.admission.handler import Handler
from webhook.config import KubeSettings
from webhook.observability.metrics import Metrics
from webhook.runtime import KubeRuntime, build_runtime_from_configuration


@pytest.fixture
async def wired(api_host: str) -> AsyncIterator[tuple[KubeRuntime, Metrics, Handler]]:
    metrics = Metrics()
    stats = metrics.kube_stats()
    runtime = build_runtime_from_configuration(
        configuration=client_configuration(api_host),
        policy=lambda: POLICY,
        settings=KubeSettings(**{**FAST_SETTINGS, "identity": "metrics-test"}),
        stats=stats,
    )
    await runtime.start()
    task = asyncio.create_task(runtime.run())
    handler = Handler(
        policy=lambda: POLICY, namespaces=runtime.namespaces, ensurer=runtime.ensurer, observe=metrics.observe_admission
    )
    try:
        yield runtime, metrics, handler
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runtime.close()


async def test_secret_metrics_follow_what_happened(
    wired: tuple[KubeRuntime, Metrics, Handler], apiserver: Apiserver, cluster: Cluster
) -> None:
    runtime, metrics, handler = wired
    await cluster.namespace("ops")
    await cluster.secret("ops", "shared", {".dockerconfigjson": config(CANARY)})
    await cluster.secret("ops", "gar-key", {"key.json": gar_key(CANARY)}, type="Opaque")
    for namespace in ("team-a", "team-b"):
        await cluster.namespace(namespace, pull="yes")
    await eventually(lambda: runtime.stats.leader)

    responses = [
        await handler.handle(review("team-a", "quay.io/x/y")),  # create
        await handler.handle(review("team-a", "quay.io/x/y")),  # cached: no write
        await handler.handle(review("team-a", "europe-docker.pkg.dev/p/x:1")),  # create from credentials
    ]
    apiserver.faults.append(Fault(method="POST", path=r"/api/v1/namespaces/team-b/secrets", status=500, times=1))
    responses.append(await handler.handle(review("team-b", "quay.io/x/y")))  # API 500: warning, handed off
    await eventually(lambda: apiserver.secret("team-b", "quay-pull") is not None)  # the background recovers
    await eventually(lambda: runtime.stats.secret_writes[("create", "ok")] == 3)  # and has counted it
    await eventually(lambda: runtime.stats.events["ok"] == 1)  # the Event saying the Secret is late
    await eventually(
        lambda: "last_successful_sync_timestamp_seconds 0.0" not in generate_latest(metrics.registry).decode()
    )

    text = generate_latest(metrics.registry).decode()
    prefix = "pullsecret_injector_"
    assert value(text, prefix + "secret_writes_total", operation="create", result="ok") == 3
    assert value(text, prefix + "secret_writes_total", operation="create", result="error") == 1
    assert value(text, prefix + "secret_errors_total", kind="server_error") >= 1
    assert value(text, prefix + "admission_requests_total", outcome="mutated") == 4
    assert value(text, prefix + "injections_total", rule="quay") == 3
    assert value(text, prefix + "injections_total", rule="gar") == 1
    assert value(text, prefix + "events_total", result="ok") == 1
    assert 0 <= value(text, prefix + "seconds_since_last_successful_sync") < 30
    assert value(text, prefix + "reconciler_lag_seconds") >= 0
    assert value(text, prefix + "secret_ensures_total", outcome="fast") == runtime.stats.ensures["fast"] >= 1
    assert value(text, prefix + "secret_ensures_total", outcome="failed") == runtime.stats.ensures["failed"] == 1
    assert responses[-1]["response"]["allowed"] is True
    for form in forms(CANARY):
        assert form not in text, "credential material on /metrics"
