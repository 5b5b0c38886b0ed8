"""Serve TLS with a certificate that can be replaced without restarting the server.

The serving certificate is short-lived (cert-manager, or our own renewal,
rewrites ``tls.crt``/``tls.key`` on disk), but restarting the webhook to pick
it up would drop admission requests.  :class:`ReloadingSSLContext` owns one
:class:`ssl.SSLContext` for the whole life of the process and calls
``load_cert_chain`` on *that same object* when the files change:

* OpenSSL copies the certificate/key into each connection when it is created,
  so new handshakes get the new certificate while established (keep-alive)
  connections continue undisturbed with the old one;
* uvicorn (and asyncio) hold a reference to the context, not a copy, so no
  server-side plumbing is needed after start-up.

A failed ``load_cert_chain`` is not harmless: OpenSSL may already have
replaced the certificate and dropped the old key, leaving a context that can
no longer complete *any* handshake.  Every reload therefore reads the files
once, validates the pair in memory with ``cryptography``, loads the validated
bytes into a throw-away context, and only then into the live one.  The live
load reads a private snapshot of the validated bytes (an anonymous ``memfd``
on Linux, else a 0700 temporary directory), so a writer that is halfway
through replacing the files can never slip an unvalidated pair in.

Thread-safety: ``reload``/``maybe_reload`` mutate the live context, so call
them on the thread that runs the server's event loop (``watch`` does exactly
that).  Handshakes also run on that thread, so they never observe a
half-loaded context.

Plugging into uvicorn::

    ctx = ReloadingSSLContext(cert_file="/certs/tls.crt", key_file="/certs/tls.key")
    config = uvicorn.Config(app, host="0.0.0.0", port=8443,
                            ssl_context_factory=ctx.uvicorn_ssl_context_factory)
    # or: install_into_uvicorn(config, ctx)
    server = uvicorn.Server(config)

    async def main() -> None:
        watcher = asyncio.create_task(ctx.watch(interval=10))
        try:
            await server.serve()
        finally:
            watcher.cancel()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from webhook.tls.certs import write_file_atomic
from webhook.tls.pki import TLS_CERT_FILE, TLS_KEY_FILE, CertBundle

if TYPE_CHECKING:
    import uvicorn

__all__ = [
    "CertificateInfo",
    "CertificateReloadError",
    "ReloadingSSLContext",
    "install_into_uvicorn",
]

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]


class CertificateReloadError(Exception):
    """The certificate/key files could not be (re)loaded; the previous certificate is still served.

    Messages describe *what* is wrong (file name, reason) and never include
    file contents, so they are safe to log.
    """


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """Loggable facts about the certificate being served (nothing secret)."""

    serial_number: int
    subject: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> CertificateInfo:
        return cls(
            serial_number=cert.serial_number,
            subject=cert.subject.rfc4514_string(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        )

    def describe(self) -> str:
        return (
            f"subject={self.subject!r} serial={self.serial_number:x} "
            f"not_after={self.not_after.isoformat()} sha256={self.fingerprint_sha256[:16]}"
        )


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _digest(cert_pem: bytes, key_pem: bytes) -> str:
    # Length-prefix the parts so (a, bc) and (ab, c) hash differently.
    hasher = hashlib.sha256()
    for part in (cert_pem, key_pem):
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


def _validate_pair(cert_pem: bytes, key_pem: bytes, *, now: datetime) -> CertificateInfo:
    """Check in memory that the pair is usable; return the leaf's info or raise CertificateReloadError."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CertificateReloadError(f"certificate file is not valid PEM: {exc}") from None
    leaf = chain[0]
    try:
        # password=None also rejects encrypted keys here, before OpenSSL would
        # try to prompt for a passphrase on the (non-existent) terminal.
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateReloadError(f"private key file is not a usable unencrypted PEM key: {exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise CertificateReloadError(
            "private key does not match the certificate (files are probably being updated one at a time)"
        )
    info = CertificateInfo.from_certificate(leaf)
    if info.not_after <= now:
        raise CertificateReloadError(f"certificate expired at {info.not_after.isoformat()} ({info.describe()})")
    return info


