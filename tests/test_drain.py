"""``Connection: close`` on every answer once the server is draining (webhook/drain.py, issue 12).

The middleware is driven through real ASGI calls (the app's own messages captured); the
rolling update it protects is measured in tests/e2e/test_faults_e2e.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from webhook.drain import CloseWhenDraining


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain"), *scope["h"]]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def _run(draining: bool, scope_type: str = "http", extra: list[tuple[bytes, bytes]] | None = None) -> list[Any]:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    await CloseWhenDraining(_app, draining=lambda: draining)({"type": scope_type, "h": extra or []}, receive, send)
    return sent


@pytest.mark.parametrize(
    ("draining", "extra", "expected"),
    [
        pytest.param(False, [], [(b"content-type", b"text/plain")], id="serving-keeps-alive"),
        pytest.param(True, [], [(b"content-type", b"text/plain"), (b"connection", b"close")], id="draining-closes"),
        pytest.param(
            True,
            [(b"Connection", b"keep-alive")],
            [(b"content-type", b"text/plain"), (b"connection", b"close")],
            id="draining-overrides-keep-alive",
        ),
    ],
)
async def test_connection_header(draining: bool, extra: list[tuple[bytes, bytes]], expected: list[Any]) -> None:
    start, body = await _run(draining, extra=extra)
    assert start["headers"] == expected
    assert body == {"type": "http.response.body", "body": b"ok"}


async def test_other_scopes_pass_through() -> None:
    (start, _) = await _run(True, scope_type="websocket")
    assert start["headers"] == [(b"content-type", b"text/plain")]
