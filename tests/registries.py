"""Real private container registries on loopback, and real images to push into them.

A ``Registry`` is one CNCF Distribution process (Debian package ``docker-registry``, binary
``docker-registry``) serving TLS on a free ``127.0.0.1`` port with htpasswd (bcrypt) auth,
its storage, config, certificates and log in a temp dir. ``BusyboxImages`` builds OCI images
with ``umoci`` from the static busybox of ``busybox-static`` (no network: the rootfs is one
file and a few symlinks); ``Registry.push`` copies one in with ``skopeo``, by tag, and
returns the digest the registry stored.

Why real parts: what a kubelet and containerd do with a pull secret (the ``auths`` key they
match, the ``WWW-Authenticate`` challenge, basic auth over TLS) is exactly what the tests
want to see working, so nothing here is emulated. Everything talks to 127.0.0.1 only.

Usage::

    images = BusyboxImages(tmp_path / "oci")
    app = images.image("app", entrypoint=["/bin/sh", "-c", "echo hello"])
    with Registry(users={"alice": "pw-1"}) as reg:
        pushed = reg.push(app, "team/app", "1.0")   # as the first user
        pushed.reference                            # "127.0.0.1:40123/team/app:1.0"
        reg.set_password("alice", "pw-2")           # rotation: effective when it returns
        reg.login_ok("alice", "pw-2")               # True
    # a pull-through mirror (users of its own) of an anonymous upstream:
    with Registry(users={}) as up, Registry(users={"bob": "b"}, upstream=up) as mirror:
        digest = up.push(app, "team/app", "1.0").digest
        mirror.manifest_digest("team/app", "1.0") == digest   # fetched from up

``Registry(users=..., token_auth=...)`` uses the distribution spec's token auth instead of
htpasswd (Bearer tokens from a token server, e.g. ``tests/mirror_registries.TokenServer``).

Distribution 2.8 re-reads its htpasswd file when the file's modification time changes (it
stats it on each authenticated request), so ``set_password`` rewrites the file atomically
with a new mtime and waits until the new password is accepted and the old one refused;
with ``restart=True`` it restarts the process by PID instead (same port, same storage).

Importable by unit tests and e2e tests alike: ``missing_tools()`` names what is not
installed, so a caller can skip (or fail, under ``PSI_REQUIRE_E2E=1``) with one line.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml

from tests.processes import LOOPBACK, HasLog, Spawned, free_port, wait_until
from webhook.tls.pki import build_ca, build_serving_cert

#: Debian package -> the binary it provides that this module runs.
REQUIRED_TOOLS: dict[str, str] = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "apache2-utils": "htpasswd",
}
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
#: busybox applets linked into every image's /bin (what entrypoints and probes use).
APPLETS = ("sh", "sleep", "echo", "cat", "true", "false", "ls", "env", "test", "date", "wget", "id")
INSTALL_HINT = "apt-get install docker-registry skopeo umoci busybox-static apache2-utils"


class RegistryError(RuntimeError):
    """A registry could not be started, or an image could not be built or pushed (message has the log tail)."""


# --------------------------------------------------------------------------- prerequisites


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a program interpreter (PT_INTERP), i.e. static.

    The image's rootfs holds nothing but this one file, so a dynamically linked busybox (Debian's
    ``busybox`` rather than ``busybox-static``) would fail to start in the container.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:  # ELF64 only (amd64/arm64)
        return False
    order: Literal["little", "big"] = "little" if data[5] == 1 else "big"
    phoff = int.from_bytes(data[32:40], order)
    phentsize = int.from_bytes(data[54:56], order)
    phnum = int.from_bytes(data[56:58], order)
    for i in range(phnum):
        p_type = int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], order)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def static_busybox() -> Path | None:
    """The statically linked busybox (Debian ``busybox-static``), or None."""
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file() and _is_static_elf(candidate):
            return candidate
    return None


def missing_tools() -> list[str]:
    """Debian packages whose binaries are missing (empty when everything here can run)."""
    missing = [pkg for pkg, binary in REQUIRED_TOOLS.items() if shutil.which(binary) is None]
    if static_busybox() is None:
        missing.append("busybox-static")
    return missing


def _run(argv: Sequence[str], what: str, *, env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    """Run a short command; RegistryError with its output if it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=None if env is None else dict(env)
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RegistryError(f"{what}: {err}") from err
    if done.returncode != 0:
        raise RegistryError(f"{what} failed ({done.returncode}): {' '.join(argv)}\n{done.stdout}{done.stderr}")
    return done.stdout


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class RegistryTLS:
    """A CA and the registry's serving certificate (IP SAN 127.0.0.1, DNS localhost), PEM."""

    ca_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls, ca: tuple[bytes, bytes] | None = None, common_name: str = "registry") -> RegistryTLS:
        """Certificates by the project's own builders; ``ca`` = (cert PEM, key PEM) to sign with, else a new CA.

        Sharing one CA between registries lets a client trust them all with one file.
        """
        validity = datetime.timedelta(days=2)
        if ca is None:
            ca = build_ca(common_name=f"{common_name}-ca", valid_for=validity)
        ca_pem, ca_key = ca
        cert_pem, key_pem = build_serving_cert(
            ca_cert_pem=ca_pem,
            ca_key_pem=ca_key,
            dns_names=["localhost"],
            ip_addresses=[LOOPBACK],
            valid_for=validity,
        )
        return cls(ca_pem=ca_pem, ca_key_pem=ca_key, cert_pem=cert_pem, key_pem=key_pem)

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting this CA alone."""
        return ssl.create_default_context(cadata=self.ca_pem.decode())


@dataclass(frozen=True)
class TokenAuth:
    """The distribution spec's token auth: where clients get tokens, and the CA the tokens' ``x5c`` chains to."""

    realm: str
    service: str
    issuer: str
    root_ca_pem: bytes


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class OCIImage:
    """An image in a local OCI layout (``umoci``'s output): what ``skopeo`` copies from."""

    layout: Path
    tag: str

    @property
    def transport_ref(self) -> str:
        """The skopeo/containers-image reference, ``oci:<layout>:<tag>``."""
        return f"oci:{self.layout}:{self.tag}"


@dataclass(eq=False)
class BusyboxImages:
    """Builds small OCI images around the static busybox, all in one layout sharing one layer.

    The base (rootfs: ``/bin/busybox`` plus applet symlinks, ``/tmp``) is unpacked and
    repacked once; each ``image()`` is a new tag with its own entrypoint/cmd/labels, which
    ``umoci config`` writes without touching the layer. Distinct ``labels`` give distinct
    digests, so tests can tell which image ran.
    """

    layout: Path
    _base: OCIImage | None = field(default=None, init=False, repr=False)

    def base(self) -> OCIImage:
        if self._base is not None:
            return self._base
        busybox = static_busybox()
        if busybox is None:
            raise RegistryError(f"no static busybox found ({INSTALL_HINT})")
        if shutil.which("umoci") is None:
            raise RegistryError(f"umoci not found ({INSTALL_HINT})")
        self.layout.parent.mkdir(parents=True, exist_ok=True)
        base = OCIImage(self.layout, "base")
        if not (self.layout / "index.json").exists():
            _run(["umoci", "init", "--layout", str(self.layout)], "umoci init")
        _run(["umoci", "new", "--image", base.transport_ref[4:]], "umoci new")
        with tempfile.TemporaryDirectory(prefix="psi-umoci-", dir=self.layout.parent) as tmp:
            bundle = Path(tmp) / "bundle"
            rootless = [] if os.geteuid() == 0 else ["--rootless"]
            _run(["umoci", "unpack", *rootless, "--image", base.transport_ref[4:], str(bundle)], "umoci unpack")
            rootfs = bundle / "rootfs"
            (rootfs / "bin").mkdir(parents=True, exist_ok=True)
            shutil.copy2(busybox, rootfs / "bin" / "busybox")
            for applet in APPLETS:
                (rootfs / "bin" / applet).symlink_to("busybox")
            (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
            for d in ("etc", "proc", "sys", "dev"):
                (rootfs / d).mkdir(exist_ok=True)
            (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
            _run(["umoci", "repack", "--image", base.transport_ref[4:], str(bundle)], "umoci repack")
        _run(
            [
                "umoci",
                "config",
                "--image",
                base.transport_ref[4:],
                "--config.env=PATH=/bin",
                "--config.workingdir=/",
                "--os=linux",
            ],
            "umoci config",
        )
        self._base = base
        return base

    def image(
        self,
        tag: str,
        *,
        entrypoint: Sequence[str] = ("/bin/sleep", "3600"),
        cmd: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> OCIImage:
        """A new tag ``tag`` of the base with this entrypoint/cmd (and labels) in its config."""
        base = self.base()
        argv = ["umoci", "config", "--image", base.transport_ref[4:], "--tag", tag, "--clear=config.entrypoint"]
        argv += [f"--config.entrypoint={arg}" for arg in entrypoint]
        argv.append("--clear=config.cmd")
        argv += [f"--config.cmd={arg}" for arg in cmd]
        argv += [f"--config.label={key}={value}" for key, value in (labels or {"psi.image": tag}).items()]
        _run(argv, f"umoci config (tag {tag})")
        return OCIImage(self.layout, tag)

    def archive(self, image: OCIImage, path: Path, name: str) -> Path:
        """A docker-archive tarball of ``image`` tagged ``name`` (for ``ctr images import``), written to ``path``."""
        path.unlink(missing_ok=True)
        _run(
            ["skopeo", "--insecure-policy", "copy", "--quiet", image.transport_ref, f"docker-archive:{path}:{name}"],
            f"skopeo copy to docker-archive {path}",
        )
        return path


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PushedImage:
    """An image as pushed: ``reference`` (by tag) and the ``digest`` the registry stored."""

    registry: str
    """``127.0.0.1:PORT``"""
    repository: str
    tag: str
    digest: str
    """``sha256:...`` of the manifest"""

    @property
    def reference(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"

    @property
    def by_digest(self) -> str:
        return f"{self.registry}/{self.repository}@{self.digest}"


def _htpasswd_line(user: str, password: str) -> str:
    """One bcrypt htpasswd line (the only hash Distribution accepts); cost 4 keeps each request cheap."""
    out = _run(["htpasswd", "-nbB", "-C", "4", user, password], "htpasswd").strip()
    if not out.startswith(f"{user}:$2"):
        raise RegistryError(f"htpasswd gave no bcrypt entry for {user!r}: {out!r}")
    return out


@dataclass(eq=False)
class Registry(HasLog):
    """One Distribution process with htpasswd auth and TLS on 127.0.0.1 (see the module docstring)."""

    users: Mapping[str, str]
    """username -> password (the first is the default pusher); empty: an anonymous registry
    (no auth at all), e.g. the upstream of a mirror (see ``upstream``)."""
    name: str = "registry"
    workdir: Path | None = None
    """Config, storage, certificates, htpasswd and log; a temp dir (removed by ``stop``) when None."""
    tls: RegistryTLS | None = None
    """Certificates to serve; made with a fresh CA when None."""
    keep_workdir: bool = False
    upstream: Registry | None = None
    """Make this a pull-through mirror (Distribution's ``proxy`` mode) of ``upstream``: pulls
    of what this registry lacks are fetched from there; pushes are refused. Distribution 2.8
    sends credentials only to an upstream using token auth (it discovers Bearer realms and
    never answers a Basic challenge), so the upstream here is an anonymous registry
    (``users={}``); the mirror itself can still require its own users."""
    upstream_user: str | None = None
    """Credentials for a token-auth upstream (see above): ignored by a Basic-auth upstream."""
    token_auth: TokenAuth | None = None
    """Token auth (Bearer) instead of htpasswd: the token server checks ``users`` (the pusher's too)."""

    port: int = field(default=0, init=False)
    startup_seconds: float = field(default=0.0, init=False)
    restarts: int = field(default=0, init=False)
    _users: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _proc: Spawned | None = field(default=None, init=False, repr=False)
    _dir: Path | None = field(default=None, init=False, repr=False)
    _tmp: Path | None = field(default=None, init=False, repr=False)

    # ----------------------------------------------------------------- paths and properties

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise RegistryError(f"registry {self.name} not started")
        return self._dir

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of image references and the ``auths`` key."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    @property
    def cert_dir(self) -> Path:
        """A directory with only ``ca.crt``: skopeo's ``--cert-dir``, the Docker ``certs.d`` layout."""
        return self.dir / "client-certs"

    @property
    def ca_path(self) -> Path:
        return self.cert_dir / "ca.crt"

    @property
    def htpasswd_path(self) -> Path:
        return self.dir / "htpasswd"

    @property
    def log_path(self) -> Path:
        return self.dir / "registry.log"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    @property
    def current_users(self) -> dict[str, str]:
        """The users and passwords the registry accepts now."""
        return dict(self._users)

    def auth_entry(self, user: str | None = None) -> dict[str, str]:
        """A DockerConfigJSON ``auths`` value for ``user`` (default: the first user) with its current password."""
        user = user or next(iter(self._users))
        password = self._users[user]
        return {
            "username": user,
            "password": password,
            "auth": base64.b64encode(f"{user}:{password}".encode()).decode(),
        }

    def dockerconfigjson(self, user: str | None = None) -> bytes:
        """``{"auths": {"127.0.0.1:PORT": {...}}}`` for ``user``: a pull secret's whole content."""
        return json.dumps({"auths": {self.host: self.auth_entry(user)}}).encode()

    def dockerconfig_secret(self, name: str, namespace: str | None = None, user: str | None = None) -> dict[str, Any]:
        """A ``kubernetes.io/dockerconfigjson`` Secret ``name`` (as the API returns it) for ``user`` here."""
        metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(self.dockerconfigjson(user)).decode()},
        }

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> Registry:
        """Write config and credentials, spawn the process and wait until ``/v2/`` answers (401)."""
        if self._proc is not None:
            raise RegistryError(f"registry {self.name} already started")
        missing = missing_tools()
        if missing:
            raise RegistryError(f"missing: {', '.join(missing)} ({INSTALL_HINT})")
        t0 = time.monotonic()
        if self.workdir is None:
            self._tmp = Path(tempfile.mkdtemp(prefix=f"psi-{self.name}-"))
            self._dir = self._tmp
        else:
            self._dir = Path(self.workdir)
            self._dir.mkdir(parents=True, exist_ok=True)
        try:
            tls = self.tls or RegistryTLS.create(common_name=self.name)
            self.tls = tls
            self.cert_dir.mkdir(exist_ok=True)
            self.ca_path.write_bytes(tls.ca_pem)
            (self.dir / "server.crt").write_bytes(tls.cert_pem)
            (self.dir / "server.key").write_bytes(tls.key_pem)
            (self.dir / "server.key").chmod(0o600)
            (self.dir / "storage").mkdir(exist_ok=True)
            self._write_htpasswd(dict(self.users))
            last: RegistryError | None = None
            for _ in range(3):  # a free port can be taken by someone else before we bind it
                self.port = free_port()
                try:
                    self._spawn_and_wait(timeout)
                    break
                except RegistryError as err:
                    last = err
                    if "address already in use" not in str(err):
                        raise
            else:
                assert last is not None
                raise last
        except BaseException:
            self.keep_workdir = self.keep_workdir or self._dir is not None
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _config(self) -> dict[str, object]:
        return {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.dir / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"{LOOPBACK}:{self.port}",
                "tls": {"certificate": str(self.dir / "server.crt"), "key": str(self.dir / "server.key")},
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            **self._auth_config(),
            **self._proxy_config(),
        }

    def _auth_config(self) -> dict[str, object]:
        if self.token_auth is not None:
            bundle = self.dir / "token-roots.pem"
            bundle.write_bytes(self.token_auth.root_ca_pem)
            token = self.token_auth
            return {
                "auth": {
                    "token": {
                        "realm": token.realm,
                        "service": token.service,
                        "issuer": token.issuer,
                        "rootcertbundle": str(bundle),
                    }
                }
            }
        if self._users:
            return {"auth": {"htpasswd": {"realm": self.name, "path": str(self.htpasswd_path)}}}
        return {}

    def _proxy_config(self) -> dict[str, object]:
        if self.upstream is None:
            return {}
        proxy: dict[str, str] = {"remoteurl": self.upstream.url}
        if self.upstream_user is not None:
            proxy["username"] = self.upstream_user
            proxy["password"] = self.upstream.current_users[self.upstream_user]
        return {"proxy": proxy}

    def _spawn_and_wait(self, timeout: float) -> None:
        config = self.dir / "config.yml"
        config.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        argv = [shutil.which("docker-registry") or "docker-registry", "serve", str(config)]
        # Distribution reads REGISTRY_* variables as config overrides: never inherit any.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        if self.upstream is not None:
            # Go reads its trusted roots from SSL_CERT_FILE: the mirror trusts exactly the upstream's CA
            env["SSL_CERT_FILE"] = str(self.upstream.ca_path)
        self._proc = Spawned.start(argv, self.log_path, name=f"registry {self.name}", cwd=self.dir, env=env)
        expected = 401 if self._users else 200
        wait_until(
            lambda: self._status("/v2/") == expected,
            f"registry {self.name} answering /v2/ with {expected}",
            timeout,
            watch=[self._proc],
            error=RegistryError,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process started here (SIGKILL if it lingers); remove the temp dir unless kept."""
        self._stop_process(timeout)
        if self._tmp is not None and not self.keep_workdir:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self._dir = None

    def restart(self, timeout: float = 30.0) -> None:
        """Stop the process by PID and start it again on the same port with the same storage."""
        self._stop_process(10.0)
        self._spawn_and_wait(timeout)
        self.restarts += 1

    def _stop_process(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(timeout)

    # ----------------------------------------------------------------- credentials

    def _write_htpasswd(self, users: dict[str, str]) -> None:
        """Replace the htpasswd file atomically, with an mtime that differs from the old one's."""
        lines = "".join(_htpasswd_line(user, password) + "\n" for user, password in users.items())
        target = self.htpasswd_path
        old_mtime = target.stat().st_mtime_ns if target.exists() else 0
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(lines)
        tmp.chmod(0o600)
        new_mtime = max(time.time_ns(), old_mtime + 1_000_000_000)
        os.utime(tmp, ns=(new_mtime, new_mtime))
        os.replace(tmp, target)
        self._users = users

    def set_users(self, users: Mapping[str, str], *, restart: bool = False, timeout: float = 10.0) -> float:
        """Make the registry accept exactly ``users``; returns the seconds until it did.

        Without ``restart`` this relies on Distribution re-reading the changed file (2.8 does);
        with it, or if the change is not seen within ``timeout``, the process is restarted by PID.
        (A mirror's credentials for its upstream are config, not htpasswd: after rotating the
        upstream's password, ``restart()`` the mirror.)
        """
        old = dict(self._users)
        t0 = time.monotonic()
        self._write_htpasswd(dict(users))
        if restart:
            self.restart()

        def effective() -> bool:
            accepted = all(self.login_ok(u, p) for u, p in self._users.items())
            revoked = [(u, p) for u, p in old.items() if self._users.get(u) != p]
            return accepted and not any(self.login_ok(u, p) for u, p in revoked)

        deadline = time.monotonic() + timeout
        while not effective():
            if time.monotonic() > deadline:
                if restart:
                    raise RegistryError(f"registry {self.name} does not accept the new users after a restart")
                self.restart()
                deadline = time.monotonic() + timeout
                restart = True
                continue
            time.sleep(0.05)
        return time.monotonic() - t0

    def set_password(self, user: str, password: str, *, restart: bool = False) -> float:
        """Rotate ``user``'s password (the old one stops working); seconds until effective."""
        return self.set_users({**self._users, user: password}, restart=restart)

    # ----------------------------------------------------------------- HTTP

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def _status(self, path: str, user: str | None = None, password: str | None = None) -> int | None:
        """The HTTP status of GET ``path`` (None when nothing answers)."""
        headers = {}
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(self.url + path, headers=headers)  # noqa: S310 - https://127.0.0.1
        try:
            with urllib.request.urlopen(request, timeout=2, context=self.ssl_context()) as resp:  # noqa: S310
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except (OSError, urllib.error.URLError):
            return None

    def login_ok(self, user: str, password: str) -> bool:
        """True if the registry accepts ``user``/``password`` (``GET /v2/`` with basic auth is 200)."""
        return self._status("/v2/", user, password) == 200

    def manifest_digest(self, repository: str, tag: str, user: str | None = None) -> str | None:
        """The digest the registry serves for ``repository:tag`` (``Docker-Content-Digest``), or None."""
        headers = {
            "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        }
        user = user or next(iter(self._users), None)
        if user is not None:
            token = base64.b64encode(f"{user}:{self._users[user]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(  # noqa: S310 - https://127.0.0.1
            f"{self.url}/v2/{repository}/manifests/{tag}", method="HEAD", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.ssl_context()) as resp:  # noqa: S310
                digest = resp.headers.get("Docker-Content-Digest")
                return str(digest) if digest else None
        except (OSError, urllib.error.URLError):
            return None

    # ----------------------------------------------------------------- images

    def push(self, image: OCIImage, repository: str, tag: str, *, user: str | None = None) -> PushedImage:
        """Copy ``image`` to ``<host>/<repository>:<tag>`` with skopeo as ``user`` (default: the first)."""
        user = user or next(iter(self._users), None)
        creds = ["--dest-no-creds"] if user is None else ["--dest-creds", f"{user}:{self._users[user]}"]
        digest_file = self.dir / f".digest-{os.getpid()}-{time.monotonic_ns()}"
        # a private auth file: skopeo must use the given credentials, never the machine's
        env = {**os.environ, "REGISTRY_AUTH_FILE": str(self.dir / "skopeo-auth.json")}
        try:
            _run(
                [
                    "skopeo",
                    "--insecure-policy",  # signature policy only; TLS is verified (--dest-cert-dir)
                    "copy",
                    "--quiet",
                    "--dest-cert-dir",
                    str(self.cert_dir),
                    *creds,
                    "--digestfile",
                    str(digest_file),
                    image.transport_ref,
                    f"docker://{self.host}/{repository}:{tag}",
                ],
                f"skopeo push to {self.host}/{repository}:{tag}",
                env=env,
            )
            digest = digest_file.read_text().strip()
        finally:
            digest_file.unlink(missing_ok=True)
        if not digest.startswith("sha256:"):
            raise RegistryError(f"skopeo reported no digest for {self.host}/{repository}:{tag}: {digest!r}")
        return PushedImage(registry=self.host, repository=repository, tag=tag, digest=digest)

    # ----------------------------------------------------------------- logs

    def manifest_requests(self, repository: str, *, since: int = 0) -> int:
        """How many manifest GET/HEADs for ``repository`` were answered 200 (after log offset ``since``).

        Distribution logs one "response completed" line per request; a pull starts with the
        manifest request, and without valid credentials it is answered 401 instead, so this
        counts successful (authenticated) pull starts.
        """
        count = 0
        for line in self.logs(since).splitlines():
            if "response completed" not in line or "http.response.status=200" not in line:
                continue
            if "http.request.method=GET" not in line and "http.request.method=HEAD" not in line:
                continue
            if f"/v2/{repository}/manifests/" in line:
                count += 1
        return count


__all__ = [
    "INSTALL_HINT",
    "BusyboxImages",
    "OCIImage",
    "PushedImage",
    "Registry",
    "RegistryError",
    "RegistryTLS",
    "TokenAuth",
    "missing_tools",
    "static_busybox",
]
