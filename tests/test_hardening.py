"""The real server process under abuse: oversized bodies, slow clients, SIGTERM, and its metrics.

Each test runs ``pullsecret-injector serve --dev`` as a subprocess on loopback ports and talks
to it over real TLS sockets, as the API server (or an attacker inside the cluster) would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.builders import golden_review
from tests.metrics_text import value
from tests.servers import free_port
from webhook.admission.wire import AdmissionReview

POLICY = """
rules:
  - {name: hub, registries: [docker.io], secret: hub-pull}
  - {name: gar, registries: ["*-docker.pkg.dev"], secret: gar-pull}
"""


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    url: str
    metrics_url: str
    port: int
    ca: Path
    policy: Path
    log: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def client(self) -> httpx.Client:
        return httpx.Client(verify=self.context(), base_url=self.url, timeout=10)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match
        return int(match.group(1))

    def metrics(self) -> str:
        return httpx.get(self.metrics_url, timeout=5).text

    def tls_socket(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.context().wrap_socket(raw, server_hostname="127.0.0.1")


def replace_file(path: Path, text: str) -> None:
    """Replace ``path`` in one step, as the kubelet swaps a mounted ConfigMap: the poller never sees half a file."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    staged.replace(path)


def start_server(tmp_path: Path, *extra: str, command: list[str] | None = None) -> Process:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(command or [sys.executable, "-m", "webhook"]),
                "serve",
                "--dev",
                "--no-kube",
                "--policy",
                str(policy),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--metrics-port",
                str(metrics_port),
                "--log-format",
                "text",
                "--read-timeout",
                "1",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 30
    ca: Path | None = None
    while time.monotonic() < deadline:
        match = re.search(r"CA at (\S+)", log.read_text())
        if match:
            ca = Path(match.group(1))
            try:
                with httpx.Client(verify=ssl.create_default_context(cafile=str(ca))) as c:
                    if c.get(f"https://127.0.0.1:{port}/readyz").status_code == 200:
                        break
            except httpx.HTTPError:
                pass
        if proc.poll() is not None:
            raise AssertionError("server exited:\n" + log.read_text())
        time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError("server did not become ready:\n" + log.read_text())
    assert ca is not None
    return Process(proc, f"https://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", port, ca, policy, log)


def stop(process: Process) -> int:
    if process.proc.poll() is None:
        process.proc.send_signal(signal.SIGTERM)
        try:
            return process.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.proc.kill()
            raise
    return process.proc.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_server(tmp_path_factory.mktemp("server"))
    try:
        yield process
    finally:
        stop(process)


def review(name: str = "v1-single-container") -> AdmissionReview:
    return golden_review(name)


def test_ten_mebibyte_body_is_413_and_memory_stays_flat(server: Process) -> None:
    big = b"{" + b" " * (10 * 1024 * 1024) + b"}"
    with server.client() as c:
        c.post("/mutate", json=review())  # warm up
        before = server.rss_kib()
        for _ in range(5):
            declared = c.post("/mutate", content=big, headers={"content-type": "application/json"})
            assert declared.status_code == 413

            def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is enforced while reading
                for offset in range(0, len(big), 256 * 1024):
                    yield big[offset : offset + 256 * 1024]

            streamed = c.post("/mutate", content=chunks(), headers={"content-type": "application/json"})
            assert streamed.status_code == 413
        after = server.rss_kib()
        # Still serving, and the bodies were never held: growth well under one body.
        assert c.post("/mutate", json=review()).status_code == 200
    assert after - before < 8 * 1024, f"RSS grew by {after - before} KiB"


@dataclass
class SlowLoris:
    """A client that sends its request headers one byte every 0.2 s and never finishes them."""

    sock: ssl.SSLSocket
    thread: threading.Thread
    stopping: threading.Event

    def closed_by_the_server(self, within: float) -> bool:
        """Whether the server closes the connection within ``within`` s (a bound on the wait), trickling on."""
        self.sock.settimeout(within)
        try:
            return self.sock.recv(1024) == b""
        except (ssl.SSLError, ConnectionError):
            return True
        except TimeoutError:
            return False


@contextlib.contextmanager
def slow_loris(server: Process) -> Iterator[SlowLoris]:
    sock = server.tls_socket()
    sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
    stopping = threading.Event()

    def trickle() -> None:
        try:
            while not stopping.is_set():
                sock.sendall(b"X")
                time.sleep(0.2)
        except OSError:
            pass

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield SlowLoris(sock, thread, stopping)
    finally:
        stopping.set()
        thread.join(5)
        sock.close()


