"""A ``python -m webhook serve`` subprocess started by the harness: its environment, its log, its end.

:class:`ServeProcess` is what :class:`~tests.e2e.webhook.WebhookProcess` (the webhook wired by
hand), :class:`~tests.e2e.faults.Replica` (one of a replica set) and
:class:`~tests.e2e.chart_support.DeploymentProcess` (the chart's Deployment args) share:
spawning into a log file with a scrubbed environment, dying with the test process, SIGTERM then
SIGKILL on ``stop()``, reading the log back (all by :mod:`tests.processes`). The subclasses
(dataclasses) declare the fields. :func:`serve_argv` is the command line of a webhook serving
certificate files on loopback, :func:`readyz` its readiness as the API server would see it.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.processes import LOOPBACK, HasLog, Spawned, wait_until

REPO = Path(__file__).resolve().parents[2]
#: Environment variables the ``serve`` command reads as defaults: never inherited by the subprocess.
SCRUBBED_ENV = ("KUBECONFIG", "POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


def serve_env(extra: Mapping[str, str | None] | None = None, **more: str) -> dict[str, str]:
    """This process's environment without ``PSI_*`` and :data:`SCRUBBED_ENV`, plus ``extra`` and ``more``.

    A ``None`` in ``extra`` removes that variable (a container whose spec does not set it).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSI_") and k not in SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in {**(extra or {}), **more}.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def serve_argv(
    *,
    policy: Path,
    certs: Mapping[str, Path],
    kubeconfig: Path,
    port: int,
    namespace: str,
    lease: str,
    metrics_port: int = 0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``python -m webhook serve`` with the policy file, ``certs`` (``tls.crt``/``tls.key``), on 127.0.0.1:``port``.

    ``metrics_port`` 0: no metrics listener.
    """
    return [
        sys.executable,
        "-m",
        "webhook",
        "serve",
        f"--policy={policy}",
        "--cert-mode=files",
        f"--tls-cert={certs['tls.crt']}",
        f"--tls-key={certs['tls.key']}",
        f"--kubeconfig={kubeconfig}",
        f"--host={LOOPBACK}",
        f"--port={port}",
        f"--metrics-port={metrics_port}",
        f"--namespace={namespace}",
        f"--leader-election-lease={lease}",
        "--log-format=text",
        *extra_args,
    ]


def loopback_get(port: int, path: str, ca_file: Path, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET ``path`` on 127.0.0.1:``port`` over TLS verified against ``ca_file``; (status, body), HTTP errors too.

    The certificate must carry the IP SAN 127.0.0.1, as for the API server calling the URL.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(f"https://{LOOPBACK}:{port}{path}", timeout=timeout, context=context) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def readyz(port: int, ca_file: Path) -> bool:
    """True when ``/readyz`` on 127.0.0.1:``port`` answers 200 over verified TLS; False while nothing answers."""
    try:
        status, _ = loopback_get(port, "/readyz", ca_file)
    except (OSError, urllib.error.URLError):
        return False
    return status == 200


class ServeProcess(HasLog):
    """Lifecycle and log of one subprocess; it only ever signals the PID it started."""

    workdir: Path | None
    returncode: int | None
    _proc: Spawned | None
    _dir: Path | None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _spawn(self, argv: Sequence[str], env: dict[str, str], name: str = "webhook") -> Spawned:
        """Start ``argv`` in the repository, its output appended to :attr:`log_path` after a ``$ argv`` line."""
        self._proc = Spawned.start(argv, self.log_path, name=name, cwd=REPO, env=env)
        return self._proc

    def _wait_ready(
        self, ready: Callable[[], bool], what: str, timeout: float, error: Callable[[str], Exception]
    ) -> None:
        """Poll ``ready``; ``error`` with the log if the process exits (it is reaped) or after ``timeout``."""
        wait_until(ready, what, timeout, watch=[] if self._proc is None else [self._proc], error=error)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the PID started here (no wait)."""
        if self._proc is not None:
            self._proc.send_signal(sig)

    def wait(self, timeout: float | None = 30.0) -> int | None:
        """Wait for the process started here to exit (``subprocess.TimeoutExpired`` after ``timeout``)."""
        if self._proc is not None:
            self.returncode = self._proc.wait(timeout)
            self._proc = None
        return self.returncode

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` (SIGTERM) to the process started here, SIGKILL after ``timeout``; returns its exit code."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self.returncode = proc.stop(timeout, sig)
        return self.returncode

    def _remove_dir(self, keep: bool) -> None:
        """Remove the temporary directory made at start (never a ``workdir`` that was given)."""
        if not keep and self.workdir is None and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
