"""List-then-watch loops (an informer without the client's model classes), paged lists, relists."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import urllib3

from webhook.backoff import Backoff
from webhook.config import BackoffSettings, KubeSettings
from webhook.kube.errors import ApiGone, _classify, error_for_status
from webhook.kube.objects import Key, KubeObject
from webhook.kube.store import Store
from webhook.observability.stats import Stats

log = logging.getLogger(__name__)


def _iter_lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(amt=65536, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


#: ``lister(limit, continue_token)``: one page of the list (``limit`` ``None``: all of it at once).
Lister = Callable[[int | None, str | None], KubeObject]


class ListWatch:
    """List, then watch from the list's resourceVersion, in a daemon thread, forever.

    The list is read in pages of ``page_size`` objects (``limit``/``continue``; the setting
    ``KubeSettings.list_page_size``, ``None``: in one piece), each page
    slimmed into the store's new contents and dropped before the next is read: 10,000
    objects decoded in one piece would leave the process tens of MB larger for good (the
    allocator does not give back memory freed between the objects that stay). A
    ``continue`` token that expires mid-list (410 Gone: the list took longer than the API
    server keeps its snapshot) starts the list again from the first page; after
    ``PAGED_RESTARTS`` such restarts the list is read in one piece, as client-go's pager
    falls back to a full list.

    A watch that ends (server timeout, read timeout on a quiet stream) is resumed from the
    last resourceVersion seen; a 410 Gone or any error goes back to a fresh list, after a
    capped, jittered :class:`~webhook.backoff.Backoff`. The backoff starts again from its
    shortest delay once a watch stream has been open ``healthy_after`` seconds after a
    successful list: a watch that worked for a while and then lost its API server is
    retried at once, not at the delay the previous outage had driven it to (with five
    outages 15 s apart, that was the difference between 0.3 s and 22 s to resume).
    ``stop()`` closes the open response from the outside so the thread ends at once rather
    than at its next read timeout.
    """

    PAGED_RESTARTS: Final = 2

    def __init__(
        self,
        *,
        name: str,
        lister: Lister,
        watcher: Callable[[str], Any],
        store: Store,
        stats: Stats,
        backoff: BackoffSettings | None = None,
        page_size: int | None,
    ) -> None:
        self.name = name
        self._lister = lister
        self._page_size = page_size
        #: Pages read and continue-token expiries (410) seen, for tests and logs.
        self.pages = 0
        self.expired_continues = 0
        self._watcher = watcher
        self.store = store
        self._stats = stats
        self.backoff = Backoff(backoff or BackoffSettings(initial=0.5, maximum=5.0))
        #: Monotonic time a watch stream opened after a successful list (``None``: not watching).
        self._watching_since: float | None = None
        self._stop = threading.Event()
        self._response: Any = None
        self._response_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"watch {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread: the flag, plus a shutdown of the open stream to wake its blocked read."""
        self._stop.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:
                log.debug("interrupting the watch %s failed", self.name)

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._list_and_watch()
                self.backoff.reset()
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._note_health()  # a watch that was healthy until now starts over from the shortest delay
                error = _classify(exc, f"watch {self.name}")
                self._stats.error("watch")
                delay = self.backoff.failure()
                log.warning("%s failed (%s), listing again in %.1fs", error.action, error.kind, delay)
                self._stop.wait(delay)
            finally:
                self._watching_since = None

    def _note_health(self) -> None:
        """Reset the backoff once a watch stream has been open ``healthy_after`` seconds since the list."""
        since = self._watching_since
        if since is not None and time.monotonic() - since >= self.backoff.settings.healthy_after:
            self.backoff.reset()

    def _list(self) -> str | None:
        """Fill the store from a fresh list, page by page; the list's resourceVersion (``None``: stopped)."""
        restarts = 0
        while True:
            limit = self._page_size if restarts < self.PAGED_RESTARTS else None
            fresh: dict[Key, KubeObject] = {}
            token: str | None = None
            resource_version = ""
            try:
                while True:
                    page = self._lister(limit, token)
                    self.pages += 1
                    self.store.slim_into(fresh, page.get("items") or ())
                    metadata = page.get("metadata") or {}
                    resource_version = str(metadata.get("resourceVersion") or "")
                    token = str(metadata.get("continue") or "") or None
                    del page, metadata  # nothing of the decoded page outlives its slim objects
                    if token is None or limit is None:
                        break
                    if self._stop.is_set():
                        return None
            except ApiGone:
                if token is None:
                    raise
                # The continue token expired: the pages read so far are of an older snapshot.
                self.expired_continues += 1
                restarts += 1
                log.debug("%s: list continue token expired, listing again from the start", self.name)
                continue
            count = len(fresh)
            self.store.install(fresh)
            log.debug("%s: listed %d object(s)", self.name, count)
            return resource_version

    def _list_and_watch(self) -> None:
        listed = self._list()
        if listed is None:
            return
        resource_version = listed
        while not self._stop.is_set():
            response = self._watcher(resource_version)
            with self._response_lock:
                self._response = response
            if self._stop.is_set():
                response.close()
                return
            if self._watching_since is None:
                self._watching_since = time.monotonic()
            self._note_health()
            try:
                for line in _iter_lines(response):
                    event = orjson.loads(line)
                    kind = event.get("type")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        code = obj.get("code")
                        if code == 410:
                            log.debug("%s: resourceVersion too old, listing again", self.name)
                            return
                        raise error_for_status(int(code or 0), action=self.name)
                    version = (obj.get("metadata") or {}).get("resourceVersion")
                    if version:
                        resource_version = str(version)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self.store.apply(kind, obj)
                    if self.backoff.failures:
                        self._note_health()
            except urllib3.exceptions.ReadTimeoutError:
                pass  # a quiet stream: resume from where we are
            except urllib3.exceptions.ProtocolError:
                if self._stop.is_set():
                    return
                raise
            finally:
                with self._response_lock:
                    self._response = None
                # Close, never hand back to the pool: after a shutdown from ``stop`` the
                # socket is only half closed, and the server would keep streaming to it.
                response.close()


@dataclass
class WatchSet:
    """The running watches by target; ``sync`` starts new targets and stops dropped ones."""

    watches: dict[Any, ListWatch] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop_all(self) -> list[ListWatch]:
        with self.lock:
            stopped = list(self.watches.values())
            self.watches.clear()
        for watch in stopped:
            watch.stop()
        return stopped


def _watch_timeouts(settings: KubeSettings) -> tuple[int, tuple[float, float]]:
    server = int(settings.watch_timeout * random.uniform(1.0, 1.2))
    return server, (settings.connect_timeout, server + 30.0)


