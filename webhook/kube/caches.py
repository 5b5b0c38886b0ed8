"""The watched caches the admission path reads: Secrets by name and Namespaces."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from webhook.bounded import BoundedCache
from webhook.config import KubeSettings
from webhook.kube.client import KubeApi
from webhook.kube.errors import ApiError
from webhook.kube.informer import ListWatch, WatchSet, _watch_timeouts
from webhook.kube.objects import (
    ChangeFn,
    Key,
    KubeObject,
    SecretTarget,
    _slim_namespace,
    _slim_secret,
    namespace_labels,
    object_key,
)
from webhook.kube.runner import Runner
from webhook.kube.store import Mark, Store
from webhook.observability.stats import Stats

log = logging.getLogger(__name__)


class SecretCache:
    """Secrets by ``(namespace, name)``, fed by one by-name watch per :data:`SecretTarget`.

    A lookup says not only what is there but whether the cache *knows*: only a target
    whose first list has completed can answer "absent" without an API call.
    """

    def __init__(self, *, api: KubeApi, settings: KubeSettings, stats: Stats, on_change: ChangeFn | None) -> None:
        self._api = api
        self._settings = settings
        self._stats = stats
        self._on_change = on_change
        self._watches = WatchSet()
        #: Stopped for good (shutdown): see :meth:`sync_targets`.
        self._stopped = False

    def _target_for(self, namespace: str, name: str) -> ListWatch | None:
        watches = self._watches.watches
        return watches.get((None, name)) or watches.get((namespace, name))

    def lookup(self, namespace: str, name: str) -> tuple[bool, KubeObject | None]:
        """``(known, secret)``: ``known`` is False when no synced watch covers the Secret."""
        watch = self._target_for(namespace, name)
        if watch is None or not watch.store.synced.is_set():
            return False, None
        return True, watch.store.get((namespace, name))

    def mark(self, namespace: str, name: str) -> Mark | None:
        """Before a write: the moment :meth:`put`/:meth:`forget` compare with (``None``: nothing caches it)."""
        watch = self._target_for(namespace, name)
        return None if watch is None else watch.store.mark()

    def put(self, obj: KubeObject, *, since: Mark | None) -> None:
        """Write ``obj`` through, unless its watch changed ``since`` (see :class:`~webhook.kube.store.Store`)."""
        namespace, name = object_key(obj)
        watch = self._target_for(namespace, name)
        if watch is not None and since is not None:
            watch.store.put(obj, since=since)

    def forget(self, namespace: str, name: str, *, since: Mark | None) -> None:
        watch = self._target_for(namespace, name)
        if watch is not None and since is not None:
            watch.store.forget((namespace, name), since=since)

    def named(self, name: str) -> list[tuple[Key, KubeObject]]:
        """Every cached Secret called ``name`` (the copies, from the cluster-wide watch)."""
        watch = self._watches.watches.get((None, name))
        return watch.store.items() if watch is not None else []

    def targets(self) -> set[SecretTarget]:
        return set(self._watches.watches)

    def synced(self) -> bool:
        return all(watch.store.synced.is_set() for watch in list(self._watches.watches.values()))

    def sync_targets(self, wanted: set[SecretTarget]) -> None:
        """Start watches for new targets and stop those no longer wanted; nothing once :meth:`stop` ran.

        A watch thread's last event can reach the loop after the shutdown stopped every watch
        (a policy or ledger change that re-targets): started then, the watches would run on,
        with nobody left to stop them.
        """
        if self._stopped:
            return
        # A cluster-wide watch of a name covers that name in every namespace.
        cluster_names = {name for namespace, name in wanted if namespace is None}
        wanted = {(ns, name) for ns, name in wanted if ns is None or name not in cluster_names}
        started: list[ListWatch] = []
        stopped: list[ListWatch] = []
        with self._watches.lock:
            for target in set(self._watches.watches) - wanted:
                stopped.append(self._watches.watches.pop(target))
            for target in wanted - set(self._watches.watches):
                watch = self._new_watch(target)
                self._watches.watches[target] = watch
                started.append(watch)
        for watch in stopped:
            watch.stop()
        for watch in started:
            watch.start()

    def _new_watch(self, target: SecretTarget) -> ListWatch:
        namespace, name = target
        api, settings = self._api, self._settings

        def lister(limit: int | None, continue_: str | None) -> KubeObject:
            return api.list_secrets(name, namespace, timeout=settings.request_timeout, limit=limit, continue_=continue_)

        def watcher(resource_version: str) -> Any:
            server, timeouts = _watch_timeouts(settings)
            return api.watch_secrets(
                name, namespace, resource_version=resource_version, server_timeout=server, timeout=timeouts
            )

        store = Store(on_change=self._on_change, slim=_slim_secret, only_name=name)
        where = f"in {namespace}" if namespace else "cluster-wide"
        return ListWatch(
            name=f"Secrets {name} {where}",
            lister=lister,
            watcher=watcher,
            store=store,
            stats=self._stats,
            page_size=settings.list_page_size or None,
            backoff=settings.watch_backoff,
        )

    def stop(self) -> list[ListWatch]:
        self._stopped = True
        return self._watches.stop_all()


class NamespaceCache:
    """Namespace labels from a cluster-wide Namespace watch; implements ``NamespaceLabels``.

    (After a failed GET the labels of that namespace stay unknown for ``RETRY_AFTER``
    seconds without asking again.)

    A namespace the cache does not know yet (created a moment ago, or the watch is not
    synced) costs one GET bounded by ``timeout``; the answer is cached. When even that
    fails the labels are unknown (``None``) and selector rules simply do not apply: the
    safe direction, since a namespace no rule admits must never receive a Secret.
    """

    RETRY_AFTER: Final = 2.0

    def __init__(
        self, *, api: KubeApi, runner: Runner, settings: KubeSettings, stats: Stats, on_change: ChangeFn | None
    ) -> None:
        self._api = api
        self._runner = runner
        self._settings = settings
        self._stats = stats
        self.store = Store(on_change=on_change, slim=_slim_namespace)
        self._watch: ListWatch | None = None
        #: Namespace -> monotonic time until which a failed lookup is not tried again.
        self._failed: BoundedCache[str, float] = BoundedCache(settings.cache_limits.failed_lookups)

    @property
    def synced(self) -> bool:
        return self.store.synced.is_set()

    def get(self, name: str) -> KubeObject | None:
        return self.store.get(("", name))

    def labels_now(self, namespace: str) -> Mapping[str, str] | None:
        obj = self.get(namespace)
        return None if obj is None else namespace_labels(obj)

    async def labels(self, namespace: str) -> Mapping[str, str] | None:
        obj = self.get(namespace)
        if obj is None:
            if time.monotonic() < self._failed.get(namespace, 0.0):
                return None  # just failed: the API is struggling, do not make every admission wait on it
            try:
                obj = await self.fetch(namespace, timeout=self._settings.ensure_timeout / 4)
            except ApiError as exc:
                self._stats.error(exc.kind)
                self._failed[namespace] = time.monotonic() + self.RETRY_AFTER
                log.info("namespace %s: labels unknown (%s)", namespace, exc.kind)
                return None
        return None if obj is None else namespace_labels(obj)

    async def fetch(self, namespace: str, *, timeout: float) -> KubeObject | None:
        """One bounded GET of a namespace the watch has not shown us (yet); ``None`` if it does not exist."""
        api = self._api
        since = self.store.mark()
        obj = await self._runner(
            lambda t: api.get_namespace(namespace, timeout=t), timeout=timeout, action=f"get Namespace {namespace}"
        )
        if obj is not None:
            self._failed.pop(namespace, None)
            self.store.put(obj, since=since)  # not over a label change or a deletion the watch saw meanwhile
        return obj

    def start(self) -> None:
        api, settings = self._api, self._settings

        def lister(limit: int | None, continue_: str | None) -> KubeObject:
            return api.list_namespaces(timeout=settings.request_timeout, limit=limit, continue_=continue_)

        def watcher(resource_version: str) -> Any:
            server, timeouts = _watch_timeouts(settings)
            return api.watch_namespaces(resource_version=resource_version, server_timeout=server, timeout=timeouts)

        self._watch = ListWatch(
            name="Namespaces",
            lister=lister,
            watcher=watcher,
            store=self.store,
            stats=self._stats,
            page_size=settings.list_page_size or None,
            backoff=settings.watch_backoff,
        )
        self._watch.start()

    def stop(self) -> list[ListWatch]:
        if self._watch is None:
            return []
        self._watch.stop()
        return [self._watch]


