"""Counters and gauges of the Kubernetes side, read by the metrics collector and the tests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any


class Stats:
    """Counters for metrics, as a plain object: :mod:`webhook.observability.metrics` turns them into Prometheus.

    Thread-safe (watch threads count too). Read the attributes, or ``snapshot()`` for a
    consistent copy; or pass callbacks, called after each update (from any thread, so
    they must be thread-safe: prometheus_client's are).

    * ``secret_writes[(operation, result)]``: operation ``create|update|delete``, result
      ``ok``, ``conflict`` (409: another writer won, or the object changed under us),
      ``error`` -> ``on_write(operation, result)``;
    * ``errors[kind]``: API error kinds (``timeout``, ``unavailable``, ``forbidden``,
      ``server_error``, ...), source problems (``SourceNotFound``, ``SourceMalformed``,
      ``NoMatchingCredentials``), ``watch`` -> ``on_error(kind)``;
    * ``ensures[outcome]``: admission-time ensures: ``fast`` (the cache showed the copy
      current: no API call), ``written``, ``unmanaged``, ``failed``, ``timeout``, ``dry_run``
      -> ``on_ensure(outcome)``;
    * ``events[outcome]``: Kubernetes Events posted (``ok``) or lost (``error``, ``dropped``)
      -> ``on_event(outcome)``;
    * ``reconcile_lag_seconds``: from the first change a reconcile pass handled to its end;
      ``current_lag()``: age of the oldest change not yet reconciled, 0 when caught up;
    * ``last_sync_timestamp``: wall-clock end of the last leader pass without errors
      -> ``on_sync(timestamp)``;
    * ``leader``: whether this replica runs the reconciler.
    """

    def __init__(
        self,
        *,
        on_write: Callable[[str, str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_sync: Callable[[float], None] | None = None,
        on_ensure: Callable[[str], None] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._on_write = on_write
        self._on_error = on_error
        self._on_sync = on_sync
        self._on_ensure = on_ensure
        self._on_event = on_event
        self.secret_writes: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[str] = Counter()
        self.ensures: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.reconcile_lag_seconds: float | None = None
        self.last_sync_timestamp: float | None = None
        self.leader = False
        self._behind_since: float | None = None

    def write(self, operation: str, result: str) -> None:
        with self._lock:
            self.secret_writes[(operation, result)] += 1
        if self._on_write is not None:
            self._on_write(operation, result)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1
        if self._on_error is not None:
            self._on_error(kind)

    def ensure(self, outcome: str) -> None:
        with self._lock:
            self.ensures[outcome] += 1
        if self._on_ensure is not None:
            self._on_ensure(outcome)

    def event(self, outcome: str) -> None:
        with self._lock:
            self.events[outcome] += 1
        if self._on_event is not None:
            self._on_event(outcome)

    def behind(self, since: float | None) -> None:
        """The reconciler has changes to apply since ``since`` (monotonic), or none (``None``)."""
        self._behind_since = since

    def current_lag(self) -> float:
        since = self._behind_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def reconciled(self, *, lag: float | None, clean: bool) -> None:
        now = time.time()
        with self._lock:
            if lag is not None:
                self.reconcile_lag_seconds = lag
            if clean:
                self.last_sync_timestamp = now
        if clean and self._on_sync is not None:
            self._on_sync(now)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "secret_writes": dict(self.secret_writes),
                "errors": dict(self.errors),
                "ensures": dict(self.ensures),
                "events": dict(self.events),
                "reconcile_lag_seconds": self.reconcile_lag_seconds,
                "current_lag_seconds": self.current_lag(),
                "last_sync_timestamp": self.last_sync_timestamp,
                "leader": self.leader,
            }


