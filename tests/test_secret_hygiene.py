"""No secret material in logs, warnings or Events, on any path, at DEBUG.

A canary password flows through every path of the Kubernetes side: copies created,
served from cache, raced for, rotated, recreated, cleaned up, left alone (unmanaged);
sources that are malformed in every way we detect; an API server that fails. Logging is at
DEBUG everywhere (ours, the Kubernetes client's, urllib3's, the emulator's), and the
records are checked *raw*, before the redacting filter production installs: the point is
that nothing ever tries to log a credential, not that the safety net catches it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.builders import eventually, review
from tests.conftest import RuntimeFactory
from tests.kube_fixtures import Apiserver, Cluster, Fault, decoded
from tests.scenario import CANARY, ROTATED, config, forms, gar_key, handler_for
from tests.scenario import CANARY_POLICY as POLICY
from webhook.admission.handler import Handler
from webhook.runtime import KubeRuntime


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, records captured raw (no redaction)."""
    names = ["", "webhook", "kubernetes", "urllib3", "aiohttp", "asyncio", "kmock"]
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield caplog
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def assert_clean(texts: list[str], *secrets: str) -> None:
    for text in texts:
        for secret in secrets:
            for form in forms(secret):
                assert form not in text, f"secret material in: {text[:200]!r}"


def everything_said(caplog: pytest.LogCaptureFixture, apiserver: Apiserver, responses: list[Any]) -> list[str]:
    """Log records (message and traceback), admission responses, and Events posted to the API."""
    texts: list[str] = []
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    texts.append(caplog.text)
    texts.extend(json.dumps(response) for response in responses)
    texts.extend(json.dumps(event) for event in apiserver.events())
    return texts


#: Budgets no loaded machine runs out of: every path these tests walk is chosen by the API's
#: answers (and the faults), never by a timer expiring first. (The lease too: the leader stays one.)
UNHURRIED: dict[str, Any] = {
    "ensure_timeout": 30.0,
    "request_timeout": 30.0,
    "lease_duration": 60.0,
    "renew_deadline": 45.0,
}


def handler(runtime: KubeRuntime) -> Handler:
    return handler_for(runtime, POLICY)


