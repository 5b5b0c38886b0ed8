"""Shared fixtures: a Kubernetes API emulator on loopback and runtimes pointed at it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import pytest

from tests.kube_fixtures import EVENTS, LEASES, NAMESPACES, SECRETS, Apiserver, Cluster, client_configuration
from webhook.config import KubeSettings
from webhook.policy.matching import CompiledPolicy
from webhook.runtime import KubeRuntime, build_runtime_from_configuration

#: Production defaults shrunk so that tests take seconds, not minutes.
FAST_SETTINGS: dict[str, Any] = {
    "namespace": "pullsecret-system",
    "ensure_timeout": 1.0,
    "lease_duration": 2.0,
    "renew_deadline": 1.5,
    "retry_period": 0.1,
    "request_timeout": 2.0,
    "connect_timeout": 1.0,
    "watch_timeout": 30.0,
    "debounce": 0.05,
    "sync_timeout": 5.0,
    "resync_seconds": 30.0,
}
_identities = itertools.count(1)


class RuntimeFactory:
    """Builds, starts and (by default) runs ``KubeRuntime``s against one API; stops them all at teardown."""

    def __init__(self, host: str) -> None:
        self._host = host
        self._tasks: dict[KubeRuntime, asyncio.Task[None]] = {}
        self._runtimes: list[KubeRuntime] = []

    async def __call__(
        self,
        policy: CompiledPolicy | Callable[[], CompiledPolicy],
        *,
        host: str | None = None,
        elect: bool = True,
        run: bool = True,
        **settings: Any,
    ) -> KubeRuntime:
        """``elect=False``: never the leader (no reconciler beyond handed-off work)."""
        policy_fn: Callable[[], CompiledPolicy] = policy if callable(policy) else (lambda: policy)
        options = {**FAST_SETTINGS, "identity": f"replica-{next(_identities)}", **settings}
        runtime = build_runtime_from_configuration(
            configuration=client_configuration(host or self._host),
            policy=policy_fn,
            settings=KubeSettings(**options),
            elect=elect,
        )
        self._runtimes.append(runtime)
        await runtime.start()
        if run:
            self._tasks[runtime] = asyncio.create_task(runtime.run())
        return runtime

    async def stop(self, runtime: KubeRuntime) -> None:
        """What SIGTERM does to a replica: its background jobs are cancelled (the Lease released)."""
        task = self._tasks.pop(runtime, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runtime.close()

    async def stop_all(self) -> None:
        for runtime in list(self._runtimes):
            await self.stop(runtime)


@pytest.fixture
async def apiserver() -> AsyncIterator[Apiserver]:
    """kmock's Kubernetes emulator (with our additions) listening on 127.0.0.1."""
    async with Apiserver() as api, kmock.Server(api):
        # kmock answers 404 for a list of a resource it has never stored an object of:
        # declare the ones we use, as a real API server serves them all from the start.
        for resource in (SECRETS, NAMESPACES, EVENTS, LEASES):
            api.resources[resource] = kmock.ResourceInfo()
        try:
            yield api
        finally:
            api.release_faults()  # a hung request must not hold up the server's shutdown


@pytest.fixture
def api_host(apiserver: Apiserver) -> str:
    return str(apiserver.url).rstrip("/")


@pytest.fixture
def cluster(apiserver: Apiserver) -> Cluster:
    return Cluster(apiserver)


@pytest.fixture
async def make_runtime(apiserver: Apiserver, api_host: str) -> AsyncIterator[RuntimeFactory]:
    """Runtimes against the emulator, all stopped at teardown (a hung request released first)."""
    factory = RuntimeFactory(api_host)
    yield factory
    apiserver.release_faults()
    await factory.stop_all()
