"""A ``python -m webhook serve`` subprocess started by the harness: its environment, its log, its end.

:class:`ServeProcess` is what :class:`~tests.e2e.webhook.WebhookProcess` (the webhook wired by
hand) and :class:`~tests.e2e.chart_support.DeploymentProcess` (the chart's Deployment args) share:
spawning into a log file with a scrubbed environment, dying with the test process, SIGTERM then
SIGKILL on ``stop()``, reading the log back. The subclasses (dataclasses) declare the fields.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .controlplane import _pdeathsig_preexec, tail, terminate

REPO = Path(__file__).resolve().parents[2]
#: Environment variables the ``serve`` command reads as defaults: never inherited by the subprocess.
SCRUBBED_ENV = ("KUBECONFIG", "POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


def serve_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``PSI_*`` and :data:`SCRUBBED_ENV`, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSI_") and k not in SCRUBBED_ENV}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


class ServeProcess:
    """Lifecycle and log of one subprocess; ``stop()`` only ever signals the PID it started."""

    workdir: Path | None
    returncode: int | None
    _popen: subprocess.Popen[bytes] | None
    _log_file: IO[bytes] | None
    _dir: Path | None

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def _spawn(self, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the repository, its output appended to :attr:`log_path` after a ``$ argv`` line."""
        log_file = self.log_path.open("ab")
        log_file.write(("$ " + " ".join(argv) + "\n").encode())
        log_file.flush()
        self._log_file = log_file
        self._popen = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_pdeathsig_preexec(),
        )
        return self._popen

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process started here, SIGKILL after ``timeout``; returns its exit code."""
        if self._popen is None:
            return self.returncode
        terminate(self._popen, timeout)
        self._reap()
        return self.returncode

    def _reap(self) -> None:
        if self._popen is not None:
            self.returncode = self._popen.wait()
            self._popen = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _remove_dir(self, keep: bool) -> None:
        """Remove the temporary directory made at start (never a ``workdir`` that was given)."""
        if not keep and self.workdir is None and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def logs(self, since: int = 0) -> str:
        """The log from byte offset ``since`` ('' while there is none)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)
