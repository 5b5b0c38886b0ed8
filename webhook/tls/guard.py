"""uvicorn's httptools protocol with a deadline for request headers.

uvicorn times out idle keep-alive connections but not a client that opens a connection and
then sends its request line and headers a byte at a time (slow-loris): each such client
holds a socket and a protocol object for as long as it likes. Every webhook replica sits
behind a Service the whole cluster can reach, so this closes a connection that has not
finished its headers within ``header_timeout`` seconds. The body has its own deadline in
:class:`webhook.app.MutateEndpoint`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT = 10.0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Closes connections whose request headers do not complete in time.

    The deadline runs from the start of the connection, and again from the start of each
    request, to the end of that request's headers. A request whose headers arrive whole in
    one read (every request from the API server) never needs a timer: the timer is armed
    only when a read ends with the headers still incomplete, so the common case costs a
    flag instead of a ``call_later`` and a ``cancel`` per request.
    """

    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_deadline: asyncio.TimerHandle | None = None
        #: A request has begun and its headers have not all arrived yet.
        self._in_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and self._header_deadline is None:
            # This read began a request (or continued one) and did not finish its headers.
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The deadline counts from here: one still running (the connection's) restarts,
        # when this read ends with the headers incomplete (see data_received).
        if self._header_deadline is not None:
            self._disarm()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if self._header_deadline is not None:
            self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._in_headers = False
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expired(self) -> None:
        # Armed only between the start of a request (or of the connection) and the end of its
        # headers, so firing always means headers are overdue; nothing in flight is cut.
        self._header_deadline = None
        log.debug("closing a connection whose request headers did not arrive in %.0fs", self.header_timeout)
        self.transport.close()


def guarded_protocol(header_timeout: float) -> type[GuardedHttpToolsProtocol]:
    """A protocol class with its own deadline (uvicorn takes a class, not an instance)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"header_timeout": header_timeout})
