"""What the mirror tests need beyond ``tests/registries.py``: a token server, and a server that never answers.

* :class:`TokenServer`: a token endpoint (TLS, loopback) that checks Basic credentials and
  issues ES256 JWTs with an ``x5c`` chain to the CA the registry trusts: what Docker Hub,
  Harbor or GitLab do, so the probe's Bearer flow meets a real ``WWW-Authenticate: Bearer``
  (a :class:`~tests.registries.Registry` with ``token_auth=server.auth()``);
* :class:`HangingServer`: accepts TCP connections and never says a word (a registry that
  never answers: the probe must give up within its budget);
* :class:`LoopbackRegistry`, :class:`LoopbackCA` and :func:`build_image`: the names the probe
  tests use, as views onto :class:`~tests.registries.Registry`, :class:`~tests.registries.RegistryTLS`
  and :class:`~tests.registries.BusyboxImages` (which start, wait for and stop the process by PID).

Nothing listens beyond 127.0.0.1; passwords are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import secrets
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.registries import INSTALL_HINT, BusyboxImages, OCIImage, Registry, RegistryTLS, TokenAuth, missing_tools
from webhook.tls.pki import build_serving_cert

#: A CA and a serving certificate for 127.0.0.1/localhost it signed (``LoopbackCA.create()``).
LoopbackCA = RegistryTLS


def build_image(layout: Path, tag: str, *, marker: str | None = None) -> OCIImage:
    """A busybox image tagged ``tag`` in the OCI layout ``layout`` (``marker`` makes its digest distinct)."""
    return BusyboxImages(layout).image(tag, labels={"psi.image": marker or tag})


class LoopbackRegistry:
    """A ``Registry`` in ``root`` with ``ca``'s certificate; htpasswd ``users``, or ``token``."""

    def __init__(
        self,
        root: Path,
        ca: RegistryTLS,
        *,
        users: Mapping[str, str] | None = None,
        token: TokenServer | None = None,
    ) -> None:
        self.root = root
        self.ca = ca
        self.token = token
        self.registry = Registry(
            users=dict(users or (token.users if token else {})),
            name=f"mirror-{root.name}",
            workdir=root,
            tls=ca,
            token_auth=None if token is None else token.auth(),
        )

    @property
    def users(self) -> dict[str, str]:
        return self.registry.current_users

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def url(self) -> str:
        return self.registry.url

    def start(self, timeout: float = 30.0) -> LoopbackRegistry:
        self.registry.start(timeout)
        return self

    def stop(self) -> None:
        self.registry.stop()

    def log_tail(self, lines: int = 30) -> str:
        return self.registry.log_tail(lines)

    def push(self, image: OCIImage, repository: str, tag: str, *, user: str | None = None) -> str:
        """Copy ``image`` to ``repository:tag`` as ``user`` (the first by default); the manifest digest."""
        return self.registry.push(image, repository, tag, user=user).digest

    def dockerconfig_secret(self, name: str, namespace: str, user: str | None = None) -> dict[str, Any]:
        """A ``kubernetes.io/dockerconfigjson`` Secret (as the API returns it) for this registry."""
        return self.registry.dockerconfig_secret(name, namespace, user)


# --------------------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The distribution spec's token endpoint: Basic credentials in, an ES256 JWT with ``x5c`` out."""

    def __init__(self, ca: RegistryTLS, *, users: Mapping[str, str], service: str = "mirror-tests") -> None:
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

    def auth(self) -> TokenAuth:
        """What a registry's config needs to send its clients here and trust the tokens (a started server)."""
        return TokenAuth(realm=self.realm, service=self.service, issuer=self.issuer, root_ca_pem=self._ca.ca_pem)

    def start(self) -> TokenServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # never log (Authorization)
                return

            def _answer(self, user: str | None, scopes: list[str] | None) -> None:
                """A token for ``user`` and ``scopes`` (200, JSON); 401 without a body when ``scopes`` is None."""
                if scopes is None:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps(owner._issue(user, scopes)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                parsed = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                valid, user = owner._check(self.headers.get("Authorization"))
                owner.requests.append({"user": user, "scope": query.get("scope", [])})
                self._answer(user, query.get("scope", []) if valid else None)

            def do_POST(self) -> None:  # OAuth2 refresh-token grant (Docker's identitytoken)
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                user = owner.refresh_tokens.get((form.get("refresh_token") or [""])[0])
                owner.requests.append({"user": user, "scope": form.get("scope", []), "grant": "refresh_token"})
                valid = (form.get("grant_type") or [""])[0] == "refresh_token" and user is not None
                self._answer(user, form.get("scope", []) if valid else None)

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


__all__ = [
    "INSTALL_HINT",
    "HangingServer",
    "LoopbackCA",
    "LoopbackRegistry",
    "TokenServer",
    "build_image",
    "missing_tools",
]