async def test_every_sync_path_keeps_the_password_out_of_logs(
    debug_logs: pytest.LogCaptureFixture, apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await cluster.namespace("ops")
    await cluster.secret("ops", "shared", {".dockerconfigjson": config(CANARY)})
    await cluster.secret("ops", "gar-key", {"key.json": gar_key(CANARY)}, type="Opaque")
    leader = await make_runtime(POLICY, **UNHURRIED)
    follower = await make_runtime(POLICY, elect=False, **UNHURRIED)
    await eventually(lambda: leader.stats.leader)
    responses: list[Any] = []
    for namespace in ("team-a", "team-b", "team-c"):
        await cluster.namespace(namespace, pull="yes")
    # Unmanaged Secret of the same name, holding the canary itself.
    await cluster.secret("team-c", "quay-pull", {".dockerconfigjson": config(CANARY)})

    # create (two replicas racing: one create, one 409), cache hit, dry run, credentials source
    responses += await asyncio.gather(
        handler(leader).handle(review("team-a", "quay.io/x/y")),
        handler(follower).handle(review("team-a", "quay.io/x/y")),
    )
    responses.append(await handler(follower).handle(review("team-a", "quay.io/x/y")))
    responses.append(await handler(follower).handle(review("team-b", "quay.io/x/y", dry_run=True)))
    responses.append(await handler(follower).handle(review("team-b", "europe-docker.pkg.dev/p/x:1")))
    responses.append(await handler(follower).handle(review("team-c", "quay.io/x/y")))  # unmanaged: warning
    assert apiserver.secret("team-a", "quay-pull") is not None

    # rotation (update), deletion (recreate), relabel (cleanup)
    await cluster.update_secret("ops", "shared", {".dockerconfigjson": config(ROTATED)})
    no_copy = {"data": {".dockerconfigjson": ""}}

    def rotated() -> bool:
        return ROTATED.encode() in decoded(apiserver.secret("team-a", "quay-pull") or no_copy)

    await eventually(rotated)
    await cluster.delete_secret("team-a", "quay-pull")
    await eventually(lambda: apiserver.secret("team-a", "quay-pull") is not None)
    await cluster.label_namespace("team-a", pull=None)
    await eventually(lambda: apiserver.secret("team-a", "quay-pull") is None)
    # the leader has counted (and logged) the cleanup, not only sent it
    await eventually(lambda: leader.stats.secret_writes[("delete", "ok")] >= 1)

    assert leader.stats.secret_writes[("update", "ok")] >= 1
    assert_clean(everything_said(debug_logs, apiserver, responses), CANARY, ROTATED)


MALFORMED: list[Any] = [
    pytest.param(
        "kubernetes.io/dockerconfigjson",
        {".dockerconfigjson": '{"auths": {"quay.io": {"password": "' + CANARY},
        id="truncated-json",
    ),
    pytest.param(
        "kubernetes.io/dockerconfigjson",
        {".dockerconfigjson": json.dumps({"auths": {"quay.io": {"password": CANARY, "auth": ["x"]}}})},
        id="field-of-wrong-type",
    ),
    pytest.param(
        "kubernetes.io/dockerconfigjson",
        {".dockerconfigjson": json.dumps({"auths": {"quay.io": CANARY}})},
        id="entry-is-a-string",
    ),
    pytest.param(
        "kubernetes.io/dockerconfigjson",
        {".dockerconfigjson": json.dumps({"auths": {"ghcr.io": {"password": CANARY}}})},
        id="no-entry-for-the-registry",
    ),
    pytest.param("Opaque", {"password": CANARY, "token": CANARY}, id="opaque-without-config"),
    pytest.param("kubernetes.io/dockercfg", {".dockercfg": f'["{CANARY}"]'}, id="dockercfg-not-an-object"),
    pytest.param("Opaque", {"config.json": json.dumps({"credsStore": CANARY})}, id="creds-store-only"),
]


@pytest.mark.parametrize(("secret_type", "data"), MALFORMED)
async def test_malformed_sources_keep_the_password_out_of_logs(
    debug_logs: pytest.LogCaptureFixture,
    apiserver: Apiserver,
    cluster: Cluster,
    make_runtime: RuntimeFactory,
    secret_type: str,
    data: dict[str, str],
) -> None:
    await cluster.namespace("ops")
    await cluster.secret("ops", "shared", data, type=secret_type)
    await cluster.secret("ops", "gar-key", {"other.json": gar_key(CANARY)}, type="Opaque")  # passwordFrom key missing
    runtime = await make_runtime(POLICY, **UNHURRIED)
    await eventually(lambda: runtime.stats.leader)
    await cluster.namespace("team-a", pull="yes")

    responses = [
        await handler(runtime).handle(review("team-a", "quay.io/x/y")),
        await handler(runtime).handle(review("team-a", "europe-docker.pkg.dev/p/x:1")),
    ]
    await runtime.reconciler.run_pass()
    await eventually(lambda: len(apiserver.events("team-a")) == 2)

    assert all(r["response"]["allowed"] for r in responses)
    assert all(r["response"].get("warnings") for r in responses)
    assert apiserver.secret("team-a", "quay-pull") is None
    assert_clean(everything_said(debug_logs, apiserver, responses), CANARY)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault(method="POST", status=500), id="500-on-create"),
        pytest.param(Fault(method="POST", status=403), id="403-on-create"),
        pytest.param(Fault(method="POST", status=422), id="422-on-create"),
        pytest.param(Fault(method="POST", delay=1.5), id="timeout-on-create"),
        pytest.param(Fault(method="PATCH", status=409), id="409-on-update"),
    ],
)
async def test_api_failures_keep_the_password_out_of_logs(
    debug_logs: pytest.LogCaptureFixture,
    apiserver: Apiserver,
    cluster: Cluster,
    make_runtime: RuntimeFactory,
    fault: Fault,
) -> None:
    await cluster.namespace("ops")
    await cluster.secret("ops", "shared", {".dockerconfigjson": config(CANARY)})
    await cluster.secret("ops", "gar-key", {"key.json": gar_key(CANARY)}, type="Opaque")
    await cluster.namespace("team-a", pull="yes")
    # A stale managed copy, so that the PATCH path runs too.
    await cluster.secret(
        "team-a",
        "gar-pull",
        {".dockerconfigjson": "{}"},
        labels={"app.kubernetes.io/managed-by": "pullsecret-injector"},
    )
    # A slow API: the admission stops waiting at 0.5 s for an answer delayed 1.5 s. A failing
    # one: the admission waits for the failure, whatever the load.
    ensure_timeout = 0.5 if fault.delay else UNHURRIED["ensure_timeout"]
    runtime = await make_runtime(POLICY, elect=False, ensure_timeout=ensure_timeout, request_timeout=30.0)
    await eventually(lambda: runtime.reconciler.passes >= 1)  # its first pass, before the faults
    passes = runtime.reconciler.passes
    apiserver.faults.append(fault)

    responses = [
        await handler(runtime).handle(review("team-a", "quay.io/x/y")),
        await handler(runtime).handle(review("team-a", "europe-docker.pkg.dev/p/x:1")),
    ]
    # the work handed off has been taken up by the background too (and said what it said)
    await eventually(lambda: runtime.reconciler.passes > passes)

    assert_clean(everything_said(debug_logs, apiserver, responses), CANARY)
