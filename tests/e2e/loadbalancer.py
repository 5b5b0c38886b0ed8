"""A real HAProxy (Debian's ``haproxy``) standing in for the webhook's Service, on loopback.

A Kubernetes Service is a layer-4 balancer: kube-proxy sends each new TCP connection to a
ready endpoint, and an endpoint leaves the set when its readiness probe fails. This
balancer does the same with HAProxy in ``mode tcp`` (TLS passes through untouched, so the
API server verifies the webhook's own certificate, as through a Service):

- each backend is health-checked with ``GET /readyz`` over TLS (verified against the
  webhook's CA), every ``check_interval`` seconds, one failure marks it down and one
  success up again (the readiness probe, only faster);
- a connection refused by a backend is retried on another one (``retries`` +
  ``option redispatch``), as kube-proxy never sends to an endpoint that is not ready;
- an established connection stays with its backend until one side closes it, exactly
  like a connection through a Service: a replica killed with SIGKILL takes its open
  connections, and the requests in flight on them, with it.

``backends`` may list ports nothing listens on yet (a replica a rolling update starts
later): HAProxy marks them down until their ``/readyz`` answers.

The process is started by :meth:`LoadBalancer.start` and stopped by its PID
(:meth:`LoadBalancer.stop`); its state is read from its admin socket (``show stat``).
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import LOOPBACK, Spawned, free_port, wait_until


class LoadBalancerError(RuntimeError):
    """HAProxy is missing, would not start, or did not see its backends as expected."""


def haproxy_binary() -> str | None:
    """The ``haproxy`` executable on ``$PATH`` (Debian: /usr/sbin/haproxy), or None."""
    return shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").is_file() else None)


@dataclass(eq=False)
class LoadBalancer:
    """HAProxy on ``127.0.0.1:<port>`` in front of ``127.0.0.1:<backend port>`` replicas."""

    workdir: Path
    backends: Sequence[int]
    """Ports of the replicas on 127.0.0.1, named ``r0``, ``r1``... in this order."""
    ca_file: Path
    """The CA the health checks verify the replicas' certificates against."""
    check_interval: float = 0.5

    port: int = field(default=0, init=False)
    _proc: Spawned | None = field(default=None, init=False, repr=False)

    @property
    def config_path(self) -> Path:
        return self.workdir / "haproxy.cfg"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "admin.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "haproxy.log"

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}/mutate"

    def config(self) -> str:
        inter = f"{int(self.check_interval * 1000)}ms"
        servers = "\n".join(f"  server r{i} {LOOPBACK}:{port}" for i, port in enumerate(self.backends))
        return f"""\
global
  maxconn 4096
  stats socket {self.socket_path} mode 600 level admin

defaults
  mode tcp
  timeout connect 1s
  timeout client 120s
  timeout server 120s
  # a refused connection goes to another replica, as kube-proxy only picks ready endpoints
  retries 3
  option redispatch

frontend webhook
  bind {LOOPBACK}:{self.port}
  default_backend replicas

backend replicas
  balance roundrobin
  option httpchk
  http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
  http-check expect status 200
  default-server check check-ssl verify required ca-file {self.ca_file} inter {inter} fall 1 rise 1
{servers}
"""

    def start(self, timeout: float = 20.0) -> LoadBalancer:
        binary = haproxy_binary()
        if binary is None:
            raise LoadBalancerError("haproxy not found: apt-get install -y haproxy")
        if self._proc is not None:
            raise LoadBalancerError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path.write_text(self.config())
        check = subprocess.run(
            [binary, "-c", "-f", str(self.config_path)], capture_output=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise LoadBalancerError(
                f"haproxy refused its configuration:\n{check.stdout.decode()}{check.stderr.decode()}"
            )
        # -db: foreground, no daemon, so the PID we hold is HAProxy's own.
        self._proc = Spawned.start([binary, "-db", "-f", str(self.config_path)], self.log_path, name="haproxy")
        try:
            wait_until(self._answering, "haproxy's admin socket", timeout, watch=[self._proc], error=LoadBalancerError)
        except LoadBalancerError:
            self.stop()
            raise
        return self

    def _answering(self) -> bool:
        try:
            self.states()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM the HAProxy started here (SIGKILL if it lingers)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(10)

    def _command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(self.socket_path))
            s.sendall(command.encode() + b"\n")
            chunks: list[bytes] = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """``{"r0": "UP", "r1": "DOWN", ...}`` from ``show stat``."""
        text = self._command("show stat").lstrip("# ")
        states: dict[str, str] = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") == "replicas" and row.get("svname", "").startswith("r"):
                states[row["svname"]] = row.get("status", "")
        return states

    def stats(self) -> dict[str, dict[str, str]]:
        """The raw ``show stat`` rows of the backends (sessions, errors, retries, redispatches)."""
        text = self._command("show stat").lstrip("# ")
        return {
            row["svname"]: dict(row) for row in csv.DictReader(io.StringIO(text)) if row.get("pxname") == "replicas"
        }

    def wait_for_states(self, expected: dict[str, str], timeout: float = 15.0) -> float:
        """Wait until each named backend has its state (``UP``/``DOWN`` prefix); the seconds it took."""
        t0 = time.monotonic()
        while True:
            states = self.states()
            if all(states.get(name, "").startswith(state) for name, state in expected.items()):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise LoadBalancerError(f"backends {states}, expected {expected} after {timeout:g}s")
            time.sleep(0.05)


__all__ = ["LoadBalancer", "LoadBalancerError", "haproxy_binary"]
