"""Minimal real registries on loopback for the mirror tests (to be folded into ``tests/registries.py``).

* :class:`LoopbackRegistry`: one CNCF Distribution process (Debian ``docker-registry``) on a
  free ``127.0.0.1`` port, TLS with a CA of our own, and either htpasswd (bcrypt, Basic auth)
  or the distribution spec's token auth backed by :class:`TokenServer`;
* :class:`TokenServer`: a token endpoint (TLS, loopback) that checks Basic credentials and
  issues ES256 JWTs with an ``x5c`` chain to the CA the registry trusts: what Docker Hub,
  Harbor or GitLab do, so the probe's Bearer flow meets a real ``WWW-Authenticate: Bearer``;
* :class:`HangingServer`: accepts TCP connections and never says a word (a registry that
  never answers: the probe must give up within its budget);
* :func:`build_image`: an OCI image made with ``umoci`` from the static busybox, pushed with
  ``skopeo`` by :meth:`LoopbackRegistry.push`, which returns the digest the registry stored.

Processes are stopped by PID; nothing listens beyond 127.0.0.1; passwords are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from webhook.tls.pki import build_ca, build_serving_cert

TOOLS = ("docker-registry", "skopeo", "umoci", "htpasswd")
INSTALL_HINT = "apt-get install docker-registry skopeo umoci busybox-static apache2-utils"


class RegistryFixtureError(RuntimeError):
    """A loopback registry, token server or image build that did not work."""


def missing_tools() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if static_busybox() is None:
        missing.append("busybox (static)")
    return missing


def static_busybox() -> Path | None:
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.is_file():
            with candidate.open("rb") as handle:
                head = handle.read(4096)
            if head.startswith(b"\x7fELF") and b"ld-linux" not in head and b"/lib64/ld" not in head:
                return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str], *, timeout: float = 120, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        # argv may carry --dest-creds: name the tool only.
        raise RegistryFixtureError(f"{argv[0]} {argv[1]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


@dataclass(frozen=True)
class LoopbackCA:
    """A CA, and a serving certificate for 127.0.0.1/localhost signed by it."""

    ca_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @classmethod
    def create(cls) -> LoopbackCA:
        ca_pem, ca_key = build_ca(common_name="mirror-tests-ca")
        cert, key = build_serving_cert(
            ca_cert_pem=ca_pem, ca_key_pem=ca_key, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        return cls(ca_pem=ca_pem, ca_key_pem=ca_key, cert_pem=cert, key_pem=key)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        return context

    def write(self, directory: Path) -> tuple[Path, Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        ca, cert, key = directory / "ca.crt", directory / "server.cert", directory / "server.key"
        ca.write_bytes(self.ca_pem)
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return ca, cert, key


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class OCIImage:
    layout: Path
    tag: str

    @property
    def source(self) -> str:
        return f"oci:{self.layout}:{self.tag}"


def build_image(layout: Path, tag: str, *, marker: str | None = None) -> OCIImage:
    """A busybox image in the OCI layout ``layout`` (``marker`` makes its digest distinct)."""
    busybox = static_busybox()
    if busybox is None:
        raise RegistryFixtureError(f"no static busybox ({INSTALL_HINT})")
    if not (layout / "index.json").exists():
        _run(["umoci", "init", "--layout", str(layout)])
    image = f"{layout}:{tag}"
    _run(["umoci", "new", "--image", image])
    bundle = layout.parent / f"bundle-{tag}"
    shutil.rmtree(bundle, ignore_errors=True)
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    _run(["umoci", "unpack", *rootless, "--image", image, str(bundle)])
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep", "echo", "true"):
        with contextlib.suppress(FileExistsError):
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc" / "image-marker").write_text(marker or tag)
    _run(["umoci", "repack", "--image", image, str(bundle)])
    _run(["umoci", "config", "--image", image, "--config.entrypoint", "/bin/sleep", "--config.cmd", "3600"])
    shutil.rmtree(bundle, ignore_errors=True)
    return OCIImage(layout=layout, tag=tag)


# --------------------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The distribution spec's token endpoint: Basic credentials in, an ES256 JWT with ``x5c`` out."""

    def __init__(self, ca: LoopbackCA, *, users: Mapping[str, str], service: str = "mirror-tests") -> None:
        self.users = dict(users)
        self.service = service
        self.issuer = "mirror-tests-token-issuer"
        self._ca = ca
        cert_pem, key_pem = build_serving_cert(
            ca_cert_pem=ca.ca_pem, ca_key_pem=ca.ca_key_pem, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        self._cert_der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key
        self._cert_pem, self._key_pem = cert_pem, key_pem
        self.requests: list[dict[str, Any]] = []
        #: refresh token -> user, for the OAuth2 ``refresh_token`` grant.
        self.refresh_tokens: dict[str, str] = {}
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}/token"

    def sign(self, claims: Mapping[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _issue(self, user: str | None, scopes: list[str]) -> dict[str, Any]:
        access = []
        if user is not None:
            for scope in scopes:
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind == "repository" and name:
                    access.append({"type": "repository", "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 30,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = self.sign(claims)
        return {"token": token, "access_token": token, "expires_in": 300}

    def start(self) -> TokenServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # never log (Authorization)
                return

            def do_GET(self) -> None:
                parsed = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                valid, user = owner._check(self.headers.get("Authorization"))
                owner.requests.append({"user": user, "scope": query.get("scope", [])})
                if not valid:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps(owner._issue(user, query.get("scope", []))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # OAuth2 refresh-token grant (Docker's identitytoken)
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                user = owner.refresh_tokens.get((form.get("refresh_token") or [""])[0])
                owner.requests.append({"user": user, "scope": form.get("scope", []), "grant": "refresh_token"})
                if (form.get("grant_type") or [""])[0] != "refresh_token" or user is None:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps(owner._issue(user, form.get("scope", []))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        directory = Path(tempfile.mkdtemp(prefix="token-server-"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with _temp_files(directory, self._cert_pem, self._key_pem) as (cert, key):
            context.load_cert_chain(cert, key)
        directory.rmdir()
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="token-server", daemon=True)
        self._thread.start()
        return self

    def _check(self, header: str | None) -> tuple[bool, str | None]:
        """``(valid, user)``: anonymous is valid with no user; wrong credentials are not valid."""
        if not header:
            return True, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False, None
        expected = self.users.get(user)
        if expected is not None and secrets.compare_digest(expected, password):
            return True, user
        return False, user

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextlib.contextmanager
def _temp_files(directory: Path, cert: bytes, key: bytes) -> Any:
    token = secrets.token_hex(6)
    cert_path, key_path = directory / f"tok-{token}.crt", directory / f"tok-{token}.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    key_path.chmod(0o600)
    try:
        yield str(cert_path), str(key_path)
    finally:
        cert_path.unlink(missing_ok=True)
        key_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the registry


class LoopbackRegistry:
    """A Distribution registry on ``127.0.0.1``: TLS always; htpasswd users, or ``token`` auth."""

    def __init__(
        self,
        root: Path,
        ca: LoopbackCA,
        *,
        users: Mapping[str, str] | None = None,
        token: TokenServer | None = None,
    ) -> None:
        self.root = root
        self.ca = ca
        self.users = dict(users or (token.users if token else {}))
        self.token = token
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    @property
    def cert_dir(self) -> Path:
        return self.root / "certs"

    def __enter__(self) -> LoopbackRegistry:
        return self.start()

    def __exit__(self, *_: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> LoopbackRegistry:
        self.root.mkdir(parents=True, exist_ok=True)
        _ca, cert, key = self.ca.write(self.cert_dir)
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}, "delete": {"enabled": True}},
            "http": {"tls": {"certificate": str(cert), "key": str(key)}, "secret": secrets.token_hex(16)},
        }
        if self.token is not None:
            bundle = self.root / "token-roots.pem"
            bundle.write_bytes(self.ca.ca_pem)
            config["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(bundle),
                }
            }
        else:
            htpasswd = self.root / "htpasswd"
            lines = [_run(["htpasswd", "-nbB", user, pw]).strip() for user, pw in self.users.items()]
            htpasswd.write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "mirror-tests", "path": str(htpasswd)}}
        for _attempt in range(3):
            self.port = free_port()
            config["http"]["addr"] = self.host
            (self.root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
            log = (self.root / "registry.log").open("ab")
            self._process = subprocess.Popen(
                ["docker-registry", "serve", str(self.root / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RegistryFixtureError(f"registry did not start: {self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        context = self.ca.client_context()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
                ):
                    tls.sendall(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    if tls.recv(64).startswith(b"HTTP/1."):
                        return True
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def log_tail(self, lines: int = 30) -> str:
        path = self.root / "registry.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def push(self, image: OCIImage, repository: str, tag: str, *, user: str | None = None) -> str:
        """Copy ``image`` to ``repository:tag`` as ``user`` (the first by default); the manifest digest."""
        name = user or next(iter(self.users))
        digest_file = self.root / f"digest-{secrets.token_hex(4)}"
        creds = f"{name}:{self.users[name]}"
        _run(
            [
                "skopeo",
                "--insecure-policy",  # a push of our own image; the machine may have no policy.json
                "copy",
                "--quiet",
                "--dest-cert-dir",
                str(self.cert_dir),
                "--dest-creds",
                creds,
                "--digestfile",
                str(digest_file),
                image.source,
                f"docker://{self.host}/{repository}:{tag}",
            ]
        )
        digest = digest_file.read_text().strip()
        digest_file.unlink()
        return digest

    def auth_entry(self, user: str | None = None) -> dict[str, str]:
        name = user or next(iter(self.users))
        password = self.users[name]
        return {
            "username": name,
            "password": password,
            "auth": base64.b64encode(f"{name}:{password}".encode()).decode(),
        }

    def dockerconfig_secret(self, name: str, namespace: str, user: str | None = None) -> dict[str, Any]:
        """A ``kubernetes.io/dockerconfigjson`` Secret (as the API returns it) for this registry."""
        config = json.dumps({"auths": {self.host: self.auth_entry(user)}}).encode()
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(config).decode()},
        }


class HangingServer:
    """Accepts connections on 127.0.0.1 and never answers (not even the TLS handshake)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hanging-server", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self._held:
            conn.close()
        self._sock.close()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
