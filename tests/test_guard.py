"""Tests for webhook.tls.guard: the header deadline, driven through the real protocol with a fake transport.

No sleeping: the tests look at whether the deadline timer is armed after each read, and
fire it by hand. (That the server really cuts a slow client off is tests/test_hardening.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from webhook.tls.guard import GuardedHttpToolsProtocol, guarded_protocol

Message = MutableMapping[str, Any]


Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def _app(scope: Message, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8443), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()

        async def drain() -> None:
            await asyncio.gather(*pending, return_exceptions=True)

        loop.run_until_complete(drain())
        loop.close()


def connect(loop: asyncio.AbstractEventLoop) -> tuple[GuardedHttpToolsProtocol, FakeTransport]:
    config = uvicorn.Config(_app, http=guarded_protocol(5.0), lifespan="off", log_config=None, proxy_headers=False)
    config.load()
    protocol = guarded_protocol(5.0)(config, ServerState(), {}, loop)
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Let the request task answer."""
    loop.run_until_complete(asyncio.sleep(0.01))


def test_the_class_carries_its_own_deadline() -> None:
    assert guarded_protocol(2.5).header_timeout == 2.5
    assert issubclass(guarded_protocol(2.5), GuardedHttpToolsProtocol)


def test_a_new_connection_has_a_deadline_until_its_first_headers(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = connect(loop)
    assert protocol._header_deadline is not None
    protocol.data_received(REQUEST)
    assert protocol._header_deadline is None
    settle(loop)
    assert transport.written.startswith(b"HTTP/1.1 200")


def test_whole_requests_never_arm_a_timer(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = connect(loop)
    protocol.data_received(REQUEST)
    settle(loop)
    armed = []
    original = loop.call_later

    def spy(delay: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__func__", None) is GuardedHttpToolsProtocol._expired:
            armed.append(delay)
        return original(delay, callback, *args)

    loop.call_later = spy  # type: ignore[method-assign,assignment]
    for _ in range(3):
        protocol.data_received(REQUEST)
        assert protocol._header_deadline is None
        settle(loop)
    assert armed == []
    assert transport.written.count(b"HTTP/1.1 200") == 4


def test_headers_split_over_reads_keep_one_deadline_from_the_first(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = connect(loop)
    protocol.data_received(REQUEST)
    settle(loop)
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHo")
    first = protocol._header_deadline
    assert first is not None
    protocol.data_received(b"st: x\r\nX-A: 1")
    assert protocol._header_deadline is first  # not re-armed by a later read
    protocol.data_received(b"\r\n\r\n")
    assert protocol._header_deadline is None
    assert first.cancelled()
    settle(loop)
    assert transport.written.count(b"HTTP/1.1 200") == 2


def test_a_request_begun_with_the_connection_restarts_the_deadline(loop: asyncio.AbstractEventLoop) -> None:
    protocol, _ = connect(loop)
    connection_deadline = protocol._header_deadline
    assert connection_deadline is not None
    protocol.data_received(b"GET /healthz HT")
    assert connection_deadline.cancelled()
    assert protocol._header_deadline is not None
    assert protocol._header_deadline is not connection_deadline


def test_overdue_headers_close_the_connection(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = connect(loop)
    protocol.data_received(REQUEST)
    settle(loop)
    protocol.data_received(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
    assert protocol._header_deadline is not None
    protocol._expired()
    assert transport.closed
    assert protocol._header_deadline is None


def test_pipelined_request_with_incomplete_headers_is_guarded(loop: asyncio.AbstractEventLoop) -> None:
    protocol, _ = connect(loop)
    protocol.data_received(REQUEST + b"GET /healthz HTTP/1.1\r\nHost")
    assert protocol._header_deadline is not None
    protocol.data_received(b": x\r\n\r\n")
    assert protocol._header_deadline is None


def test_connection_lost_disarms(loop: asyncio.AbstractEventLoop) -> None:
    protocol, _ = connect(loop)
    deadline = protocol._header_deadline
    assert deadline is not None
    protocol.connection_lost(None)
    assert deadline.cancelled()
    assert protocol._header_deadline is None
