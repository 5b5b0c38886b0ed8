"""Helpers of test_faults_e2e.py: replicas of the webhook, an API server that can be killed, bursts of Pods.

- :class:`FaultyControlPlane`: the e2e control plane whose kube-apiserver can be killed
  (SIGKILL, or SIGTERM) and started again on the same port, with the same etcd, certificates
  and tokens: an API server outage as a cluster sees it. A SIGTERM'd kube-apiserver 1.20
  keeps serving the watches already open for about a minute, so outages use SIGKILL.
- :class:`Replica`: one ``pullsecret-injector serve`` process of a set sharing one serving
  certificate, one policy file and one Lease, as the Pods of the chart's Deployment do;
  killed or terminated by its PID.
- :func:`burst`: N Pod creates from a pool of threads, each Pod's outcome recorded: with
  its reference or without (admitted fail-open), or the API's error; a hook runs once a
  given number of Pods are created (the fault, in the middle of the burst).

Nothing here logs a Secret's content: Pods and copies are compared by name and reference.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.processes import Spawned, free_port, read_log

from .controlplane import ControlPlane, ControlPlaneError
from .process import ServeProcess, readyz, serve_argv, serve_env

# --------------------------------------------------------------------------- the API server


class FaultyControlPlane(ControlPlane):
    """A :class:`ControlPlane` whose kube-apiserver can be stopped and started again.

    The restarted API server listens on the same port with the same flags, so every
    client (the webhook's watches, the controller manager, the tests) reconnects to it as
    to a real API server coming back.
    """

    def _apiserver(self) -> Spawned:
        for proc in self._procs:
            if proc.name == "kube-apiserver":
                return proc
        raise ControlPlaneError("kube-apiserver is not running")

    def kill_apiserver(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the kube-apiserver started here and wait for it to exit (SIGKILL after 60 s)."""
        proc = self._apiserver()
        self._procs.remove(proc)
        proc.stop(60, sig)

    def start_apiserver(self, timeout: float = 120.0) -> float:
        """Start kube-apiserver again (same port, etcd, certificates); seconds until ``/readyz`` is ok."""
        t0 = time.monotonic()
        self._start_apiserver()
        self._wait(self._apiserver_ready, "kube-apiserver /readyz after a restart", t0 + timeout)
        return time.monotonic() - t0

    @property
    def apiserver_log(self) -> Path:
        return self.log_dir / "kube-apiserver.log"


# --------------------------------------------------------------------------- the replicas


@dataclass(eq=False)
class Replica(ServeProcess):
    """One ``python -m webhook serve`` of a replica set (see the module docstring)."""

    control_plane: ControlPlane
    identity: str
    """The Pod name: its identity in the Lease (``POD_NAME``)."""
    namespace: str
    policy_path: Path
    certs: Mapping[str, Path]
    lease: str
    workdir: Path
    extra_args: Sequence[str] = ()

    port: int = field(default_factory=free_port)
    returncode: int | None = field(default=None, init=False)
    _proc: Spawned | None = field(default=None, init=False, repr=False)
    _dir: Path | None = field(default=None, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.identity}.log"

    def argv(self) -> list[str]:
        return serve_argv(
            policy=self.policy_path,
            certs=self.certs,
            kubeconfig=self.control_plane.kubeconfig_path,
            port=self.port,
            namespace=self.namespace,
            lease=self.lease,
            extra_args=self.extra_args,
        )

    def start(self) -> Replica:
        if self._proc is not None:
            raise RuntimeError(f"replica {self.identity} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn(self.argv(), serve_env(POD_NAME=self.identity), name=f"replica {self.identity}")
        return self

    def ready(self) -> bool:
        return readyz(self.port, self.certs["ca.crt"])

    def wait_ready(self, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        self._wait_ready(self.ready, f"replica {self.identity} ready", timeout, RuntimeError)
        return time.monotonic() - t0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to this replica's PID (no wait)."""
        self.send_signal(sig)


# --------------------------------------------------------------------------- bursts


@dataclass
class PodOutcome:
    name: str
    namespace: str
    #: The reference the policy injects was there (None: never created).
    referenced: bool | None = None
    #: When the create that succeeded returned (monotonic), or None.
    created_at: float | None = None
    #: The errors of the attempts that failed, as "status reason" strings (no bodies).
    errors: list[str] = field(default_factory=list)


@dataclass
class BurstResult:
    outcomes: list[PodOutcome]
    seconds: float
    #: monotonic time of the fault hook, when it ran.
    fault_at: float | None = None

    @property
    def created(self) -> list[PodOutcome]:
        return [o for o in self.outcomes if o.referenced is not None]

    @property
    def fail_open(self) -> list[PodOutcome]:
        """Admitted without their reference: the webhook was not reached (failurePolicy Ignore)."""
        return [o for o in self.outcomes if o.referenced is False]

    @property
    def errors(self) -> list[str]:
        return [error for o in self.outcomes for error in o.errors]

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for error in self.errors:
            kinds[error] = kinds.get(error, 0) + 1
        return (
            f"{len(self.outcomes)} Pods in {self.seconds:.1f}s: {len(self.created)} created, "
            f"{len(self.fail_open)} without their reference (fail-open), API errors {kinds or 'none'}"
        )


def api_client_for(control_plane: ControlPlane, *, pool: int) -> Any:
    """An admin ``ApiClient`` with ``pool`` connections and no urllib3 retries (every attempt counts)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(control_plane.kubeconfig_path), client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = pool
    configuration.retries = False
    return client.ApiClient(configuration)


def _error_text(exc: Exception) -> str:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return type(exc).__name__


def burst(
    api_client: Any,
    pods: Sequence[tuple[str, str]],
    *,
    body: Callable[[str], dict[str, Any]],
    referenced: Callable[[Any], bool],
    threads: int = 20,
    fault_after: int | None = None,
    fault: Callable[[], None] | None = None,
    deadline: float = 300.0,
) -> BurstResult:
    """Create ``pods`` (``(namespace, name)``) from ``threads`` threads; ``fault()`` once ``fault_after`` exist.

    ``fault`` runs on the calling thread while the creates go on. A create that fails (API
    server down, 5xx) is tried again after 0.2 s until
    ``deadline`` seconds have passed since the start; a 409 after a failed attempt means
    the earlier attempt went through: the Pod is read and judged as created.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core: Any = client.CoreV1Api(api_client)
    outcomes = [PodOutcome(name=name, namespace=namespace) for namespace, name in pods]
    lock = threading.Lock()
    done = 0
    reached = threading.Event()
    stop = threading.Event()
    t0 = time.monotonic()

    def created(outcome: PodOutcome, pod: Any) -> None:
        nonlocal done
        outcome.referenced = referenced(pod)
        outcome.created_at = time.monotonic()
        with lock:
            done += 1
            if fault_after is not None and done >= fault_after:
                reached.set()

    def one(outcome: PodOutcome) -> None:
        while time.monotonic() - t0 < deadline and not stop.is_set():
            try:
                pod = core.create_namespaced_pod(outcome.namespace, body(outcome.name), _request_timeout=30)
            except ApiException as exc:
                if exc.status == 409 and outcome.errors:
                    with contextlib.suppress(Exception):
                        created(outcome, core.read_namespaced_pod(outcome.name, outcome.namespace))
                        return
                outcome.errors.append(_error_text(exc))
            except Exception as exc:
                outcome.errors.append(_error_text(exc))
            else:
                created(outcome, pod)
                return
            time.sleep(0.2)

    fault_at: float | None = None
    # The fault runs on this (the main) thread: a process it starts (an API server) gets
    # PR_SET_PDEATHSIG, which fires when the *thread* that forked it ends, not the process.
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="burst") as pool:
        futures = [pool.submit(one, outcome) for outcome in outcomes]
        try:
            if fault is not None and fault_after is not None and reached.wait(deadline):
                fault_at = time.monotonic()
                fault()
            for future in futures:
                future.result()
        except BaseException:
            stop.set()
            raise
    return BurstResult(outcomes=outcomes, seconds=time.monotonic() - t0, fault_at=fault_at)


def count_lines(path: Path, needle: str, *, since: int = 0) -> int:
    """Lines of ``path`` (from byte ``since``) containing ``needle``."""
    return sum(1 for line in read_log(path, since).splitlines() if needle in line)


__all__ = [
    "BurstResult",
    "FaultyControlPlane",
    "PodOutcome",
    "Replica",
    "api_client_for",
    "burst",
    "count_lines",
]
