"""Running the real webhook server on a loopback port for tests (TLS over real sockets)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from tests.builders import wait_for
from tests.processes import free_port as free_port  # the one free-port finder; tests import it from here too
from webhook.admission.handler import Handler
from webhook.app import Readiness, create_app
from webhook.tls.certs import write_local_certs
from webhook.tls.context import ReloadingSSLContext, install_into_uvicorn


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
