"""The ledger's writer (webhook.kube.ledger.LedgerStore) against the kmock emulator over real HTTP."""

from __future__ import annotations

import asyncio
import json

import kmock

from tests.conftest import FAST_SETTINGS
from tests.kube_fixtures import Apiserver, Fault, client_configuration
from webhook.config import ControlSettings, KubeSettings
from webhook.kube.client import build_api_client
from webhook.kube.control import ControlApi
from webhook.kube.ledger import LedgerStore
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats
from webhook.secrets import ledger as lg

CONFIGMAPS = kmock.resource("", "v1", "configmaps")


async def test_flush_returns_once_what_a_concurrent_flush_had_taken_is_written(
    apiserver: Apiserver, api_host: str
) -> None:
    """Fail-open recovery deletes a Pod only once ``flush()`` said its deletion is written.

    The background writer may have taken that change a moment before and still be writing it
    (or fail to): a second flush must wait for it, not answer True on an empty journal.
    """
    apiserver.resources[CONFIGMAPS] = kmock.ResourceInfo()
    apiserver.faults.append(Fault(method="POST", path=r".*/configmaps", delay=0.5))
    kube = KubeSettings(**{**FAST_SETTINGS, "ledger_configmap": "l"})
    api = ControlApi(build_api_client(configuration=client_configuration(api_host), pool_size=2))
    runner = Runner(2)
    store = LedgerStore(api=api, runner=runner, settings=ControlSettings(), kube=kube, stats=Stats())
    try:
        store.record(lg.pod_deleted("rs-uid", 1_764_547_200, window=3600, keep=3))
        writer = asyncio.create_task(store.flush())  # takes the change, then waits on the slow create
        await asyncio.sleep(0.1)
        assert await store.flush()
        written = apiserver.objects[(CONFIGMAPS, kube.namespace, "l")].raw["data"]
        assert json.loads(written["recovery-deletions"]) == {"rs-uid": [1_764_547_200]}
        assert await writer
    finally:
        runner.shutdown()
        api.close()
