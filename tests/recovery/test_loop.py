"""Fail-open recovery's loop against the kmock emulator over real HTTP: the deletion budget outlives a restart.

The budget (``max_per_owner`` deletions of one controller's Pods per ``window_seconds``) is
what keeps a webhook that cannot fix a Pod from deleting it for ever. Kept in memory only,
a replica in a crash loop, or a new leader, started with a full budget; now every deletion
is in the ownership ledger ConfigMap before the Pod is deleted. The clocks are injected:
no test sleeps through a window. The decision itself is table-tested in tests/test_recovery.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import pytest

from tests.conftest import FAST_SETTINGS
from tests.kube_fixtures import Apiserver, Cluster, Fault, client_configuration
from tests.test_recovery import OWNER, POLICY, pod
from webhook.config import ControlSettings, KubeSettings, RecoverySettings
from webhook.kube.client import KubeApi, build_api_client
from webhook.kube.control import ControlApi
from webhook.kube.errors import ApiForbidden, ApiTimeout
from webhook.kube.ledger import LedgerStore
from webhook.kube.pods import PodApi
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats
from webhook.recovery.loop import DELETED, GAVE_UP, FailOpenRecovery
from webhook.runtime import build_runtime_from_configuration
from webhook.secrets import ledger as lg

PODS = kmock.resource("", "v1", "pods")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
LEDGER = "psi-ledger"
NAMESPACE = "team-a"
RS_UID = str(OWNER["uid"])
T0 = 1_764_547_200.0  # 2025-12-01T00:00:00Z
RECOVERY = RecoverySettings(enabled=True, grace_seconds=0, interval=1, max_per_owner=3, window_seconds=3600)
KUBE = KubeSettings(**{**FAST_SETTINGS, "identity": "replica-1", "ledger_configmap": LEDGER})


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Replica:
    """What a replica's recovery needs, on its own clients: a restart is a new ``Replica`` on the same ledger."""

    def __init__(self, host: str, *, wall: Callable[[], float], ledger: bool = True) -> None:
        configuration = client_configuration(host)
        self.control = ControlApi(build_api_client(configuration=configuration, pool_size=2))
        self.events_api = KubeApi(build_api_client(configuration=configuration, pool_size=2))
        self.pods = PodApi(build_api_client(configuration=configuration, pool_size=2))
        self.runner = Runner(2)
        self.ledger = (
            LedgerStore(
                api=self.control,
                runner=self.runner,
                settings=ControlSettings(),
                kube=KUBE,
                stats=Stats(),
            )
            if ledger
            else None
        )
        self.recovery = FailOpenRecovery(
            pods=self.pods,
            events_api=self.events_api,
            runner=self.runner,
            policy=lambda: POLICY,
            namespace=lambda name: None,
            is_leader=lambda: True,
            settings=RECOVERY,
            kube=KUBE,
            stats=Stats(),
            wall_clock=wall,
            ledger=self.ledger,
        )

    async def start(self) -> Replica:
        """As the runtime starts: one read of the ledger, then its watch."""
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.load)
            self.ledger.watch.start()
        return self

    async def stop(self) -> None:
        if self.ledger is not None:
            watch = self.ledger.watch.stop()
            await asyncio.to_thread(watch.join, 2.0)
        self.runner.shutdown()
        for api in (self.control, self.events_api, self.pods):
            api.close()


@pytest.fixture
async def replicas(apiserver: Apiserver, api_host: str) -> AsyncIterator[Callable[..., Replica]]:
    for resource in (PODS, CONFIGMAPS):
        apiserver.resources[resource] = kmock.ResourceInfo()
    made: list[Replica] = []

    def make(**options: Any) -> Replica:
        made.append(Replica(api_host, **options))
        return made[-1]

    yield make
    for replica in made:
        with contextlib.suppress(Exception):
            await replica.stop()


