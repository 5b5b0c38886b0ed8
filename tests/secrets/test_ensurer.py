"""The Ensurer: the copies a Pod gets exist and are current before it is answered, within a budget.

Against kmock's emulator on loopback (``tests/kube_fixtures.py``): the real client, nothing patched.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re

import pytest

from tests.builders import eventually, injected, review, warnings
from tests.conftest import RuntimeFactory
from tests.kube_fixtures import Apiserver, Cluster, Fault, closed_port, decoded
from tests.scenario import HUB, POLICY, QUAY_ONLY, admitted_without_source, handler_for, shared_source, tenants
from webhook.admission.handler import Handler
from webhook.runtime import KubeRuntime
from webhook.secrets.dockerconfig import (
    HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    RULE_ANNOTATION,
    SOURCE_ANNOTATION,
    content_hash,
)


async def admitted_once(cluster: Cluster, make_runtime: RuntimeFactory) -> tuple[KubeRuntime, Handler]:
    """A replica that does not lead, and one Pod admitted in team-a: its copy exists and is in the cache."""
    await shared_source(cluster)
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False)
    handler = handler_for(runtime)
    await handler.handle(review("team-a", "quay.io/acme/web:1"))
    await eventually(lambda: runtime.secrets.lookup("team-a", "quay-pull")[1] is not None)
    return runtime, handler


async def test_the_first_pod_in_a_new_namespace_gets_its_secret_before_the_response(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    runtime = await make_runtime(POLICY, elect=False)  # no reconciler: only the admission can create it
    await cluster.namespace("team-a")

    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))

    assert response["response"]["allowed"] is True
    assert injected(response) == ["quay-pull"]
    assert warnings(response) == []
    copy = apiserver.secret("team-a", "quay-pull")  # right now, no waiting
    assert copy is not None
    assert copy["type"] == "kubernetes.io/dockerconfigjson"
    assert decoded(copy) == QUAY_ONLY  # least privilege: neither the Hub nor the internal password
    assert copy["metadata"]["labels"] == {MANAGED_BY_LABEL: "pullsecret-injector"}  # none of the source's
    assert copy["metadata"]["annotations"] == {
        RULE_ANNOTATION: "quay",
        SOURCE_ANNOTATION: "secret:ops/shared",
        HASH_ANNOTATION: content_hash(QUAY_ONLY),
    }


async def test_a_current_copy_costs_no_api_call(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    runtime, handler = await admitted_once(cluster, make_runtime)

    before = apiserver.request_count()
    for _ in range(20):
        response = await handler.handle(review("team-a", "quay.io/acme/web:1", "quay.io/acme/sidecar:2"))
        assert injected(response) == ["quay-pull"]
    assert apiserver.request_count() == before
    assert runtime.stats.ensures["fast"] == 20


async def test_a_stale_copy_is_updated_before_the_response(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    runtime, handler = await admitted_once(cluster, make_runtime)
    rotated = {"auths": {"quay.io": {"auth": base64.b64encode(b"quay-user:rotated").decode()}}}
    await cluster.update_secret("ops", "shared", {".dockerconfigjson": json.dumps(rotated)})
    await eventually(lambda: runtime.secrets.lookup("ops", "shared")[1] != apiserver.secret("team-a", "quay-pull"))
    await asyncio.sleep(0.1)

    await handler.handle(review("team-a", "quay.io/acme/web:1"))

    copy = apiserver.secret("team-a", "quay-pull")
    assert copy is not None
    assert json.loads(decoded(copy)) == rotated


async def test_two_replicas_racing_to_create_both_succeed_through_409(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    first = await make_runtime(POLICY, elect=False)
    second = await make_runtime(POLICY, elect=False)
    rule = POLICY.rules_by_name["quay"]

    results = await asyncio.gather(
        first.ensurer.ensure(namespace="team-a", secrets={"quay-pull": rule}, dry_run=False),
        second.ensurer.ensure(namespace="team-a", secrets={"quay-pull": rule}, dry_run=False),
    )

    assert [(r.failed, r.warnings) for r in results] == [([], []), ([], [])]
    creates = [r for r in apiserver.writes() if r.namespace == "team-a"]
    assert len(creates) == 2  # both tried...
    writes = first.stats.secret_writes + second.stats.secret_writes
    assert writes == {("create", "ok"): 1, ("create", "conflict"): 1}  # ...one won, the other took 409 as success
    assert list(apiserver.secrets_named("quay-pull")) == ["team-a"]


async def test_dry_run_writes_nothing_and_returns_the_same_patch(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    await cluster.namespace("team-b")
    runtime = await make_runtime(POLICY)  # reconciler and all: still nothing may be written
    handler = handler_for(runtime)

    dry = await handler.handle(review("team-a", "quay.io/acme/web:1", dry_run=True))
    await asyncio.sleep(0.3)
    assert apiserver.writes() == []
    assert apiserver.secret("team-a", "quay-pull") is None

    real = await handler.handle(review("team-b", "quay.io/acme/web:1"))
    assert dry["response"]["patch"] == real["response"]["patch"]
    assert warnings(dry) == warnings(real) == []
    assert apiserver.events() == []


async def test_an_unmanaged_secret_of_the_same_name_is_never_touched(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    await cluster.secret("team-a", "quay-pull", {".dockerconfigjson": '{"auths":{"quay.io":{"auth":"bWluZTptaW5l"}}}'})
    before = apiserver.secret("team-a", "quay-pull")
    runtime = await make_runtime(POLICY)
    await eventually(lambda: runtime.stats.leader)

    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))
    await runtime.reconciler.run_pass()  # the leader's reconciler leaves it alone too

    assert response["response"]["allowed"] is True
    assert injected(response) == ["quay-pull"]  # the reference is injected anyway
    assert any("not managed by pullsecret-injector" in w for w in warnings(response))
    assert apiserver.secret("team-a", "quay-pull") == before
    assert [w for w in apiserver.writes() if w.namespace == "team-a"] == []
    await eventually(lambda: [e["reason"] for e in apiserver.events("team-a")] == ["SecretNotManaged"])


async def test_a_namespace_no_rule_admits_never_gets_a_secret(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    for namespace in ("team-private", "kube-system", "default"):
        await cluster.namespace(namespace)
    runtime = await make_runtime(POLICY)
    handler = handler_for(runtime)

    for namespace in ("team-private", "kube-system", "default"):
        response = await handler.handle(review(namespace, "quay.io/acme/web:1", "registry.example.com:5000/x/y"))
        assert injected(response) == []
    # The ensurer itself refuses as well, should anything ever ask it.
    result = await runtime.ensurer.ensure(
        namespace="team-private", secrets={"quay-pull": POLICY.rules_by_name["quay"]}, dry_run=False
    )
    assert result.failed == ["quay-pull"]
    await runtime.reconciler.run_pass()

    assert apiserver.writes() == []


async def test_a_missing_source_is_a_warning_and_an_event(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    runtime, response = await admitted_without_source(cluster, make_runtime)

    assert response["response"]["allowed"] is True
    assert injected(response) == ["quay-pull"]
    assert warnings(response) == [
        "pullsecret-injector: Secret quay-pull not provided: source Secret ops/shared not found"
    ]
    await eventually(lambda: apiserver.events("team-a"))
    [event] = apiserver.events("team-a")
    assert event["reason"] == "SourceNotFound"
    assert event["type"] == "Warning"
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Namespace", "name": "team-a", "namespace": "team-a"}
    assert "ops/shared" in event["message"]
    await eventually(lambda: runtime.stats.events["ok"] == 1)


#: An API answer no test waits for: only a budget can end the wait for it.
HUNG = 60.0
#: The bound on a wait that a budget (well below ``HUNG``) must end first: a test that hits it
#: would have waited for the hung API, whatever the machine's load.
BOUND = 30.0


def ended_by_the_budget(namespace: str, budget: float) -> str:
    """What the warning says when the budget ends the wait: the ensurer stopped waiting, or the
    call chain's deadline (the same budget) ended its call first. Which one is down to scheduling."""
    return rf"not confirmed in {namespace} within {budget:g}s \(API slow\)|not yet in {namespace} \(timeout\)"


