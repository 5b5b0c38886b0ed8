"""Helpers for test_image_e2e.py: the built image run by the real node's containerd, and what a
cluster with one node and no CNI, kube-proxy or scheduler needs around it.

- :func:`require_image`: the docker-archive ``hack/build-image.sh`` exports, or skip (fail
  under ``PSI_REQUIRE_E2E=1``) with one line.
- :class:`NodeAddress`: a ``/32`` on ``lo`` from the benchmarking range 198.18.0.0/15, the node's
  InternalIP. The API server refuses loopback addresses in Endpoints (and a kubelet with a
  loopback ``--node-ip`` reports no address at all), so a host-network Pod on a 127.0.0.1 node
  has no Pod IP the endpoints controller could publish. An address on ``lo`` is local to this
  machine like 127.0.0.1 (traffic to it never leaves the host), is not "loopback" to those
  validations, and is removed again by exact address.
- :class:`TcpRelay`: the one piece of kube-proxy the webhook Pod needs: its in-cluster config
  dials the ``kubernetes`` Service (``KUBERNETES_SERVICE_HOST``: the ClusterIP, port 443), and
  without kube-proxy nothing forwards that to the API server. The relay listens on that
  ClusterIP (a loopback range, so a local address) and copies bytes to the API server; TLS is
  end to end (the API server's certificate carries the ClusterIP).
- :class:`PodBinder`: the one decision of kube-scheduler on a one-node cluster: every Pod
  without a node is bound to the node through the ``pods/binding`` subresource, the call
  kube-scheduler makes. The Pods themselves are left exactly as their controllers made them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .node import Node
from .process import REPO

IMAGE_DIR = REPO / "build" / "image"
IMAGE_ARCHIVE = IMAGE_DIR / "pullsecret-injector.tar"
DEFAULT_IMAGE = "localhost/pullsecret-injector:dev"
MISSING_IMAGE = (
    f"image e2e: no {IMAGE_ARCHIVE.relative_to(REPO)}; run `bash hack/build-image.sh` (buildah + mmdebstrap, no daemon)"
)
#: RFC 2544 benchmarking range: never routed on the internet, unlikely to clash with a real network.
NODE_ADDRESS_RANGE = ipaddress.ip_network("198.18.0.0/15")


def image_env(directory: Path = IMAGE_DIR) -> dict[str, str]:
    """``build/image/image.env`` (IMAGE, sizes in MB, build seconds) as a dict ({} when absent)."""
    values: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (directory / "image.env").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
    return values


def require_image() -> tuple[Path, str]:
    """(the archive, the image name in it), or skip with one line (fail under PSI_REQUIRE_E2E=1)."""
    if not IMAGE_ARCHIVE.is_file():
        if os.environ.get("PSI_REQUIRE_E2E") == "1":
            pytest.fail(MISSING_IMAGE + " (PSI_REQUIRE_E2E=1)", pytrace=False)
        pytest.skip(MISSING_IMAGE)
    return IMAGE_ARCHIVE, image_env().get("IMAGE", DEFAULT_IMAGE)


# --------------------------------------------------------------------------- the node's address


def _local_addresses() -> set[str]:
    done = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True)
    rows = (line.split() for line in done.stdout.splitlines())
    return {fields[3].split("/")[0] for fields in rows if len(fields) > 3}


@dataclass(eq=False)
class NodeAddress:
    """A random 198.18.0.0/15 address as a /32 on ``lo`` (see the module docstring); ``remove()`` deletes it."""

    address: str = ""
    added: bool = field(default=False, init=False)

    def add(self) -> NodeAddress:
        taken = _local_addresses()
        rng = secrets.SystemRandom()
        hosts = NODE_ADDRESS_RANGE.num_addresses
        for _ in range(20):
            candidate = str(NODE_ADDRESS_RANGE[rng.randrange(1, hosts - 1)])
            if candidate not in taken and not candidate.endswith((".0", ".255")):
                break
        else:  # pragma: no cover - 2^17 addresses
            raise RuntimeError("no free address in 198.18.0.0/15")
        subprocess.run(["ip", "addr", "add", f"{candidate}/32", "dev", "lo"], check=True, capture_output=True)
        self.address, self.added = candidate, True
        return self

    def remove(self) -> None:
        if self.added:
            subprocess.run(["ip", "addr", "del", f"{self.address}/32", "dev", "lo"], check=False, capture_output=True)
            self.added = False

    def present(self) -> bool:
        return bool(self.address) and self.address in _local_addresses()


# --------------------------------------------------------------------------- kube-proxy's part


@dataclass(eq=False)
class TcpRelay:
    """Listen on ``host:port``, copy every connection to ``target_host:target_port`` (threads)."""

    host: str
    port: int
    target_host: str
    target_port: int
    connections: int = field(default=0, init=False)
    _server: socket.socket | None = field(default=None, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False, repr=False)

    def start(self) -> TcpRelay:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, self.port))
        server.listen(64)
        server.settimeout(0.2)
        self._server = server
        thread = threading.Thread(target=self._accept, name=f"relay-{self.host}:{self.port}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            try:
                upstream = socket.create_connection((self.target_host, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                src.close()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=2)


# --------------------------------------------------------------------------- kube-scheduler's part


@dataclass(eq=False)
class PodBinder:
    """Bind every unscheduled Pod of the cluster to ``node_name`` via ``pods/binding`` (a thread)."""

    api_client: Any
    node_name: str
    interval: float = 0.3
    bound: list[str] = field(default_factory=list, init=False)
    errors: list[str] = field(default_factory=list, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def start(self) -> PodBinder:
        self._thread = threading.Thread(target=self._run, name="pod-binder", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api_client)
        while not self._stopping.wait(self.interval):
            try:
                pending = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=").items
            except Exception as err:  # the API server may be going away at teardown
                self.errors.append(f"list: {err}")
                continue
            for pod in pending:
                if pod.metadata.deletion_timestamp is not None:
                    continue
                body = {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": pod.metadata.name, "namespace": pod.metadata.namespace},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
                }
                try:
                    # _preload_content=False: the client cannot deserialize the Status a binding returns
                    core.create_namespaced_binding(pod.metadata.namespace, body, _preload_content=False)
                    self.bound.append(f"{pod.metadata.namespace}/{pod.metadata.name}")
                except Exception as err:  # already bound by a previous round, or deleted meanwhile
                    self.errors.append(f"bind {pod.metadata.namespace}/{pod.metadata.name}: {err}")

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# --------------------------------------------------------------------------- containerd


def task_pids(node: Node) -> dict[str, tuple[int, str]]:
    """containerd's tasks in ``k8s.io``: container id -> (pid, status)."""
    tasks: dict[str, tuple[int, str]] = {}
    for line in node.ctr("tasks", "list").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            tasks[fields[0]] = (int(fields[1]), fields[2])
    return tasks


def process_ids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of ``pid`` from /proc (the host's view: no user namespace)."""
    uid = gid = -1
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
        elif line.startswith("Gid:"):
            gid = int(line.split()[1])
    return uid, gid


def container_spec(node: Node, container_id: str) -> dict[str, Any]:
    """The OCI runtime spec containerd gave runc for ``container_id``."""
    spec: dict[str, Any] = json.loads(node.ctr("containers", "info", container_id))["Spec"]
    return spec


def wait_until(check: Any, what: str, timeout: float, interval: float = 0.25) -> Any:
    """Poll ``check()`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


__all__ = [
    "DEFAULT_IMAGE",
    "IMAGE_ARCHIVE",
    "NodeAddress",
    "PodBinder",
    "TcpRelay",
    "container_spec",
    "image_env",
    "process_ids",
    "require_image",
    "task_pids",
    "wait_until",
]
