"""The ownership ledger's writers racing on the real API server (resourceVersion-guarded patches).

Three stores (three replicas) record debts at once; every one of them must be in the
ledger afterwards: a 409 re-reads and re-applies, never overwrites. kmock has no
resourceVersion, so this can only be shown here.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from webhook.config import ControlSettings, KubeSettings
from webhook.kube.client import build_api_client, load_configuration
from webhook.kube.control import ControlApi
from webhook.kube.ledger import LedgerStore
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats
from webhook.secrets import ledger as lg

from .controlplane import ControlPlane


async def test_concurrent_writers_keep_each_others_changes(control_plane: ControlPlane, namespace: str) -> None:
    configuration = load_configuration(kubeconfig=control_plane.kubeconfig_path)
    name = f"ledger-{uuid.uuid4().hex[:6]}"
    stores: list[tuple[LedgerStore, ControlApi, Runner]] = []
    for _ in range(3):
        api = ControlApi(build_api_client(configuration=configuration, pool_size=4))
        runner = Runner(2)
        kube = KubeSettings(namespace=namespace, ledger_configmap=name, request_timeout=5.0)
        stores.append(
            (LedgerStore(api=api, runner=runner, settings=ControlSettings(), kube=kube, stats=Stats()), api, runner)
        )
    try:
        for i, (store, _, _) in enumerate(stores):
            for j in range(5):
                store.record(lg.owe([(f"team-{i}", f"s{j}")]))
        flushed: list[Any] = await asyncio.gather(*(store.flush() for store, _, _ in stores))
        assert all(flushed)
        final = stores[0][1].get_configmap(namespace, name, timeout=5.0)
        assert final is not None
        ledger = lg.Ledger.decode(final.get("data"))
        assert ledger.pending == {(f"team-{i}", f"s{j}") for i in range(3) for j in range(5)}
        conflicts = sum(store.conflicts for store, _, _ in stores)
        print(f"\nledger: 3 concurrent writers, {conflicts} conflict(s) resolved by re-reading")
    finally:
        for _, api, runner in stores:
            runner.shutdown()
            api.close()