@pytest.mark.parametrize(
    ("trouble", "budget", "expected_warning"),
    [
        # the API's answer ends the wait (the budget is generous): the warning names the failure
        pytest.param("refused", BOUND, "unavailable", id="connection-refused"),
        pytest.param("500", BOUND, "server_error", id="http-500"),
        pytest.param("403", BOUND, "forbidden", id="http-403"),
        pytest.param("429", BOUND, "too_many_requests", id="http-429"),
        # no answer comes: the budget ends the wait, and the warning says so
        pytest.param("slow", 0.5, ended_by_the_budget("team-a", 0.5), id="slow"),
    ],
)
async def test_api_trouble_is_answered_within_the_budget_with_a_warning(
    apiserver: Apiserver,
    cluster: Cluster,
    make_runtime: RuntimeFactory,
    trouble: str,
    budget: float,
    expected_warning: str,
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    if trouble == "refused":
        runtime = await make_runtime(
            POLICY, host=f"http://127.0.0.1:{closed_port()}", ensure_timeout=budget, sync_timeout=0.2
        )
    else:
        runtime = await make_runtime(POLICY, elect=False, ensure_timeout=budget, request_timeout=HUNG)
        fault = Fault(delay=HUNG) if trouble == "slow" else Fault(status=int(trouble))
        apiserver.faults.append(fault)

    response = await asyncio.wait_for(handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1")), BOUND)

    assert response["response"]["allowed"] is True
    assert injected(response) == ["quay-pull"]
    assert any(re.search(expected_warning, w) for w in warnings(response)), warnings(response)
    assert ("team-a", "quay-pull") in runtime.reconciler.pending


async def test_a_hung_api_with_every_worker_busy_still_answers_within_the_budget(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    """Calls queued behind hung ones are bounded too, not only those on a socket."""
    namespaces = await tenants(cluster, 6)
    runtime = await make_runtime(POLICY, elect=False, ensure_timeout=0.4, workers=1)
    apiserver.faults.append(Fault(delay=HUNG))
    handler = handler_for(runtime)

    admissions = asyncio.gather(*(handler.handle(review(ns, "quay.io/acme/web:1")) for ns in namespaces))
    responses = await asyncio.wait_for(admissions, BOUND)  # unbounded queued calls would wait out the hung ones

    assert all(injected(r) == ["quay-pull"] and warnings(r) for r in responses)
    budget_ended = [
        any(re.search(ended_by_the_budget(ns, 0.4), w) for w in warnings(r))
        for ns, r in zip(namespaces, responses, strict=True)
    ]
    assert all(budget_ended), [warnings(r) for r in responses]


async def test_a_fail_closed_rule_denies_when_its_secret_cannot_be_provided(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await cluster.namespace("ops")
    await cluster.secret("ops", "shared", {".dockerconfigjson": json.dumps({"auths": {"ghcr.io": {"auth": HUB}}})})
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False, ensure_timeout=0.3)
    apiserver.faults.append(Fault(method="POST", status=500))

    response = await handler_for(runtime).handle(review("team-a", "ghcr.io/acme/tool:1"))

    assert response["response"]["allowed"] is False
    assert response["response"]["status"]["code"] == 503


async def test_the_warm_path_answers_without_suspending(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    runtime, _ = await admitted_once(cluster, make_runtime)
    quay = POLICY.policy.rules[0]

    # No task, no thread hop, no timer: the coroutine completes on its first step.
    coroutine = runtime.ensurer.ensure(namespace="team-a", secrets={"quay-pull": quay}, dry_run=False)
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)
    assert (done.value.value.failed, done.value.value.warnings) == ([], [])
    assert runtime.stats.ensures["fast"] == 1
