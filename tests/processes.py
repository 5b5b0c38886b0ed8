"""Starting a process for a test, waiting for it, stopping it by its PID: written once.

Every helper that runs a real program (etcd, kube-apiserver, kube-controller-manager,
containerd, the kubelet, the registries, HAProxy, the webhook's ``serve``) starts it with
:meth:`Spawned.start`, waits for it with :func:`wait_until` and stops it with
:meth:`Spawned.stop` (or :func:`stop_all`). That is where the promises the suites make
about processes are kept, once:

- the output goes to a log file that starts with a ``$ argv`` line and stays readable
  after the process is gone (:class:`HasLog`, :func:`tail`);
- a child gets ``PR_SET_PDEATHSIG`` (Linux), so a killed pytest leaves nothing behind;
- stopping signals only the PID started here (SIGTERM, SIGKILL when it lingers), never a
  name, and always closes the log file;
- waiting fails at once, with the last lines of the process's own output, when a process
  it depends on has exited, and names every watched process's log tail on a timeout.

Nothing here knows about Kubernetes or registries; :mod:`tests.registries` (unit and e2e
tests alike) and ``tests/e2e`` import it.
"""

from __future__ import annotations

import contextlib
import ctypes
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from tests.builders import wait_for

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class ProcessError(RuntimeError):
    """A process exited while it was waited for, or did not become ready (the message has its log)."""


_EPHEMERAL_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000  # below: ports well-known services and the system's own daemons use


