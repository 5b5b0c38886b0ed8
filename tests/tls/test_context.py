"""Tests for webhook.tls.context: in-place certificate reload, in memory and on a real uvicorn TLS server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.builders import eventually, wait_for
from webhook.tls.certs import write_file_atomic
from webhook.tls.context import CertificateReloadError, ReloadingSSLContext, install_into_uvicorn
from webhook.tls.pki import CertBundle, build_bundle, build_ca, build_serving_cert, merge_ca_bundle, service_dns_names

SERVICE, NAMESPACE = "pullsecret-injector", "infra"
HOSTNAME = "pullsecret-injector.infra.svc"  # the name the API server dials
NAMES = [*service_dns_names(SERVICE, NAMESPACE), "localhost"]


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class CA:
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def new(cls, name: str = "test-ca", *, now: datetime | None = None) -> CA:
        return cls(*build_ca(common_name=name, now=now))

    def issue(self, *, now: datetime | None = None, valid_for: timedelta = timedelta(days=30)) -> Pair:
        cert_pem, key_pem = build_serving_cert(
            ca_cert_pem=self.cert_pem,
            ca_key_pem=self.key_pem,
            dns_names=NAMES,
            ip_addresses=["127.0.0.1"],
            valid_for=valid_for,
            now=now,
        )
        return Pair(cert_pem, key_pem)


@dataclass(frozen=True)
class Pair:
    cert_pem: bytes
    key_pem: bytes

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert_pem).serial_number


def write_pair(directory: Path, pair: Pair) -> tuple[Path, Path]:
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    write_file_atomic(key_file, pair.key_pem, mode=0o600)
    write_file_atomic(cert_file, pair.cert_pem, mode=0o644)
    return cert_file, key_file


def client_context(*ca_pems: bytes) -> ssl.SSLContext:
    """A client that trusts exactly the given CAs and checks the hostname, like the API server."""
    # With cadata given, create_default_context does not load the system CAs.
    return ssl.create_default_context(cadata="".join(pem.decode() for pem in ca_pems))


def serial_of(der: bytes | None) -> int:
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def memory_handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = HOSTNAME) -> int:
    """Complete a TLS handshake through memory BIOs; return the serial of the cert the server presented."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_obj = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    server_obj = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, obj, out, peer_in in (("client", client_obj, c_out, s_in), ("server", server_obj, s_out, c_in)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer_in.write(data)
        if all(done.values()):
            return serial_of(client_obj.getpeercert(binary_form=True))
    raise AssertionError("handshake did not complete")


@pytest.fixture(scope="module")
def ca1() -> CA:
    return CA.new("ca-one")


@pytest.fixture(scope="module")
def ca2() -> CA:
    return CA.new("ca-two")


# --------------------------------------------------------------------------- in-memory behaviour


def test_context_is_a_tls12_plus_server_context(tmp_path: Path, ca1: CA) -> None:
    pair = ca1.issue()
    ctx = ReloadingSSLContext(*write_pair(tmp_path, pair))
    assert ctx.context.protocol == ssl.PROTOCOL_TLS_SERVER
    assert ctx.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.current.serial_number == pair.serial
    assert ctx.reload_count == 1
    assert memory_handshake(ctx.context, client_context(ca1.cert_pem)) == pair.serial

    old_client = client_context(ca1.cert_pem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that TLS 1.1 is deprecated is the point
        old_client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old_client.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        memory_handshake(ctx.context, old_client)


def test_minimum_version_below_tls12_is_refused(tmp_path: Path, ca1: CA) -> None:
    with pytest.raises(ValueError, match=r"below 1\.2"):
        ReloadingSSLContext(*write_pair(tmp_path, ca1.issue()), minimum_version=ssl.TLSVersion.TLSv1_1)


def _encrypted_key(pair: Pair) -> bytes:
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-passphrase"),
    )