def test_a_slow_loris_does_not_block_others(tmp_path: Path) -> None:
    """Twenty requests are answered while a slow client holds its connection mid-headers.

    Its header deadline is far off here (60 s): were the server blocked by it, nothing would
    be answered before the client's own timeout. The answers, not a stopwatch, are the check.
    """
    process = start_server(tmp_path, "--read-timeout", "60")
    try:
        with slow_loris(process) as slow:
            with process.client() as c:
                for _ in range(20):
                    assert c.post("/mutate", json=review()).status_code == 200
            assert not slow.closed_by_the_server(within=0.5), "the slow client was still connected throughout"
    finally:
        stop(process)


def test_a_slow_loris_is_cut_off(server: Process) -> None:
    """The server closes the slow connection once its header deadline (1 s here) passes."""
    with slow_loris(server) as slow:
        # (a byte now and then does not extend the deadline: were it so, this would never close)
        assert slow.closed_by_the_server(within=30), "the slow-loris connection was never closed"


def test_a_body_that_never_completes_gets_408(server: Process) -> None:
    with server.tls_socket() as sock:
        sock.sendall(
            b'POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a"'
        )
        sock.settimeout(5)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


def test_metrics_count_what_the_test_drove(tmp_path: Path) -> None:
    process = start_server(tmp_path)
    try:
        with process.client() as c:
            for _ in range(3):
                assert c.post("/mutate", json=review("v1-single-container")).status_code == 200  # gar-pull
            assert c.post("/mutate", json=review("pod-without-annotations")).status_code == 200  # hub-pull
            assert c.post("/mutate", json=review("nothing-to-inject")).status_code == 200
            assert c.post("/mutate", json=review("skip-label")).status_code == 200
            assert c.post("/mutate", json=review("update-is-ignored")).status_code == 200
            assert c.post("/mutate", content=b"{", headers={"content-type": "application/json"}).status_code == 400
            assert c.post("/mutate", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
        replace_file(process.policy, "rules: [{name: broken}]")
        time.sleep(3)  # the watcher polls every 2 s
        with process.client() as c:  # the last good policy still serves
            assert c.post("/mutate", json=review("v1-single-container")).status_code == 200
        replace_file(process.policy, POLICY + "  - {name: quay, registries: [quay.io], secret: quay-pull}\n")
        time.sleep(3)
        text = process.metrics()
    finally:
        assert stop(process) == 0
    prefix = "pullsecret_injector_"
    assert value(text, prefix + "admission_requests_total", outcome="mutated") == 5
    assert value(text, prefix + "admission_requests_total", outcome="unchanged") == 1
    assert value(text, prefix + "admission_requests_total", outcome="skipped") == 1
    assert value(text, prefix + "admission_requests_total", outcome="ignored") == 1
    assert value(text, prefix + "injections_total", rule="gar") == 4
    assert value(text, prefix + "injections_total", rule="hub") == 1
    assert value(text, prefix + "http_errors_total", code="400") == 1
    assert value(text, prefix + "http_errors_total", code="415") == 1
    assert value(text, prefix + "admission_duration_seconds_count") == 8
    assert value(text, prefix + "policy_reloads_total", result="rejected") == 1
    assert value(text, prefix + "policy_reloads_total", result="accepted") == 1
    assert value(text, prefix + "policy_rules") == 3
    assert value(text, prefix + "ready") == 1
    assert value(text, prefix + "seconds_since_last_successful_sync") == -1  # no cluster: never synced
    assert "new policy rejected, keeping the last good one" in process.log.read_text()


def test_sigterm_turns_readiness_off_first_and_finishes_in_flight_reviews(tmp_path: Path) -> None:
    process = start_server(tmp_path, "--shutdown-delay", "1.5", "--read-timeout", "10")
    body = json.dumps(review()).encode()
    with process.tls_socket() as inflight:
        head = (
            f"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        inflight.sendall(head.encode() + body[:100])  # a review in flight
        time.sleep(0.2)
        process.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with process.client() as c:
            assert c.get("/readyz").status_code == 503  # not ready, yet still answering
            assert c.get("/healthz").status_code == 200
        inflight.sendall(body[100:])
        inflight.settimeout(5)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = inflight.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"allowed":true' in answer
    assert process.proc.wait(timeout=15) == 0


def test_the_image_entrypoint_command_serves(tmp_path: Path) -> None:
    """The Dockerfile runs ``pullsecret-injector serve``: the installed console script, not a module."""
    dockerfile = (Path(__file__).parent.parent / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["pullsecret-injector"]' in dockerfile
    assert 'CMD ["serve"]' in dockerfile
    script = Path(sys.executable).parent / "pullsecret-injector"
    assert script.is_file(), "the package does not install the pullsecret-injector command"
    process = start_server(tmp_path, command=[str(script)])
    try:
        with process.client() as c:
            assert c.get("/healthz").text == "ok"
            assert c.post("/mutate", json=review()).json()["response"]["patchType"] == "JSONPatch"
    finally:
        assert stop(process) == 0