async def stuck_pod(cluster: Cluster, name: str, uid: str) -> None:
    """A Pod of the ReplicaSet admitted fail-open: no pull secret, in ImagePullBackOff."""
    body = pod()
    body["metadata"].update(name=name, uid=uid)
    await cluster._send("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body)


def pod_exists(apiserver: Apiserver, name: str) -> bool:
    key = (PODS, NAMESPACE, name)
    return key in apiserver.objects and not apiserver.objects[key].deleted


def ledger_in_cluster(apiserver: Apiserver) -> dict[str, str]:
    key = (CONFIGMAPS, KUBE.namespace, LEDGER)
    if key not in apiserver.objects or apiserver.objects[key].deleted:
        return {}
    data: dict[str, str] = apiserver.objects[key].raw.get("data") or {}
    return data


def deletions_in_cluster(apiserver: Apiserver) -> dict[str, list[int]]:
    found: dict[str, list[int]] = json.loads(ledger_in_cluster(apiserver).get("recovery-deletions") or "{}")
    return found


def reasons(apiserver: Apiserver) -> list[str]:
    return [str(event.get("reason")) for event in apiserver.events(NAMESPACE)]


async def test_a_restarted_replica_does_not_refill_the_budget_until_the_window_has_passed(
    apiserver: Apiserver, cluster: Cluster, replicas: Callable[..., Replica]
) -> None:
    wall = Clock(T0)
    first = await replicas(wall=wall).start()
    for i in range(3):
        await stuck_pod(cluster, f"web-{i}", f"pod-uid-{i}")
        await first.recovery.look()
        assert not pod_exists(apiserver, f"web-{i}"), f"Pod {i + 1} of 3 is within the budget"
        wall.now += 60
    # Each deletion was written before its Pod went: the controller's uid and the second, nothing else.
    assert deletions_in_cluster(apiserver) == {RS_UID: [int(T0), int(T0) + 60, int(T0) + 120]}
    await first.stop()

    # The replica restarts (or another one takes the lead): same ledger, nothing in memory.
    wall.now = T0 + 600
    second = await replicas(wall=wall).start()
    assert second.recovery.deletions == {}
    await stuck_pod(cluster, "web-3", "pod-uid-3")
    await second.recovery.look()
    assert pod_exists(apiserver, "web-3"), "the budget spent before the restart must still count"
    assert reasons(apiserver) == [DELETED, DELETED, DELETED, GAVE_UP]
    await second.recovery.look()  # looking again changes nothing, and reports once
    assert pod_exists(apiserver, "web-3")
    assert reasons(apiserver).count(GAVE_UP) == 1

    wall.now = T0 + 3600 - 1  # the oldest of the three is still within the window
    await second.recovery.look()
    assert pod_exists(apiserver, "web-3")

    wall.now = T0 + 3600  # the oldest has left it: one deletion is allowed again
    await second.recovery.look()
    assert not pod_exists(apiserver, "web-3")
    assert reasons(apiserver)[-1] == DELETED
    # Pruned when written: the deletion out of the window is gone, at most max_per_owner are left.
    assert deletions_in_cluster(apiserver) == {RS_UID: [int(T0) + 60, int(T0) + 120, int(T0) + 3600]}


async def test_without_a_ledger_the_budget_is_kept_in_memory_as_before(
    apiserver: Apiserver, cluster: Cluster, replicas: Callable[..., Replica]
) -> None:
    wall = Clock(T0)
    only = await replicas(wall=wall, ledger=False).start()
    for i in range(4):
        await stuck_pod(cluster, f"web-{i}", f"pod-uid-{i}")
        await only.recovery.look()
        wall.now += 60
    assert [pod_exists(apiserver, f"web-{i}") for i in range(4)] == [False, False, False, True]
    assert only.recovery.deletions == {RS_UID: [int(T0), int(T0) + 60, int(T0) + 120]}
    assert ledger_in_cluster(apiserver) == {}
    wall.now = T0 + 120 + 3600
    await only.recovery.look()
    assert not pod_exists(apiserver, "web-3")


async def test_a_pod_is_not_deleted_while_its_deletion_cannot_be_written_to_the_ledger(
    apiserver: Apiserver, cluster: Cluster, replicas: Callable[..., Replica]
) -> None:
    fault = Fault(path=r"/api/v1/namespaces/[^/]+/configmaps.*", method="POST", status=500)
    apiserver.faults.append(fault)
    replica = await replicas(wall=Clock(T0)).start()
    await stuck_pod(cluster, "web-0", "pod-uid-0")
    await replica.recovery.look()
    assert fault.hits >= 1
    assert pod_exists(apiserver, "web-0"), "a deletion the budget does not know of must not happen"
    assert replica.ledger is not None
    assert replica.ledger.current().deletions == (), "the spent budget was given back"
    assert replica.recovery.deletions == {}

    apiserver.faults.remove(fault)  # the API takes the write again: the next look deletes it
    await replica.recovery.look()
    assert not pod_exists(apiserver, "web-0")
    assert deletions_in_cluster(apiserver) == {RS_UID: [int(T0)]}


async def test_the_runtime_gives_its_recovery_the_ledger(
    apiserver: Apiserver, cluster: Cluster, api_host: str, replicas: Callable[..., Replica]
) -> None:
    """The recovery ``serve`` builds counts what another process wrote (the real wall clock here)."""
    earlier = await replicas(wall=time.time).start()
    assert earlier.ledger is not None
    for _ in range(3):
        earlier.ledger.record(lg.pod_deleted(RS_UID, time.time(), window=3600, keep=3))
    assert await earlier.ledger.flush()
    await earlier.stop()

    control = ControlApi(build_api_client(configuration=client_configuration(api_host), pool_size=2))
    runner = Runner(2)
    ledger = LedgerStore(
        api=control,
        runner=runner,
        settings=ControlSettings(),
        kube=KUBE,
        stats=Stats(),
    )
    runtime = build_runtime_from_configuration(
        configuration=client_configuration(api_host),
        policy=lambda: POLICY,
        settings=KUBE,
        elect=False,
        ledger=ledger,
        recovery=RECOVERY,
    )
    try:
        await runtime.start()
        await stuck_pod(cluster, "web-0", "pod-uid-0")
        await runtime.recovery.look()
        assert pod_exists(apiserver, "web-0")
        assert reasons(apiserver) == [GAVE_UP]
    finally:
        await runtime.close()
        runner.shutdown()
        control.close()


async def test_no_pod_is_deleted_before_the_ledger_has_been_read(
    apiserver: Apiserver, cluster: Cluster, replicas: Callable[..., Replica]
) -> None:
    """An unread ledger is empty only because it is unread: not a full budget."""
    replica = replicas(wall=Clock(T0))  # not started: neither the start-up read nor the watch
    await stuck_pod(cluster, "web-0", "pod-uid-0")
    await replica.recovery.look()
    assert pod_exists(apiserver, "web-0")
    await replica.start()
    await replica.recovery.look()
    assert not pod_exists(apiserver, "web-0")


@pytest.mark.parametrize(
    ("fault", "error", "counted"),
    [
        pytest.param(Fault(method="DELETE", path=".*/pods/.*", status=403), ApiForbidden, [], id="refused-given-back"),
        pytest.param(
            Fault(method="DELETE", path=".*/pods/.*", delay=KUBE.request_timeout + 1, times=1),
            ApiTimeout,
            [int(T0)],
            id="timed-out-may-have-happened-stays-counted",
        ),
    ],
)
async def test_a_delete_that_fails_gives_the_budget_back_only_when_it_certainly_did_not_happen(
    apiserver: Apiserver,
    cluster: Cluster,
    replicas: Callable[..., Replica],
    fault: Fault,
    error: type[Exception],
    counted: list[int],
) -> None:
    apiserver.faults.append(fault)
    replica = await replicas(wall=Clock(T0)).start()
    assert replica.ledger is not None
    await stuck_pod(cluster, "web-0", "pod-uid-0")
    with pytest.raises(error):
        await replica.recovery.look()
    assert await replica.ledger.flush()
    assert deletions_in_cluster(apiserver).get(RS_UID, []) == counted
    assert replica.recovery.owner_deletions(RS_UID) == counted
