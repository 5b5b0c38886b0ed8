"""Assembling the control surface: the ownership ledger and, with ``--policy-configmap``, the live policy.

Built before the Kubernetes runtime (the live policy must have a first policy before the
handler exists), then attached to it: the ledger backs the reconciler's debts and the
retired names, the elector decides who writes the status and the ledger's copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

from webhook.config import KubeSettings
from webhook.kube.client import build_api_client
from webhook.kube.control import ControlApi, ControlSettings
from webhook.kube.ledger import LedgerStore
from webhook.kube.livepolicy import LivePolicy
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats


@dataclass
class ControlSurface:
    api: ControlApi
    ledger: LedgerStore
    live: LivePolicy | None
    runner: Runner
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def run(self) -> None:
        """The live policy's loop (the ledger's writer runs inside the Kubernetes runtime)."""
        if self.live is None:
            return
        try:
            await self.live.run()
        finally:
            with contextlib.suppress(Exception):
                self.api.close()


def build_surface(
    *, configuration: Any, settings: ControlSettings, kube: KubeSettings, stats: Stats | None = None
) -> ControlSurface:
    """The ledger (always, with a cluster) and the live policy (when a ConfigMap is named)."""
    stats = stats or Stats()
    api = ControlApi(build_api_client(configuration=copy.deepcopy(configuration), pool_size=16))
    runner = Runner(4)
    ledger = LedgerStore(api=api, runner=runner, settings=settings, kube=kube, stats=stats)
    live = (
        LivePolicy(api=api, settings=settings, kube=kube, stats=stats, ledger=ledger)
        if settings.policy_configmap
        else None
    )
    return ControlSurface(api=api, ledger=ledger, live=live, runner=runner)


__all__ = ["ControlSurface", "build_surface"]
