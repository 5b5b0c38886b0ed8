"""Draining keep-alive connections on SIGTERM, so that a rolling update loses no admission review.

The API server keeps its connections to a webhook open (HTTP/1.1 keep-alive) and, through a
Service, an open connection stays with the Pod it was made to even after that Pod left the
endpoints. When the terminating replica finally closes such a connection while it is idle,
the API server may have just written a review on it: Go's HTTP client does not retry a POST
that was written, so the call fails with ``EOF`` and the Pod is admitted fail-open (or
refused, with ``failurePolicy: Fail``). Measured in tests/e2e/test_faults_e2e.py: a handful
of the 1,000 Pods of a burst during a rolling update.

The fix is the one Go's own ``http.Server`` uses when it shuts down (keep-alives off): from
the moment readiness goes false, every answer carries ``Connection: close`` and uvicorn
closes the connection after it. The client knows before it sends anything else, so it opens
a new connection, which the Service (or HAProxy) gives to a ready replica. By the end of
``--shutdown-delay`` the connections that carried traffic are gone; only connections idle
for the whole delay remain to be closed, and nothing is being sent on those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CloseWhenDraining:
    """ASGI middleware: ``Connection: close`` on every HTTP answer once ``draining()`` is true."""

    def __init__(self, app: ASGIApp, *, draining: Callable[[], bool]) -> None:
        self._app = app
        self._draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self._app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message.get("type") == "http.response.start" and self._draining():
                headers: list[Any] = [
                    (name, value)
                    for name, value in message.get("headers") or ()
                    if bytes(name).lower() != b"connection"
                ]
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, send_closing)


__all__ = ["CloseWhenDraining"]