def ephemeral_range(path: Path = _EPHEMERAL_FILE) -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux's default where unknown)."""
    try:
        low, high = (int(word) for word in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


@dataclass
class PortPicker:
    """Hands out listening ports that nothing else on the machine is about to take.

    A port the kernel picks with ``bind(0)`` comes from the ephemeral range, the same range
    it draws the source port of every outgoing connection from. Between the pick and the
    moment a spawned server binds it, any process of the suite (an apiserver talking to
    etcd, a kubelet, a health poll) can open a connection from that very port, and the
    server then fails with "address already in use" (it happened to kube-apiserver in CI).
    So the picks are random ports *below* the ephemeral range, which the kernel never hands
    out by itself, checked bindable now and never handed out twice by this process.
    """

    low: int = _LOWEST_PORT
    high: int = field(default_factory=lambda: ephemeral_range()[0] - 1)
    rng: random.Random = field(default_factory=random.Random)
    given: set[int] = field(default_factory=set)

    def pick(self, host: str = LOOPBACK, attempts: int = 200) -> int:
        """A port bindable on ``host`` now, outside the ephemeral range when there is room."""
        if self.high - self.low >= attempts:
            for _ in range(attempts):
                port = self.rng.randint(self.low, self.high)
                if port not in self.given and _bindable(host, port):
                    self.given.add(port)
                    return port
        # no room below the ephemeral range (a machine that widened it): let the kernel choose
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        self.given.add(port)
        return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


_PICKER = PortPicker()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` now that no outgoing connection will take first (:class:`PortPicker`)."""
    return _PICKER.pick(host)


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn making Linux SIGTERM the child when the thread that started it ends.

    Resolved in the parent: the function run between fork and exec only calls prctl(2).
    None where prctl is not available (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:  # pragma: no cover - runs in the child
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


def reap(popen: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait up to ``timeout`` for ``popen`` to exit, SIGKILL it if it lingers; its exit code."""
    try:
        return popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
    return popen.wait(timeout=10)


def terminate(popen: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` to ``popen`` (if still running), SIGKILL it if it lingers past ``timeout``; its exit code."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(sig)
    return reap(popen, timeout)


# --------------------------------------------------------------------------- logs


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' if it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def read_log(path: Path, since: int = 0) -> str:
    """The file from byte offset ``since`` ('' while there is none)."""
    try:
        with path.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def log_size(path: Path) -> int:
    """The file's size (0 while there is none): a ``since`` offset for what is written next."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


class HasLog:
    """``logs()``, ``log_mark()`` and ``log_tail()`` over the file the subclass names as ``log_path``."""

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def logs(self, since: int = 0) -> str:
        """The log from byte offset ``since`` ('' while there is none)."""
        return read_log(self.log_path, since)

    def log_mark(self) -> int:
        """The log's current size: pass it as ``since`` to look only at what comes next."""
        return log_size(self.log_path)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


# --------------------------------------------------------------------------- one process


@dataclass(eq=False)
class Spawned(HasLog):
    """One process started here, its output appended to ``log`` (see the module docstring)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    mark: int
    """Where this start's output begins in ``log`` (after its ``$ argv`` line)."""
    _log_file: IO[bytes] | None = field(repr=False)

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        log: Path,
        *,
        name: str | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> Spawned:
        """Spawn ``argv`` (stdin closed, stdout and stderr to ``log`` after a ``$ argv`` line)."""
        log_file = log.open("ab")
        try:
            log_file.write(("$ " + " ".join(argv) + "\n").encode())
            log_file.flush()
            mark = log_size(log)
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=pdeathsig_preexec() if die_with_parent else None,
            )
        except BaseException:
            log_file.close()
            raise
        return cls(name=name or Path(argv[0]).name, popen=popen, log=log, mark=mark, _log_file=log_file)

    @property
    def log_path(self) -> Path:
        return self.log

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self, lines: int = 40) -> str:
        """The last ``lines`` lines this start wrote (not those of an earlier start into the same log)."""
        return "\n".join(self.logs(self.mark).splitlines()[-lines:])

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the PID started here, if it still runs; no waiting."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit (``subprocess.TimeoutExpired`` after ``timeout``); close the log; the exit code."""
        code = self.popen.wait(timeout=timeout)
        self._close_log()
        return code

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM), SIGKILL after ``timeout``; close the log; the exit code."""
        try:
            return terminate(self.popen, timeout, sig)
        finally:
            self._close_log()

    def check_alive(self, error: Callable[[str], Exception] = ProcessError) -> None:
        """Raise ``error`` with this start's last output lines if the process has exited (it is reaped)."""
        code = self.popen.poll()
        if code is not None:
            self.wait()
            raise error(f"{self.name} exited with code {code}; its last lines ({self.log}):\n{self.output()}")

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def wait_until(
    ready: Callable[[], T | None],
    what: str,
    timeout: float,
    *,
    watch: Iterable[Spawned] = (),
    error: Callable[[str], Exception] = ProcessError,
    interval: float = 0.05,
    tail_lines: int = 30,
) -> T:
    """Poll ``ready()`` until it returns something truthy, and return that.

    Every poll first checks that the ``watch``ed processes still run: one that exited raises
    ``error`` at once with its own output. After ``timeout`` seconds, ``error`` names ``what``
    and carries the log tail of every watched process.
    """
    watched = list(watch)

    def poll() -> T | None:
        for proc in watched:
            proc.check_alive(error)
        return ready()

    try:
        return wait_for(poll, what, timeout=max(0.0, timeout), interval=interval)
    except AssertionError as err:
        logs = "\n".join(f"--- {p.name} ({p.log}):\n{p.log_tail(tail_lines)}" for p in watched)
        raise error(f"{err}\n{logs}".rstrip()) from None


def stop_all(procs: Sequence[Spawned], timeout: float = 15.0) -> None:
    """SIGTERM every process (the last started first) at once, then reap each within one ``timeout``.

    Signalled together, the processes shut down in parallel (an API server does not wait for
    etcd's exit, nor etcd for the API server's); one that lingers past the shared deadline is
    SIGKILLed. Every log file is closed.
    """
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in reversed(procs):
        try:
            reap(proc.popen, max(0.1, deadline - time.monotonic()))
        finally:
            proc._close_log()


__all__ = [
    "LOOPBACK",
    "HasLog",
    "ProcessError",
    "Spawned",
    "free_port",
    "log_size",
    "pdeathsig_preexec",
    "read_log",
    "reap",
    "stop_all",
    "tail",
    "terminate",
    "wait_until",
]
