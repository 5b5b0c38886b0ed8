"""Objects by key under a lock, filled by one list-watch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from webhook.kube.objects import ChangeFn, Key, KubeObject, object_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Mark:
    """A moment in one store's history: taken before a write, handed to :meth:`Store.put`."""

    store: Store
    changes: int


class Store:
    """Objects by key under a lock, filled by one :class:`ListWatch`; tells ``on_change``.

    Writers also write through (:meth:`put`, :meth:`forget`) what the API just answered, so
    the next lookup need not wait for the watch event. Such a write is applied only if the
    store has not changed since the writer's :meth:`mark`: otherwise the watch may already
    have shown something newer (our own write's event followed by a deletion, say), and the
    answer in hand must not overwrite it. Skipping costs only the head start: the write's
    own watch event follows.
    """

    def __init__(
        self,
        *,
        on_change: ChangeFn | None = None,
        slim: Callable[[KubeObject], KubeObject] = dict,
        only_name: str | None = None,
    ) -> None:
        self._objects: dict[Key, KubeObject] = {}
        self._lock = threading.Lock()
        self._on_change = on_change
        self._slim = slim
        # The field selector, enforced on our side as well: an emulator or a proxy that
        # ignores it must not fill the cache with Secrets we never asked for.
        self._only_name = only_name
        #: Changes applied so far (lists, events, write-throughs): what a :class:`Mark` holds.
        self._changes = 0
        self.synced = threading.Event()

    def _wanted(self, key: Key) -> bool:
        return self._only_name is None or key[1] == self._only_name

    def get(self, key: Key) -> KubeObject | None:
        with self._lock:
            return self._objects.get(key)

    def items(self) -> list[tuple[Key, KubeObject]]:
        with self._lock:
            return list(self._objects.items())

    def replace(self, objects: Iterable[KubeObject]) -> None:
        """A fresh list: the new truth, with the differences reported as changes."""
        fresh: dict[Key, KubeObject] = {}
        self.slim_into(fresh, objects)
        self.install(fresh)

    def slim_into(self, fresh: dict[Key, KubeObject], objects: Iterable[Any]) -> None:
        """Add the slim form of the wanted ``objects`` (one page of a list) to ``fresh``.

        Only the slim objects are kept: the page as decoded can be freed right after.
        """
        slim, wanted = self._slim, self._wanted
        for obj in objects:
            if isinstance(obj, dict) and wanted(key := object_key(obj)):
                fresh[key] = slim(obj)

    def install(self, fresh: dict[Key, KubeObject]) -> None:
        """Make ``fresh`` (filled by :meth:`slim_into`) the new truth; the differences are changes."""
        with self._lock:
            old = self._objects
            self._objects = fresh
            self._changes += 1
        for key in old.keys() | fresh.keys():
            before, after = old.get(key), fresh.get(key)
            if before != after:
                self._notify(key, before, after)
        self.synced.set()

    def apply(self, event_type: str, obj: KubeObject) -> None:
        """One watch event."""
        self._apply(event_type, obj, None)

    def mark(self) -> Mark:
        """Now, for a :meth:`put` or :meth:`forget` after a call: take it before the call starts."""
        with self._lock:
            return Mark(self, self._changes)

    def put(self, obj: KubeObject, *, since: Mark) -> bool:
        """Write-through of an object we just wrote or read, unless the store changed ``since``."""
        return self._apply("MODIFIED", obj, since)

    def forget(self, key: Key, *, since: Mark) -> bool:
        """Write-through of a deletion we just made, unless the store changed ``since``."""
        return self._apply("DELETED", {"metadata": {"namespace": key[0], "name": key[1]}}, since)

    def _apply(self, event_type: str, obj: KubeObject, since: Mark | None) -> bool:
        key = object_key(obj)
        if not self._wanted(key):
            return False
        with self._lock:
            if since is not None and (since.store is not self or since.changes != self._changes):
                return False
            self._changes += 1
            before = self._objects.get(key)
            if event_type == "DELETED":
                after = None
                self._objects.pop(key, None)
            else:
                after = self._slim(obj)
                self._objects[key] = after
        if before != after:
            self._notify(key, before, after)
        return True

    def _notify(self, key: Key, before: KubeObject | None, after: KubeObject | None) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(key, before, after)
        except Exception:
            log.exception("change handler failed")
