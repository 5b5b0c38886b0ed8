"""Certificates on disk: the files of ``pullsecret-injector certs`` and of the reloading TLS context.

Building and checking certificates is pure and lives in :mod:`webhook.tls.pki`; this
module is the file I/O around it, kept apart so that the pure half needs no disk to be
tested and the one way certificate files are written (atomically, with their mode from
the first byte) is in one place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from webhook.tls.pki import (
    CA_CERT_FILE,
    DEFAULT_CERT_VALIDITY,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    build_bundle,
)

__all__ = [
    "write_file_atomic",
    "write_local_certs",
]


def write_file_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new content, never a mix.

    The temporary file is created with ``mode`` from the start (never briefly
    world-readable) in the same directory, fsynced, then renamed over
    ``path``.  A certificate watcher polling the file can therefore never
    load a half-written key.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_local_certs(
    *,
    service: str,
    namespace: str,
    out_dir: Path,
    extra_dns: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    cert_valid_for: timedelta = DEFAULT_CERT_VALIDITY,
    now: datetime | None = None,
) -> dict[str, Path]:
    """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` for local development into ``out_dir``.

    Backs ``pullsecret-injector certs --service S --namespace N --out certs/``.
    ``localhost`` and ``127.0.0.1`` are included by default so the same files
    serve both a port-forwarded/out-of-cluster webhook and local curl tests.
    The CA key is deliberately *not* written: re-running the command is
    cheaper than guarding one more secret on a laptop.  Returns the written
    paths keyed by file name.
    """
    bundle = build_bundle(
        service=service,
        namespace=namespace,
        extra_dns=extra_dns,
        ip_addresses=ip_addresses,
        cert_valid_for=cert_valid_for,
        now=now,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        CA_CERT_FILE: (bundle.ca_cert_pem, 0o644),
        TLS_CERT_FILE: (bundle.cert_pem, 0o644),
        TLS_KEY_FILE: (bundle.key_pem, 0o600),
    }
    written: dict[str, Path] = {}
    for name, (data, mode) in files.items():
        target = out / name
        write_file_atomic(target, data, mode=mode)
        written[name] = target
    return written
