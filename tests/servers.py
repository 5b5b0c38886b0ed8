"""Running the real webhook server on a loopback port for tests (TLS over real sockets)."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from tests.builders import wait_for
from webhook.admission.handler import Handler
from webhook.app import Readiness, create_app
from webhook.tls.certs import write_local_certs
from webhook.tls.context import ReloadingSSLContext, install_into_uvicorn


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """The handler of a quiet stand-in HTTP server that answers JSON (the fake APIs of the chart and token tests)."""

    def log_message(self, format: str, *args: Any) -> None:
        del format, args

    def send_json(self, status: int, payload: object, *, headers: Mapping[str, str] | None = None) -> None:
        """Answer ``payload`` (JSON-encoded unless already bytes) with its length, and ``headers`` besides."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningServer:
    url: str
    ca_file: Path
    readiness: Readiness
    server: uvicorn.Server


@contextmanager
def serve_in_thread(
    handler: Handler,
    tmp_path: Path,
    *,
    max_body_bytes: int = 3 * 1024 * 1024,
    timeout_keep_alive: int = 5,
    http: type[asyncio.Protocol] | str = "httptools",
) -> Iterator[RunningServer]:
    """Serve ``handler`` over TLS on 127.0.0.1 in a background thread with its own loop.

    ``http`` is uvicorn's protocol: a name, or a class such as ``guarded_protocol(...)``.
    """
    files = write_local_certs(service="pullsecret-injector", namespace="test", out_dir=tmp_path / "certs")
    readiness = Readiness()
    readiness.started = True
    app = create_app(handler=handler, readiness=readiness, max_body_bytes=max_body_bytes)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="asyncio",
        http=http,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=timeout_keep_alive,
    )
    tls = ReloadingSSLContext(files["tls.crt"], files["tls.key"])
    install_into_uvicorn(config, tls)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the server to start", interval=0.01)
    try:
        yield RunningServer(
            url=f"https://127.0.0.1:{port}", ca_file=files["ca.crt"], readiness=readiness, server=server
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
