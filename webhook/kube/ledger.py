"""The ownership ledger in the cluster: a ConfigMap the webhook owns, watched and patched.

Every replica watches it (so work one replica owes, any replica sees) and writes to it
through a :class:`~webhook.secrets.ledger.Journal`: the changes are re-applied to the
freshest ledger on each attempt of a merge patch guarded by ``metadata.resourceVersion``,
so concurrent writers (the leader recording copies, any replica recording a debt) never
lose each other's changes. The ledger holds names only, never Secret data.

:class:`DurablePending` is the reconciler's ``pending`` set made durable: a key added on
one replica is in the ledger before the admission that owes it is answered (or as soon as
the API lets it), and any replica that settles it removes it there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, MutableSet
from types import MappingProxyType
from typing import Any, Final

from webhook.config import ControlSettings, KubeSettings
from webhook.kube.control import ControlApi
from webhook.kube.errors import ApiConflict, ApiError
from webhook.kube.objects import Key, KubeObject
from webhook.kube.policywatch import ConfigMapWatch
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats
from webhook.secrets import ledger as lg
from webhook.waits import wait_for

log = logging.getLogger(__name__)

LABELS: Final = MappingProxyType({
    "app.kubernetes.io/managed-by": "pullsecret-injector",
    "app.kubernetes.io/component": "ownership-ledger",
})


class LedgerStore:
    """The ledger ConfigMap: ``current()`` from the watch, ``record()`` + a background writer."""

    ATTEMPTS: Final = 6

    def __init__(
        self,
        *,
        api: ControlApi,
        runner: Runner,
        settings: ControlSettings,
        kube: KubeSettings,
        stats: Stats,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._api = api
        self._runner = runner
        self.settings = settings
        #: The ledger ConfigMap: ``kube.ledger_configmap`` in ``kube.namespace``.
        self.namespace, self.name = kube.namespace, kube.ledger_configmap
        self._timeout = kube.request_timeout
        #: Called from the watch thread when the ledger changed (the runtime hops onto its loop).
        self.on_change = on_change
        self.watch = ConfigMapWatch(
            api=api,
            namespace=kube.namespace,
            name=kube.ledger_configmap,
            settings=kube,
            stats=stats,
            on_change=lambda obj: self._changed(),
        )
        self._journal = lg.Journal()
        self._wake = asyncio.Event()
        #: One flush at a time, so that ``flush()`` returning True means every change recorded
        #: before the call is written, even one a concurrent flush (the writer's) had taken.
        self._flushing = asyncio.Lock()
        self._decoded: tuple[str, lg.Ledger] = ("", lg.Ledger())
        #: Ledger read at start-up (before the watch synced), or written by us since.
        self._loaded: lg.Ledger | None = None
        self.writes = 0
        self.conflicts = 0

    # reading --------------------------------------------------------------------------

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def current(self) -> lg.Ledger:
        """The ledger as last seen (watch, else the start-up read), with our unwritten changes applied."""
        obj = self.watch.current()
        if obj is not None:
            version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if not version or version != self._decoded[0]:
                self._decoded = (version, lg.Ledger.decode(obj.get("data")))
            base = self._decoded[1]
        else:
            base = self._loaded or lg.Ledger()
        return lg.apply(base, self._journal.changes) if self._journal else base

    @property
    def synced(self) -> bool:
        return self.watch.synced

    @property
    def known(self) -> bool:
        """Read from the API at least once (the watch, the start-up read or a write of ours).

        Until then ``current()`` is an empty ledger that only means "not read yet": fail-open
        recovery must not take it for an unspent budget.
        """
        return self.watch.synced or self.watch.current() is not None or self._loaded is not None

    def load(self) -> lg.Ledger:
        """One blocking GET (start-up, before the loop runs); an empty ledger when there is none yet."""
        obj = self._api.get_configmap(self.namespace, self.name, timeout=self._timeout)
        self._loaded = lg.Ledger.decode(obj.get("data")) if obj is not None else lg.Ledger()
        return self._loaded

    # writing --------------------------------------------------------------------------

    def record(self, change: lg.Change) -> None:
        """Queue ``change``; the writer applies it soon. Call on the event loop."""
        self._journal.add(change)
        self._wake.set()

    async def flush(self) -> bool:
        """Write every queued change; False (changes kept for the next try) when the API refused."""
        async with self._flushing:
            taken = self._journal.take()
            if not taken:
                return True
            try:
                await self._write(taken)
            except ApiError as exc:
                self._journal.restore(taken)
                log.warning("ownership ledger not written (%s), retrying", exc)
                return False
            except BaseException:
                self._journal.restore(taken)
                raise
            return True

    async def _write(self, changes: list[lg.Change]) -> None:
        namespace, name, timeout = self.namespace, self.name, self._timeout
        api = self._api
        live: KubeObject | None = self.watch.current()
        fresh = live is None  # nothing cached: read it
        for _ in range(self.ATTEMPTS):
            if fresh:
                live = await self._runner(
                    lambda t: api.get_configmap(namespace, name, timeout=t), timeout=timeout, action="get the ledger"
                )
            fresh = True
            base = lg.Ledger.decode(live.get("data")) if live is not None else lg.Ledger()
            new = lg.apply(base, changes)
            if live is not None and new == base:
                return
            since = self.watch.mark()
            try:
                if live is None:
                    body = {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
                        "data": new.encode(),
                    }
                    written = await self._runner(
                        lambda t: api.create_configmap(namespace, body, timeout=t),  # noqa: B023
                        timeout=timeout,
                        action="create the ledger",
                    )
                else:
                    version = str((live.get("metadata") or {}).get("resourceVersion") or "")
                    patch: dict[str, Any] = {"data": new.encode()}
                    if version:
                        patch["metadata"] = {"resourceVersion": version}
                    written = await self._runner(
                        lambda t: api.patch_configmap(namespace, name, patch, timeout=t),  # noqa: B023
                        timeout=timeout,
                        action="update the ledger",
                    )
            except ApiError as exc:
                if exc.kind in ("conflict", "not_found"):  # someone else wrote first: re-read, re-apply
                    self.conflicts += 1
                    continue
                raise
            self.writes += 1
            self._loaded = new
            self.watch.put(written, since=since)
            return
        raise ApiConflict(action="update the ledger: it keeps changing")

    async def run(self) -> None:
        """Write queued changes (debounced, retried with backoff) until cancelled; a last flush at the end."""
        delay = 0.5
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.sleep(self.settings.ledger_debounce)
                if await self.flush():
                    delay = 0.5
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                self._wake.set()
        finally:
            if self._journal:
                try:
                    await wait_for(self.flush(), timeout=2.0)
                except (TimeoutError, asyncio.CancelledError, ApiError):
                    log.info("ownership ledger: last changes not written at shutdown")


class DurablePending(MutableSet[Key]):
    """The reconciler's set of owed copies: this replica's, plus every debt in the ledger."""

    def __init__(self, ledger: LedgerStore) -> None:
        self._ledger = ledger
        self._local: set[Key] = set()

    def _all(self) -> set[Key]:
        return self._local | set(self._ledger.current().pending)

    def __contains__(self, key: object) -> bool:
        return key in self._local or key in self._ledger.current().pending

    def __iter__(self) -> Iterator[Key]:
        return iter(sorted(self._all()))

    def __len__(self) -> int:
        return len(self._all())

    def add(self, key: Key) -> None:
        if key not in self._local:
            self._local.add(key)
        if key not in self._ledger.current().pending:
            self._ledger.record(lg.owe([key]))

    def discard(self, key: Key) -> None:
        self._local.discard(key)
        if key in self._ledger.current().pending:
            self._ledger.record(lg.settle([key]))

    def update(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.add(key)


__all__ = ["LABELS", "DurablePending", "LedgerStore"]