@functools.cache
def _memfd_available() -> bool:
    """Probe once whether anonymous memory files can be reopened by path (Linux with /proc)."""
    if not hasattr(os, "memfd_create"):
        return False
    try:
        fd = os.memfd_create("pullsecret-injector-probe", os.MFD_CLOEXEC)
    except OSError:  # e.g. forbidden by a seccomp profile
        return False
    try:
        os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY))
    except OSError:  # no /proc, or a restricted one
        return False
    finally:
        os.close(fd)
    return True


@contextlib.contextmanager
def _staged_pair(cert_pem: bytes, key_pem: bytes, staging_dir: Path | None) -> Iterator[tuple[str, str]]:
    """Expose validated bytes as file paths for ``load_cert_chain`` (which only accepts paths).

    Prefers anonymous memory files so a read-only root filesystem needs no
    writable scratch space; falls back to a private temporary directory.
    """
    if staging_dir is None and _memfd_available():
        fds: list[int] = []
        try:
            for name, data in ((TLS_CERT_FILE, cert_pem), (TLS_KEY_FILE, key_pem)):
                fd = os.memfd_create(f"pullsecret-injector-{name}", os.MFD_CLOEXEC)
                fds.append(fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
        except OSError:
            # memfd may be forbidden by a seccomp profile: use a directory instead.
            for fd in fds:
                os.close(fd)
            fds = []
        if fds:
            try:
                yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
            finally:
                for fd in fds:
                    os.close(fd)
            return
    # mkdtemp creates the directory 0700; files are written 0600.
    with tempfile.TemporaryDirectory(prefix="pullsecret-injector-tls-", dir=staging_dir) as tmp:
        cert_path, key_path = Path(tmp) / TLS_CERT_FILE, Path(tmp) / TLS_KEY_FILE
        write_file_atomic(cert_path, cert_pem, mode=0o600)
        write_file_atomic(key_path, key_pem, mode=0o600)
        yield str(cert_path), str(key_path)


class ReloadingSSLContext:
    """One long-lived server ``SSLContext`` whose certificate can be swapped in place.

    The constructor loads the files and raises :class:`CertificateReloadError`
    if they are unusable, so a misconfigured pod fails fast at start-up
    instead of serving nothing.  Afterwards, a bad update never replaces a good
    certificate.
    """

    def __init__(
        self,
        cert_file: StrPath,
        key_file: StrPath,
        *,
        minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
        staging_dir: StrPath | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if minimum_version < ssl.TLSVersion.TLSv1_2:
            raise ValueError("TLS versions below 1.2 are not allowed")
        self._cert_file = Path(cert_file)
        self._key_file = Path(key_file)
        self._staging_dir = Path(staging_dir) if staging_dir is not None else None
        self._clock = clock
        self._owned_dir: Path | None = None
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.minimum_version = minimum_version
        self._loaded_digest: str | None = None
        self._rejected_digest: str | None = None
        self._last_error: CertificateReloadError | None = None
        self._reload_count = 0
        self._info = self.reload()

    @classmethod
    def from_bundle(
        cls,
        bundle: CertBundle,
        directory: StrPath | None = None,
        *,
        minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
        clock: Callable[[], datetime] = _utcnow,
    ) -> ReloadingSSLContext:
        """Serve an in-memory :class:`~webhook.tls.pki.CertBundle` (e.g. self-generated at start-up).

        ``load_cert_chain`` only accepts paths, so the pair is written into a
        new private directory (0700, files 0600) created *inside*
        ``directory`` - pass a writable mount (an ``emptyDir``, ideally
        ``medium: Memory``) when the root filesystem is read-only; the default
        is the system temp dir.  Renew later with
        ``ctx.update(cert_pem=..., key_pem=...)``; ``ctx.close()`` removes the
        directory.
        """
        parent = None if directory is None else Path(directory)
        private_dir = Path(tempfile.mkdtemp(prefix="pullsecret-injector-tls-", dir=parent))
        try:
            os.chmod(private_dir, 0o700)
            cert_file, key_file = private_dir / TLS_CERT_FILE, private_dir / TLS_KEY_FILE
            write_file_atomic(key_file, bundle.key_pem, mode=0o600)
            write_file_atomic(cert_file, bundle.cert_pem, mode=0o600)
            ctx = cls(cert_file, key_file, minimum_version=minimum_version, clock=clock)
        except BaseException:
            shutil.rmtree(private_dir, ignore_errors=True)
            raise
        ctx._owned_dir = private_dir
        return ctx

    # ------------------------------------------------------------------ accessors

    @property
    def context(self) -> ssl.SSLContext:
        """The live context: hand this object to the server once; it stays valid across reloads."""
        return self._context

    @property
    def cert_file(self) -> Path:
        return self._cert_file

    @property
    def key_file(self) -> Path:
        return self._key_file

    @property
    def current(self) -> CertificateInfo:
        """The certificate new handshakes are served with."""
        return self._info

    @property
    def last_error(self) -> CertificateReloadError | None:
        """The most recent failed reload since the last success (for health checks/metrics)."""
        return self._last_error

    @property
    def reload_count(self) -> int:
        """Successful loads, including the initial one."""
        return self._reload_count

    # ------------------------------------------------------------------ loading

    def _read(self) -> tuple[bytes, bytes]:
        try:
            return self._cert_file.read_bytes(), self._key_file.read_bytes()
        except OSError as exc:
            raise CertificateReloadError(f"cannot read certificate files: {exc}") from None

    def _install(self, cert_pem: bytes, key_pem: bytes, digest: str) -> CertificateInfo:
        info = _validate_pair(cert_pem, key_pem, now=self._clock())
        with _staged_pair(cert_pem, key_pem, self._staging_dir) as (cert_path, key_path):
            # Dry run on a scratch context: if OpenSSL rejects something
            # cryptography accepted, the live context is left untouched.
            scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                scratch.load_cert_chain(cert_path, key_path)
            except (ssl.SSLError, OSError) as exc:
                raise CertificateReloadError(f"OpenSSL rejected the certificate/key pair: {exc}") from None
            self._context.load_cert_chain(cert_path, key_path)
        self._loaded_digest = digest
        self._rejected_digest = None
        self._last_error = None
        self._info = info
        self._reload_count += 1
        return info

    def _attempt(self, *, force: bool) -> CertificateInfo | None:
        try:
            cert_pem, key_pem = self._read()
            digest = _digest(cert_pem, key_pem)
            if not force and digest in (self._loaded_digest, self._rejected_digest):
                return None
            try:
                return self._install(cert_pem, key_pem, digest)
            except CertificateReloadError:
                self._rejected_digest = digest
                raise
        except CertificateReloadError as exc:
            self._last_error = exc
            raise

    def reload(self) -> CertificateInfo:
        """Load the files now, even if unchanged.  Raises :class:`CertificateReloadError` on failure.

        On failure the previously loaded certificate keeps being served.
        """
        info = self._attempt(force=True)
        assert info is not None
        return info

    def maybe_reload(self) -> bool:
        """Reload if the files' content changed; return True if a new certificate is now served.

        Content hashes are compared rather than mtimes: kubelet's atomic
        symlink swap, coarse filesystem timestamps and same-size rewrites all
        defeat mtime checks, and hashing two small files is negligible.
        Raises :class:`CertificateReloadError` the first time a given broken
        content is seen; the same broken content is not retried (or reported)
        again until the files change.  Unreadable files are reported on every
        call, since that condition is not tied to any content.
        """
        return self._attempt(force=False) is not None

    def update(self, *, cert_pem: bytes, key_pem: bytes) -> CertificateInfo:
        """Write a new pair to our files (atomically) and serve it.

        Validation happens first, so a bad pair never reaches the disk and
        the current certificate stays in place.  Meant for contexts created
        by :meth:`from_bundle` (the self-managed certificate: ``serve`` builds
        its context that way and calls this after a renewal); for files managed by someone else (a mounted Secret),
        let that owner write them and rely on :meth:`watch`.
        """
        _validate_pair(cert_pem, key_pem, now=self._clock())
        write_file_atomic(self._key_file, key_pem, mode=0o600)
        write_file_atomic(self._cert_file, cert_pem, mode=0o600)
        return self.reload()

    async def watch(self, interval: float = 10.0) -> NoReturn:
        """Poll the files every ``interval`` seconds and reload on change, forever (cancel to stop).

        Failures are logged and the old certificate keeps being served; the
        loop itself never dies from a bad file.  Runs on the event loop's
        thread, which is what makes the in-place reload safe.
        """
        if interval <= 0:
            raise ValueError("interval must be positive")
        while True:
            await asyncio.sleep(interval)
            try:
                if self.maybe_reload():
                    logger.info("reloaded TLS serving certificate from %s: %s", self._cert_file, self._info.describe())
            except CertificateReloadError as exc:
                logger.warning(
                    "keeping current TLS certificate (%s); could not load %s: %s",
                    self._info.describe(),
                    self._cert_file,
                    exc,
                )
            except Exception:
                # Defensive: an unexpected bug must not silently stop reloads.
                logger.exception("unexpected error while checking the TLS certificate files")

    # ------------------------------------------------------------------ uvicorn

    def uvicorn_ssl_context_factory(
        self, config: uvicorn.Config, default_factory: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        """``uvicorn.Config(ssl_context_factory=...)`` hook returning our live context.

        uvicorn >= 0.36 calls this in ``Config.load()`` instead of building its
        own context from ``ssl_certfile``/``ssl_keyfile``.  The client-auth,
        cipher and ALPN settings uvicorn would have applied are mirrored so
        its CLI flags keep their meaning.
        """
        del default_factory  # it would load the files into a *different*, non-reloading context
        self._context.verify_mode = ssl.VerifyMode(config.ssl_cert_reqs)
        if config.ssl_ca_certs:
            self._context.load_verify_locations(config.ssl_ca_certs)
        if config.ssl_ciphers:
            self._context.set_ciphers(config.ssl_ciphers)
        alpn: list[str] | None = getattr(getattr(config, "http_protocol_class", None), "alpn_protocols", None)
        if alpn:
            self._context.set_alpn_protocols(alpn)
        return self._context

    # ------------------------------------------------------------------ cleanup

    def close(self) -> None:
        """Remove the private directory created by :meth:`from_bundle`, if any.

        The live context keeps working (OpenSSL holds the key in memory); only
        future reloads from those files become impossible.
        """
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> ReloadingSSLContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReloadingSSLContext(cert_file={str(self._cert_file)!r}, current=<{self._info.describe()}>)"


def install_into_uvicorn(config: uvicorn.Config, ctx: ReloadingSSLContext) -> None:
    """Make ``config`` serve TLS with ``ctx``'s live context.

    Preferred: before ``config.load()`` (i.e. before ``Server.serve()``), set
    the public ``ssl_context_factory`` hook, so uvicorn marks the config as
    TLS (``https`` scheme in the ASGI scope) and uses our object.  If the
    config is already loaded (or this uvicorn predates the hook), replace
    ``config.ssl`` after loading - ``Server.startup`` passes ``config.ssl``
    to ``loop.create_server`` - which works as long as the server has not
    started yet.  Either way ``ssl_certfile``/``ssl_keyfile`` are unnecessary.
    """
    if not config.loaded and hasattr(config, "ssl_context_factory"):
        config.ssl_context_factory = ctx.uvicorn_ssl_context_factory
        return
    if not config.loaded:
        config.load()
    config.ssl = ctx.context