BREAKAGES: dict[str, Callable[[Pair, Pair], tuple[bytes, bytes]]] = {
    # (good new pair, unrelated pair) -> (cert bytes, key bytes) to write
    "garbage-key": lambda new, other: (new.cert_pem, b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"),
    "truncated-cert": lambda new, other: (new.cert_pem[: len(new.cert_pem) // 2], new.key_pem),
    "empty-cert": lambda new, other: (b"", new.key_pem),
    "mismatched-key": lambda new, other: (new.cert_pem, other.key_pem),
    "encrypted-key": lambda new, other: (new.cert_pem, _encrypted_key(new)),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES), ids=list(BREAKAGES))
def test_broken_update_keeps_serving_the_old_certificate(tmp_path: Path, ca1: CA, breakage: str) -> None:
    good = ca1.issue()
    ctx = ReloadingSSLContext(*write_pair(tmp_path, good))
    cert_bytes, key_bytes = BREAKAGES[breakage](ca1.issue(), ca1.issue())
    write_file_atomic(ctx.cert_file, cert_bytes)
    write_file_atomic(ctx.key_file, key_bytes)

    with pytest.raises(CertificateReloadError) as excinfo:
        ctx.maybe_reload()
    # Error messages are logged: they must never carry key material.
    assert "PRIVATE KEY" not in str(excinfo.value)
    assert ctx.last_error is excinfo.value
    assert ctx.current.serial_number == good.serial
    assert memory_handshake(ctx.context, client_context(ca1.cert_pem)) == good.serial
    # The same broken content is reported once, not on every poll.
    assert ctx.maybe_reload() is False
    assert ctx.reload_count == 1

    fixed = ca1.issue()
    write_pair(tmp_path, fixed)
    assert ctx.maybe_reload() is True
    assert ctx.last_error is None
    assert memory_handshake(ctx.context, client_context(ca1.cert_pem)) == fixed.serial


def test_expired_update_is_refused(tmp_path: Path, ca1: CA) -> None:
    good = ca1.issue()
    ctx = ReloadingSSLContext(*write_pair(tmp_path, good))
    long_ago = datetime.now(UTC) - timedelta(days=10)
    old_ca = CA.new("old-ca", now=long_ago)
    write_pair(tmp_path, old_ca.issue(now=long_ago, valid_for=timedelta(days=1)))
    with pytest.raises(CertificateReloadError, match="expired"):
        ctx.maybe_reload()
    assert memory_handshake(ctx.context, client_context(ca1.cert_pem)) == good.serial


@pytest.mark.parametrize(
    ("setup", "message"),
    [("missing", "cannot read"), ("garbage", "not valid PEM"), ("mismatch", "does not match")],
    ids=["missing-files", "garbage-cert", "mismatched-key"],
)
def test_constructor_fails_fast_on_unusable_files(tmp_path: Path, ca1: CA, setup: str, message: str) -> None:
    cert_file, key_file = write_pair(tmp_path, ca1.issue())
    if setup == "missing":
        key_file.unlink()
    elif setup == "garbage":
        cert_file.write_bytes(b"hello")
    else:
        write_file_atomic(key_file, ca1.issue().key_pem)
    with pytest.raises(CertificateReloadError, match=message):
        ReloadingSSLContext(cert_file, key_file)


def test_maybe_reload_only_reacts_to_content_changes(tmp_path: Path, ca1: CA) -> None:
    first = ca1.issue()
    ctx = ReloadingSSLContext(*write_pair(tmp_path, first))
    assert ctx.maybe_reload() is False
    # Rewriting identical bytes (new inode, new mtime) is not a change.
    write_pair(tmp_path, first)
    future = time.time() + 100
    os.utime(ctx.cert_file, (future, future))
    assert ctx.maybe_reload() is False
    assert ctx.reload_count == 1

    second = ca1.issue()
    write_pair(tmp_path, second)
    assert ctx.maybe_reload() is True
    assert ctx.current.serial_number == second.serial
    assert memory_handshake(ctx.context, client_context(ca1.cert_pem)) == second.serial
    assert ctx.maybe_reload() is False


def test_reload_forces_a_load_even_when_unchanged(tmp_path: Path, ca1: CA) -> None:
    ctx = ReloadingSSLContext(*write_pair(tmp_path, ca1.issue()))
    ctx.reload()
    assert ctx.reload_count == 2


def test_kubelet_style_symlink_swap_is_picked_up(tmp_path: Path, ca1: CA, ca2: CA) -> None:
    """Secret volumes update by re-pointing a ``..data`` symlink; both files change atomically."""

    def publish(version: str, pair: Pair) -> None:
        target = tmp_path / f"..{version}"
        target.mkdir()
        write_pair(target, pair)
        tmp_link = tmp_path / "..data_tmp"
        tmp_link.symlink_to(target.name)
        os.replace(tmp_link, tmp_path / "..data")

    first, second = ca1.issue(), ca2.issue()
    publish("v1", first)
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    ctx = ReloadingSSLContext(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert ctx.current.serial_number == first.serial
    publish("v2", second)
    assert ctx.maybe_reload() is True
    assert memory_handshake(ctx.context, client_context(ca2.cert_pem)) == second.serial


def test_staging_directory_fallback_leaves_nothing_behind(tmp_path: Path, ca1: CA) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    files = tmp_path / "files"
    files.mkdir()
    pair = ca1.issue()
    ctx = ReloadingSSLContext(*write_pair(files, pair), staging_dir=staging)
    assert memory_handshake(ctx.context, client_context(ca1.cert_pem)) == pair.serial
    write_pair(files, ca1.issue())
    assert ctx.maybe_reload() is True
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("memfd", [True, False], ids=["memfd", "no-memfd"])
def test_validated_bytes_are_staged_privately(
    tmp_path: Path, ca1: CA, monkeypatch: pytest.MonkeyPatch, memfd: bool
) -> None:
    """With memfd (Linux) nothing is written to disk; without it (non-Linux, seccomp) a private temp dir is used."""
    import webhook.tls.context

    if memfd and not webhook.tls.context._memfd_available():
        pytest.skip("memfd_create or /proc not available here")
    monkeypatch.setattr(webhook.tls.context, "_memfd_available", lambda: memfd)
    staged: list[str] = []
    real_load = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        staged.append(str(certfile))
        real_load(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    ctx = ReloadingSSLContext(*write_pair(tmp_path, ca1.issue()))
    new = ca1.issue()
    write_pair(tmp_path, new)
    assert ctx.maybe_reload() is True
    assert memory_handshake(ctx.context, client_context(ca1.cert_pem)) == new.serial
    assert staged
    if memfd:
        assert all(path.startswith("/proc/self/fd/") for path in staged)
    else:
        assert all(not path.startswith("/proc/") and not Path(path).exists() for path in staged)


@pytest.mark.parametrize("parent", ["given", "default"], ids=["given-directory", "system-tempdir"])
def test_a_context_from_a_bundle_uses_a_private_directory(tmp_path: Path, ca1: CA, parent: str) -> None:
    bundle = build_bundle(service=SERVICE, namespace=NAMESPACE, ca_cert_pem=ca1.cert_pem, ca_key_pem=ca1.key_pem)
    ctx = ReloadingSSLContext.from_bundle(bundle, tmp_path if parent == "given" else None)
    private_dir = ctx.cert_file.parent
    try:
        if parent == "given":
            assert private_dir.parent == tmp_path
        assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(ctx.key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(ctx.cert_file.stat().st_mode) == 0o600
        assert ctx.key_file.read_bytes() == bundle.key_pem
        assert memory_handshake(ctx.context, client_context(ca1.cert_pem)) == ctx.current.serial_number
    finally:
        ctx.close()
    assert not private_dir.exists()
    # The context keeps serving after close(): OpenSSL holds the key in memory.
    assert memory_handshake(ctx.context, client_context(ca1.cert_pem)) == ctx.current.serial_number


def test_update_validates_before_writing(tmp_path: Path, ca1: CA, ca2: CA) -> None:
    bundle = build_bundle(service=SERVICE, namespace=NAMESPACE, ca_cert_pem=ca1.cert_pem, ca_key_pem=ca1.key_pem)
    with ReloadingSSLContext.from_bundle(bundle, tmp_path) as ctx:
        new = ca2.issue()
        ctx.update(cert_pem=new.cert_pem, key_pem=new.key_pem)
        assert ctx.cert_file.read_bytes() == new.cert_pem
        assert memory_handshake(ctx.context, client_context(ca2.cert_pem)) == new.serial

        with pytest.raises(CertificateReloadError, match="does not match"):
            ctx.update(cert_pem=ca1.issue().cert_pem, key_pem=new.key_pem)
        assert ctx.cert_file.read_bytes() == new.cert_pem  # nothing bad reached the disk
        assert memory_handshake(ctx.context, client_context(ca2.cert_pem)) == new.serial


async def test_watch_reloads_and_logs_without_key_material(
    tmp_path: Path, ca1: CA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook.tls.context")
    first = ca1.issue()
    ctx = ReloadingSSLContext(*write_pair(tmp_path, first))
    watcher = asyncio.create_task(ctx.watch(interval=0.01))
    try:
        second = ca1.issue()
        write_pair(tmp_path, second)
        await eventually(lambda: ctx.current.serial_number == second.serial)
        await eventually(lambda: "reloaded TLS serving certificate" in caplog.text)

        broken = ca1.issue()
        write_file_atomic(ctx.cert_file, broken.cert_pem)  # key left behind: mismatch
        await eventually(lambda: "keeping current TLS certificate" in caplog.text)
        assert ctx.current.serial_number == second.serial
        assert not watcher.done()  # a bad file never kills the loop

        write_file_atomic(ctx.key_file, broken.key_pem)
        await eventually(lambda: ctx.current.serial_number == broken.serial)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert watcher.cancelled()
    assert f"{second.serial:x}" in caplog.text
    assert "does not match" in caplog.text
    for pair in (first, second, broken):
        key_body = pair.key_pem.decode().splitlines()[1]
        assert key_body not in caplog.text
    assert "PRIVATE KEY" not in caplog.text
    assert [r.levelno for r in caplog.records if "keeping current" in r.getMessage()] == [logging.WARNING]


async def test_watch_rejects_non_positive_interval(tmp_path: Path, ca1: CA) -> None:
    ctx = ReloadingSSLContext(*write_pair(tmp_path, ca1.issue()))
    with pytest.raises(ValueError, match="positive"):
        await ctx.watch(interval=0)


def _asgi_app() -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        assert scope["type"] == "http"
        body = str(scope["scheme"]).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
        )
        await send({"type": "http.response.body", "body": body})

    return app


def test_install_into_uvicorn_before_load(tmp_path: Path, ca1: CA) -> None:
    ctx = ReloadingSSLContext(*write_pair(tmp_path, ca1.issue()))
    config = uvicorn.Config(_asgi_app(), lifespan="off", log_config=None, ssl_cert_reqs=ssl.CERT_OPTIONAL)
    install_into_uvicorn(config, ctx)
    assert config.is_ssl  # uvicorn now reports https in the ASGI scope
    config.load()
    assert config.ssl is ctx.context
    assert ctx.context.verify_mode == ssl.CERT_OPTIONAL  # uvicorn's ssl_* options still apply


def test_install_into_uvicorn_after_load(tmp_path: Path, ca1: CA) -> None:
    ctx = ReloadingSSLContext(*write_pair(tmp_path, ca1.issue()))
    config = uvicorn.Config(_asgi_app(), lifespan="off", log_config=None)
    config.load()
    install_into_uvicorn(config, ctx)
    assert config.ssl is ctx.context


# --------------------------------------------------------------------------- real sockets


def _implementations() -> list[Any]:
    params = []
    try:
        import httptools  # noqa: F401
        import uvloop  # noqa: F401

        params.append(pytest.param(("uvloop", "httptools"), id="uvloop-httptools"))
    except ImportError:
        pass
    params.append(pytest.param(("asyncio", "h11"), id="asyncio-h11"))
    return params


@dataclass
class LiveServer:
    port: int
    ctx: ReloadingSSLContext
    directory: Path
    server: uvicorn.Server
    thread: threading.Thread = field(repr=False)

    def swap(self, pair: Pair, timeout: float = 5.0) -> None:
        """Replace the files on disk like cert-manager would and wait until the watcher has loaded them."""
        write_pair(self.directory, pair)
        wait_for(
            lambda: self.ctx.current.serial_number == pair.serial,
            "the server to pick up the new certificate",
            timeout=timeout,
            interval=0.005,
        )


@pytest.fixture(params=_implementations())
def live_server(request: pytest.FixtureRequest, tmp_path: Path, ca1: CA) -> Iterator[LiveServer]:
    loop_name, http_name = request.param
    first = ca1.issue()
    ctx = ReloadingSSLContext(*write_pair(tmp_path, first))
    config = uvicorn.Config(
        _asgi_app(),
        loop=loop_name,
        http=http_name,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=60,
        timeout_graceful_shutdown=5,
    )
    install_into_uvicorn(config, ctx)
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    errors: list[BaseException] = []
    loop_modules: list[str] = []

    async def main() -> None:
        loop_modules.append(type(asyncio.get_running_loop()).__module__)
        # The watcher shares the server's loop and thread: that is what makes
        # the in-place load_cert_chain safe against concurrent handshakes.
        watcher = asyncio.create_task(ctx.watch(interval=0.01))
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
                runner.run(main())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{loop_name}", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "the server to start", interval=0.01)
    assert thread.is_alive(), errors
    try:
        yield LiveServer(port=port, ctx=ctx, directory=tmp_path, server=server, thread=thread)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
    assert not thread.is_alive(), "server did not shut down"
    assert errors == []
    # The requested event loop implementation was really used.
    assert loop_modules[0].startswith("uvloop" if loop_name == "uvloop" else "asyncio")


def fetch(port: int, client: ssl.SSLContext) -> tuple[int, bytes, int]:
    """One request on a brand-new connection; returns (status, body, served certificate serial)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname=HOSTNAME) as conn,
    ):
        serial = serial_of(conn.getpeercert(binary_form=True))
        conn.sendall(b"GET / HTTP/1.1\r\nHost: " + HOSTNAME.encode() + b"\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    status, body = _parse_response(b"".join(chunks))
    return status, body, serial


def _parse_response(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


class KeepAliveConnection:
    """A single persistent HTTP/1.1 connection, to show it survives a certificate swap."""

    def __init__(self, port: int, client: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = client.wrap_socket(raw, server_hostname=HOSTNAME)
        self.serial = serial_of(self.conn.getpeercert(binary_form=True))
        self.buffer = b""

    def request(self) -> tuple[int, bytes]:
        self.conn.sendall(b"GET / HTTP/1.1\r\nHost: " + HOSTNAME.encode() + b"\r\n\r\n")
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += self._recv()
        body, self.buffer = rest[:length], rest[length:]
        return int(head.split(b" ", 2)[1]), body

    def _recv(self) -> bytes:
        chunk = self.conn.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the keep-alive connection")
        return chunk

    def close(self) -> None:
        self.conn.close()


def test_live_server_serves_our_context(live_server: LiveServer, ca1: CA) -> None:
    status, body, serial = fetch(live_server.port, client_context(ca1.cert_pem))
    assert (status, body) == (200, b"https")
    assert serial == live_server.ctx.current.serial_number
    # An ordinary HTTPS client verifying against the CA (IP SAN 127.0.0.1) works too.
    with httpx.Client(verify=client_context(ca1.cert_pem)) as client:
        response = client.get(f"https://127.0.0.1:{live_server.port}/")
    assert response.status_code == 200
    assert response.text == "https"


@pytest.mark.parametrize("rotation", ["new-ca", "same-ca"], ids=["to-new-ca", "within-same-ca"])
def test_swap_serves_new_cert_to_new_connections_and_keeps_old_ones(
    live_server: LiveServer, ca1: CA, ca2: CA, rotation: str
) -> None:
    first_serial = live_server.ctx.current.serial_number
    new_ca = ca2 if rotation == "new-ca" else ca1
    trusting_both = client_context(merge_ca_bundle(ca1.cert_pem, new_ca.cert_pem))

    kept = KeepAliveConnection(live_server.port, trusting_both)
    try:
        assert kept.serial == first_serial
        assert kept.request() == (200, b"https")

        replacement = new_ca.issue()
        live_server.swap(replacement)

        status, body, serial = fetch(live_server.port, trusting_both)
        assert (status, body, serial) == (200, b"https", replacement.serial)

        # The connection opened before the swap still works, with the old certificate.
        assert kept.request() == (200, b"https")
        assert kept.serial == first_serial
        assert serial_of(kept.conn.getpeercert(binary_form=True)) == first_serial
    finally:
        kept.close()

    # Why the caBundle must be merged before switching: a client that only knows
    # the old CA cannot verify a certificate from the new one.
    only_old = client_context(ca1.cert_pem)
    if rotation == "new-ca":
        with pytest.raises(ssl.SSLCertVerificationError):
            fetch(live_server.port, only_old)
    else:
        assert fetch(live_server.port, only_old)[2] == replacement.serial


def test_broken_files_on_a_live_server_keep_the_old_certificate(live_server: LiveServer, ca1: CA) -> None:
    serving = live_server.ctx.current.serial_number
    write_file_atomic(live_server.directory / "tls.key", b"not a key")
    wait_for(
        lambda: live_server.ctx.last_error is not None, "the watcher to notice the broken key", timeout=5, interval=0.01
    )
    status, body, serial = fetch(live_server.port, client_context(ca1.cert_pem))
    assert (status, body, serial) == (200, b"https", serving)


def test_concurrent_requests_across_swaps_have_zero_failures(live_server: LiveServer, ca1: CA, ca2: CA) -> None:
    """Hammer the server from several threads (new connections and keep-alive) while the cert rotates."""
    trusted = client_context(merge_ca_bundle(ca1.cert_pem, ca2.cert_pem))
    stop = threading.Event()
    lock = threading.Lock()
    failures: list[str] = []
    seen_serials: set[int] = set()
    completed = [0]

    def new_connections() -> None:
        while not stop.is_set():
            try:
                status, body, serial = fetch(live_server.port, trusted)
                assert (status, body) == (200, b"https")
            except Exception as exc:
                with lock:
                    failures.append(f"new connection: {exc!r}")
                continue
            with lock:
                seen_serials.add(serial)
                completed[0] += 1

    def keep_alive() -> None:
        with httpx.Client(verify=trusted, http2=False) as client:
            while not stop.is_set():
                try:
                    response = client.get(f"https://127.0.0.1:{live_server.port}/")
                    assert (response.status_code, response.text) == (200, "https")
                except Exception as exc:
                    with lock:
                        failures.append(f"keep-alive: {exc!r}")
                    continue
                with lock:
                    completed[0] += 1

    workers = [threading.Thread(target=new_connections) for _ in range(6)]
    workers += [threading.Thread(target=keep_alive) for _ in range(2)]
    for worker in workers:
        worker.start()
    rotations = [ca2.issue(), ca2.issue(), ca1.issue(), ca2.issue()]
    served = [live_server.ctx.current.serial_number]
    try:
        for pair in rotations:
            time.sleep(0.15)
            live_server.swap(pair)
            served.append(pair.serial)
        time.sleep(0.15)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers)
    assert failures == []
    assert completed[0] > 50
    # Every certificate that was served was actually seen by new connections.
    assert set(served) <= seen_serials
    assert seen_serials <= set(served)


def test_certbundle_helpers_roundtrip_with_live_reload(tmp_path: Path) -> None:
    """The renewal flow end to end, without sockets: same CA renews, caBundle unchanged."""
    bundle: CertBundle = build_bundle(service=SERVICE, namespace=NAMESPACE)
    with ReloadingSSLContext.from_bundle(bundle, tmp_path) as ctx:
        renewed = build_bundle(
            service=SERVICE, namespace=NAMESPACE, ca_cert_pem=bundle.ca_cert_pem, ca_key_pem=bundle.ca_key_pem
        )
        ctx.update(cert_pem=renewed.cert_pem, key_pem=renewed.key_pem)
        client = client_context(bundle.ca_bundle_pem)
        assert memory_handshake(ctx.context, client) == x509.load_pem_x509_certificate(renewed.cert_pem).serial_number
