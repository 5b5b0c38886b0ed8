"""Assembling the control surface: the ownership ledger and, with ``--policy-configmap``, the live policy.

Built before the Kubernetes runtime (the live policy must have a first policy before the
handler exists), then attached to it: the ledger backs the reconciler's debts and the
retired names, the elector decides who writes the status and the ledger's copies.
:mod:`webhook.server` calls three functions, in order: :func:`control_surface`,
:func:`first_policy`, then (once the runtime exists) :func:`attach`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webhook.config import ControlSettings, KubeSettings, Settings
from webhook.kube.client import build_api_client
from webhook.kube.control import ControlApi
from webhook.kube.ledger import LedgerStore
from webhook.kube.livepolicy import LivePolicy
from webhook.kube.runner import Runner
from webhook.observability.logs import redact
from webhook.observability.stats import Stats
from webhook.policy.holder import PolicyHolder

if TYPE_CHECKING:
    from webhook.runtime import KubeRuntime

log = logging.getLogger(__name__)

Job = Callable[[], Coroutine[Any, Any, None]]


class SurfaceError(Exception):
    """A start-up problem of the control surface, reported as one line (exit code 2)."""


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
    *,
    configuration: Any,
    settings: ControlSettings,
    kube: KubeSettings,
    policy_configmap: str | None,
    stats: Stats | None = None,
) -> ControlSurface:
    """The ledger (always, with a cluster) and the live policy (when a ConfigMap is named)."""
    stats = stats or Stats()
    api = ControlApi(build_api_client(configuration=copy.deepcopy(configuration), pool_size=16))
    runner = Runner(4)
    ledger = LedgerStore(api=api, runner=runner, settings=settings, kube=kube, stats=stats)
    live = (
        LivePolicy(api=api, configmap=policy_configmap, settings=settings, kube=kube, stats=stats, ledger=ledger)
        if policy_configmap
        else None
    )
    return ControlSurface(api=api, ledger=ledger, live=live, runner=runner)


def control_surface(settings: Settings) -> ControlSurface:
    """The surface on its own client, from the kubeconfig (or the in-cluster service account)."""
    from kubernetes.config.config_exception import ConfigException

    from webhook.kube.client import load_configuration

    try:
        configuration = load_configuration(kubeconfig=settings.kube.kubeconfig)
    except (ConfigException, OSError) as exc:
        raise SurfaceError(f"cannot configure the Kubernetes client: {redact(str(exc))}") from None
    return build_surface(
        configuration=configuration,
        settings=settings.control,
        kube=settings.kube,
        policy_configmap=settings.policy.configmap,
    )


def first_policy(surface: ControlSurface, *, policy_file: Path | None) -> PolicyHolder | None:
    """The first policy from the ConfigMap through the API; ``None``: serve the ``--policy`` file instead.

    The fallback is only for a ConfigMap that cannot be read at all while a file is mounted:
    an older chart whose RBAC has no ConfigMap access must keep working with a newer image.
    (``surface.live`` is then dropped: the file is the policy.)
    """
    from webhook.kube.livepolicy import StartupError

    if surface.live is None:
        return None
    try:
        holder = surface.live.start_blocking()
    except StartupError as exc:
        if exc.unreadable and policy_file is not None:
            log.warning("policy ConfigMap unreadable (%s): falling back to the file %s", exc, policy_file)
            surface.live = None
            return None
        raise SurfaceError(redact(str(exc))) from None
    if policy_file is not None:
        log.info("--policy-configmap given: the policy is read through the API, %s is not used", policy_file)
    return holder


def attach(
    surface: ControlSurface, runtime: KubeRuntime, *, registry: Any, on_start: list[Job], background: list[Job]
) -> None:
    """The leader writes the status; the metrics show the version; the watch starts with the loop."""
    from webhook.kube.livepolicy import policy_info_metric

    live = surface.live
    if live is None:
        return
    live.is_leader = lambda: runtime.elector.is_leader
    live.retiring = lambda: set(runtime._retired)
    runtime.leadership_listeners.append(lambda _leader: live.wake())
    listener = policy_info_metric(registry)
    live.listeners.append(listener)
    if live.status is not None:
        listener(live.status)

    async def start_watch() -> None:
        live.start()

    on_start.append(start_watch)
    background.append(surface.run)


__all__ = ["ControlSurface", "SurfaceError", "attach", "build_surface", "control_surface", "first_policy"]
