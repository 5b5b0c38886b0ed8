"""The background reconciler: rotations, restores of deleted or edited copies, cleanup."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, MutableSet

from webhook import waits
from webhook.backoff import Backoff
from webhook.bounded import BoundedCache
from webhook.config import KubeSettings
from webhook.kube.errors import ApiError
from webhook.kube.events import EventRecorder
from webhook.kube.objects import Key, KubeObject, namespace_labels
from webhook.observability.stats import Stats
from webhook.policy.matching import CompiledPolicy
from webhook.secrets.desired import is_managed
from webhook.secrets.dockerconfig import SourceError
from webhook.secrets.grants import PolicyFn
from webhook.secrets.sync import CopyWorker, SecretSync, _Deadline

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the background


class Reconciler(CopyWorker):
    """Keeps every copy right: on the leader all of them, elsewhere the handed-off ones.

    ``tracked`` holds every managed copy seen (by the watch or written by us) until it is
    deleted *by us* or its namespace goes away: a copy someone else deletes stays tracked,
    and so is recreated. ``pending`` holds admissions that could not finish in time.
    """

    def __init__(
        self,
        *,
        sync: SecretSync,
        policy: PolicyFn,
        settings: KubeSettings,
        stats: Stats,
        events: EventRecorder,
        is_leader: Callable[[], bool],
        retired: Callable[[], set[str]],
        pending: MutableSet[Key] | None = None,
    ) -> None:
        super().__init__(sync=sync, policy=policy, settings=settings, stats=stats, events=events)
        self._is_leader = is_leader
        self._retired = retired
        self.tracked: set[Key] = set()
        #: Copies owed to admitted Pods; durable (the ledger, any replica finishes them) when given.
        self.pending: MutableSet[Key] = pending if pending is not None else set()
        self._wake = asyncio.Event()
        self._dirty_since: float | None = None
        #: The oldest change not yet applied (kept across failed passes), for ``Stats.current_lag``.
        self._behind_since: float | None = None
        #: How soon a pass that failed is retried (while admissions are handed off).
        self.backoff = Backoff(settings.reconcile_backoff)
        self._retry_in = settings.reconcile_backoff.initial
        self._warned_unmanaged: set[Key] = set()
        self._failures: BoundedCache[Key, str] = BoundedCache(settings.cache_limits.failures)
        self.passes = 0

    def notify(self) -> None:
        """Something changed: run a pass soon. Call on the event loop."""
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
            self._stats.behind(self._behind_since or self._dirty_since)
        self._wake.set()

    def handoff(self, key: Key) -> None:
        self.pending.add(key)
        self.notify()

    def secret_changed(self, key: Key, after: KubeObject | None) -> None:
        if after is not None and is_managed(after):
            self.tracked.add(key)
            self._warned_unmanaged.discard(key)
        self.notify()

    async def run(self) -> None:
        """Passes on watch events (debounced), on retries and every ``resync_seconds``, until cancelled."""
        await self.run_pass()
        while True:
            timeout = self._settings.resync_seconds
            if self.pending:
                timeout = min(timeout, self._retry_in)
            try:
                await waits.wait_for(self._wake.wait(), timeout=timeout)
            except TimeoutError:
                if self._dirty_since is None:
                    self._dirty_since = time.monotonic()
            self._wake.clear()
            await asyncio.sleep(self._settings.debounce)
            try:
                clean = await self.run_pass()
            except Exception:
                # A bug must not end reconciliation for the life of the process.
                log.exception("reconcile pass failed")
                self._stats.error("internal")
                clean = False
            if clean:
                self.backoff.reset()
                self._retry_in = self.backoff.settings.initial
            else:
                self._retry_in = self.backoff.failure()

    async def run_pass(self) -> bool:
        """One pass over every copy we know of; True when nothing failed."""
        dirty_since, self._dirty_since = self._dirty_since, None
        self._behind_since = self._behind_since or dirty_since
        self._wake.clear()
        leader = self._is_leader()
        policy = self._policy()
        keys = set(self.pending)
        if leader:
            for name in self._sync.grants.managed_names(policy) | self._retired():
                for key, obj in self._sync.secrets.named(name):
                    if is_managed(obj):
                        self.tracked.add(key)
            keys |= self.tracked
        semaphore = asyncio.Semaphore(self._settings.reconcile_concurrency)

        async def one(key: Key) -> bool:
            async with semaphore:
                return await self._reconcile(key, policy, leader)

        results = await asyncio.gather(*(one(key) for key in sorted(keys)))
        clean = all(results)
        self.passes += 1
        lag = time.monotonic() - dirty_since if dirty_since is not None else None
        self._stats.reconciled(lag=lag, clean=clean and leader)
        # Caught up only when this pass went through and nothing new came in meanwhile.
        if clean and self._dirty_since is None:
            self._behind_since = None
        self._stats.behind(self._behind_since or self._dirty_since)
        if keys:
            log.debug("reconcile pass: %d copies, %s", len(keys), "clean" if clean else "with errors")
        return clean

    def _log_failure(self, key: Key, kind: str, message: str) -> None:
        """WARNING when a copy starts failing (or fails differently), DEBUG while it keeps failing alike."""
        level = logging.DEBUG if self._failures.get(key) == kind else logging.WARNING
        self._failures[key] = kind
        log.log(level, "%s", message)

    async def _reconcile(self, key: Key, policy: CompiledPolicy, leader: bool) -> bool:
        namespace, name = key
        deadline = _Deadline(self._settings.request_timeout)
        namespaces = self._sync.namespaces
        try:
            ns_obj = namespaces.get(namespace)
            if ns_obj is None:  # not (yet) seen by the watch: ask, never conclude from silence
                ns_obj = await namespaces.fetch(namespace, timeout=self._settings.request_timeout)
            if ns_obj is None or (ns_obj.get("status") or {}).get("phase") == "Terminating":
                # Gone or going: its Secrets go with it; nothing to create or clean up.
                self.tracked.discard(key)
                self.pending.discard(key)
                return True
            labels = namespace_labels(ns_obj)
            grant = self._sync.grants.grant_for(policy, namespace, name, labels)
            known, existing = self._sync.secrets.lookup(namespace, name)
            if grant is None:
                if leader and self._settings.cleanup and known and existing is not None and is_managed(existing):
                    await self._sync.delete(existing, deadline=deadline)
                self.tracked.discard(key)
                self.pending.discard(key)
                return True
            if not leader and key not in self.pending:
                return True
            desired = await self._sync.desired(namespace, name, grant, deadline)
            outcome = await self._sync.converge(desired, deadline=deadline, dry_run=False)
        except SourceError as exc:
            self._stats.error(exc.reason)
            self._events.warn(namespace=namespace, secret=name, reason=exc.reason, message=f"Secret {name}: {exc}")
            self._log_failure(key, exc.reason, f"Secret {namespace}/{name} not reconciled: {exc}")
            return False
        except ApiError as exc:
            self._stats.error(exc.kind)
            self._log_failure(key, exc.kind, f"Secret {namespace}/{name} not reconciled: {exc}")
            if key in self.pending:
                self._events.warn(
                    namespace=namespace,
                    secret=name,
                    reason="SecretNotProvided",
                    message=f"Secret {name} could not be provided: {exc}; retrying",
                )
            return False
        self.pending.discard(key)
        self._failures.pop(key, None)
        if outcome == "unmanaged":
            self.tracked.discard(key)
            if key not in self._warned_unmanaged:
                self._warned_unmanaged.add(key)
                log.warning("Secret %s/%s exists and is not managed by pullsecret-injector: left untouched", *key)
        else:
            self.tracked.add(key)
        return True


