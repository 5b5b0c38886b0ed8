"""The header guard: a connection that does not finish its request headers in time is closed.

Served for real (uvicorn, httptools, TLS on loopback) with a short deadline; the slow-loris
test of the whole process is in ``tests/test_hardening.py``.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.builders import golden_review
from tests.servers import RunningServer, serve_in_thread
from webhook.admission.handler import Handler
from webhook.policy.matching import load_policy
from webhook.tls.guard import DEFAULT_HEADER_TIMEOUT, GuardedHttpToolsProtocol, guarded_protocol

DEADLINE = 0.5
POLICY = load_policy("rules: [{name: hub, registries: [docker.io], secret: hub-pull}]")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with serve_in_thread(Handler(policy=lambda: POLICY), tmp_path, http=guarded_protocol(DEADLINE)) as running:
        yield running


def tls_socket(server: RunningServer) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    port = int(server.url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


#: A generous bound on the wait for the server to close a connection (the deadline is 0.5 s).
CLOSES_WITHIN = 30.0
CUT = "closing a connection whose request headers did not arrive"


def closed_within(sock: ssl.SSLSocket, seconds: float) -> bool:
    """Whether the server closed ``sock`` within ``seconds`` (False: still open then)."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(1024)
    except TimeoutError:
        return False
    except (ssl.SSLError, ConnectionError):
        return True
    assert data == b"", data  # nothing is answered to a request that never finished
    return True


def cuts(caplog: pytest.LogCaptureFixture) -> int:
    """Connections the header guard closed (its own record of it: no other timeout closed them)."""
    return sum(CUT in record.getMessage() for record in caplog.records if record.name == "webhook.tls.guard")


@pytest.fixture
def guard_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="webhook.tls.guard")
    return caplog


def test_the_deadline_is_per_class() -> None:
    guarded = guarded_protocol(1.5)
    assert issubclass(guarded, GuardedHttpToolsProtocol)
    assert guarded.header_timeout == 1.5
    assert GuardedHttpToolsProtocol.header_timeout == DEFAULT_HEADER_TIMEOUT


def test_headers_that_never_finish_are_cut_off(server: RunningServer, guard_log: pytest.LogCaptureFixture) -> None:
    with tls_socket(server) as slow:
        slow.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
        assert closed_within(slow, CLOSES_WITHIN)
    assert cuts(guard_log) == 1, "closed by the header deadline, not by another timeout"


def test_a_silent_new_connection_is_cut_off(server: RunningServer, guard_log: pytest.LogCaptureFixture) -> None:
    with tls_socket(server) as silent:
        assert closed_within(silent, CLOSES_WITHIN)
    assert cuts(guard_log) == 1


def test_requests_in_time_are_served_and_a_kept_alive_connection_is_not_cut(
    server: RunningServer, guard_log: pytest.LogCaptureFixture
) -> None:
    with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(server.ca_file))) as client:
        assert client.post("/mutate", json=golden_review("pod-without-annotations")).status_code == 200
    with tls_socket(server) as kept:
        for _ in range(2):
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nok"):  # /healthz answers "ok"
                chunk = kept.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            # Idle between requests for longer than the header deadline: that is the
            # keep-alive timeout's business (5 s here), not the guard's.
            assert not closed_within(kept, DEADLINE * 2)
    assert cuts(guard_log) == 0
