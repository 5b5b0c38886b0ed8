"""A real Kubernetes node for the e2e control plane: containerd + a kubelet, in a temp dir.

The e2e control plane (``controlplane.py``) has no node, so "the Pod would have pulled" is an
inference. ``Node`` makes it an observation: a kubelet 1.20.2 (built by
``hack/build-kube-assets.sh`` from the same source package as the API server) registers with
the control plane and runs Pods through containerd 1.6 (Debian), which pulls their images
from real registries (``tests/registries.py``) with the credentials the kubelet takes from
the Pod's ``imagePullSecrets``. Nothing is stubbed between the Secret and the registry.

What this machine needs, found by trying (issue 12):

- containerd's CRI: ``disable_apparmor = true`` and ``restrict_oom_score_adj = true``, else
  runc fails with "can't get final child's PID from pipe";
- the sandbox (pause) image imported locally (``ctr -n k8s.io images import``): there is no
  network, so a busybox-static image running ``sleep`` stands in for ``k8s.gcr.io/pause``;
- no scheduler and no Pod network: test Pods set ``nodeName`` and ``hostNetwork: true``. A
  loopback-only CNI configuration is written anyway, only so that containerd reports
  ``NetworkReady`` and the node becomes Ready (no plugin runs for host-network Pods);
- the kubelet's node IP is 127.0.0.1 (it logs that a loopback node IP cannot be reported as a
  Node address, so the Node has none: nothing needs to reach the kubelet), and the AWS SDK in
  it must not look for the EC2 metadata service (``kubelet_env()``);
- kubelet: cgroupfs driver, ``cgroupsPerQOS: false``, ``failSwapOn: false``, eviction
  thresholds near zero (a shared disk must not make the node evict test Pods), image GC off,
  no iptables chains (``makeIPTablesUtilChains: false``), ``oomScoreAdj: 0``.

Isolation: containerd has its own root, state, socket and runc root under the temp dir;
the kubelet its own root dir, certificates, volume-plugin dir, ports (127.0.0.1 only) and
identity (a ServiceAccount bound to ``system:node``). What a 1.20 kubelet writes outside its
root dir regardless, and what is done about it:

- ``/var/log/pods/<ns>_<pod>_<uid>`` and ``/var/log/containers/*.log`` symlinks: removed for
  this node's Pods at ``stop()``;
- ``/var/lib/kubelet/device-plugins/kubelet.sock`` (a constant in 1.20): removed, and
  ``/var/lib/kubelet`` too when it did not exist before; likewise ``/var/log/pods``,
  ``/var/log/containers`` and the shims' ``/run/containerd`` (only if empty);
- cgroups: without QoS cgroups the kubelet gives no cgroup parent and containerd puts each
  container in ``/k8s.io/<id>``; runc removes the container's own cgroup, and ``stop()``
  removes the ``/k8s.io`` parents (only empty ones) in the hierarchies where it made them;
- the shims (``containerd-shim-runc-v2``) daemonize: found by our socket path in their
  command line, killed by PID if still there after containerd stopped;
- the kernel tunables the container manager sets at start (``vm.overcommit_memory``,
  ``kernel.panic``, ``kernel.panic_on_oops``, ...): read before, written back at ``stop()``.

``stop()`` deletes the Node, stops the kubelet by PID, removes every container and sandbox
through containerd (``ctr``: kill, delete task, delete container), stops containerd by PID,
kills any shim or container process still listed in containerd's state by PID, unmounts
everything mounted under the temp dir (deepest first) and removes the dir.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.processes import LOOPBACK, Spawned, free_port, wait_until
from tests.registries import BusyboxImages, Registry, missing_tools

from .controlplane import ASSETS_ENV, DEFAULT_ASSETS_DIR, ControlPlane, write_kubeconfig

T = TypeVar("T")

#: The sandbox image containerd runs for every Pod; imported, never pulled.
PAUSE_IMAGE = "psi.local/pause:1"
#: containerd's namespace for Kubernetes (what the CRI plugin uses).
K8S_NAMESPACE = "k8s.io"
NODE_TOOLS = {"containerd": "containerd", "ctr": "containerd", "runc": "runc"}
CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
#: What the 1.20 container manager sets when ``protectKernelDefaults`` is false; restored at stop().
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
POD_LOGS = Path("/var/log/pods")
CONTAINER_LOGS = Path("/var/log/containers")
LEGACY_KUBELET_DIR = Path("/var/lib/kubelet")
#: Host dirs a 1.20 kubelet / containerd 1.6 shim create when missing; removed again (if empty) when we made them.
HOST_DIRS = (POD_LOGS, CONTAINER_LOGS, Path("/run/containerd"))
NODE_INSTALL_HINT = (
    "apt-get install containerd runc containernetworking-plugins docker-registry skopeo umoci "
    "busybox-static apache2-utils; bash hack/build-kube-assets.sh (builds the kubelet)"
)
_MNT_DETACH = 2


class NodeError(RuntimeError):
    """The node could not be started (the message carries the log tails)."""


# --------------------------------------------------------------------------- prerequisites


def find_kubelet(directory: str | os.PathLike[str] | None = None) -> Path | None:
    """The kubelet next to the control-plane binaries (``$KUBE_ASSETS`` or the default cache dir)."""
    if directory is None:
        directory = os.environ.get(ASSETS_ENV, "").strip() or DEFAULT_ASSETS_DIR
    path = Path(directory).expanduser() / "kubelet"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _cgroup_v1() -> bool:
    """cgroup v1 with the memory controller mounted (what the cgroupfs driver of 1.20 expects)."""
    return Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists()


def missing_prerequisites() -> list[str]:
    """What is missing to start a node here (empty when a node can start)."""
    missing: list[str] = []
    if find_kubelet() is None:
        missing.append(f"kubelet in ${ASSETS_ENV} or {DEFAULT_ASSETS_DIR}")
    for binary, package in NODE_TOOLS.items():
        if shutil.which(binary) is None:
            missing.append(f"{binary} (package {package})")
    if not any((d / "loopback").is_file() for d in CNI_BIN_DIRS):
        missing.append("CNI loopback plugin (package containernetworking-plugins)")
    missing += [f"package {pkg}" for pkg in missing_tools()]
    if os.geteuid() != 0:
        missing.append("root (containerd and the kubelet run as root)")
    if not _cgroup_v1():
        missing.append("cgroup v1 with the memory controller at /sys/fs/cgroup/memory")
    return missing


# --------------------------------------------------------------------------- helpers


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` from /proc/self/mountinfo, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) < 5:
                continue
            point = fields[4].encode().decode("unicode_escape")  # \040 for spaces etc.
            if point == str(root) or point.startswith(prefix):
                points.append(point)
    return sorted(set(points), key=lambda p: (p.count("/"), len(p)), reverse=True)


def unmount_all(root: Path, rounds: int = 5) -> list[str]:
    """Unmount everything mounted under ``root`` (deepest first; lazily if busy); what stays mounted.

    A shared bind mount (the kubelet makes its root dir rshared) can show a mount more than
    once, so this repeats until nothing is left or ``rounds`` passes changed nothing.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(rounds):
        points = _mounts_under(root)
        if not points:
            return []
        for point in points:
            if libc.umount2(point.encode(), 0) != 0:
                libc.umount2(point.encode(), _MNT_DETACH)
    return _mounts_under(root)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _kill_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL ``pid`` and wait (it is not our child, so poll) until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def kubelet_env() -> dict[str, str]:
    """The kubelet's environment: no AWS settings, and the EC2 metadata service switched off.

    The 1.20 kubelet's in-tree ECR credential provider asks the AWS SDK for credentials at
    start, whose default chain ends with the EC2 metadata service (169.254.169.254):
    ``AWS_EC2_METADATA_DISABLED=true`` makes the SDK fail that step without sending anything,
    so the node's traffic stays on loopback. (The GCP provider only reads the local DMI
    product name; Azure's needs a config file that is not given.)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


# --------------------------------------------------------------------------- node


@dataclass(eq=False)
class Node:
    """containerd + kubelet registered as node ``name`` with ``control_plane`` (module docstring)."""

    control_plane: ControlPlane
    images: BusyboxImages
    """Builds the pause image (and whatever the tests push)."""
    name: str = field(default_factory=lambda: f"psi-node-{uuid.uuid4().hex[:6]}")
    workdir: Path | None = None
    keep_workdir: bool = False
    verbosity: int = 1
    node_ip: str = LOOPBACK
    """The kubelet's ``--node-ip``. A loopback one is not reported as a Node address (see above);
    an address assigned on this machine (e.g. a /32 on ``lo``) becomes the Node's InternalIP, and
    so the Pod IP of host-network Pods, which the endpoints controller puts into Endpoints."""

    kubelet_path: Path | None = None
    containerd_seconds: float = field(default=0.0, init=False)
    """From spawning containerd to its CRI answering (``ctr version`` + pause image imported)."""
    ready_seconds: float = field(default=0.0, init=False)
    """From spawning the kubelet to the Node's Ready condition True."""
    startup_seconds: float = field(default=0.0, init=False)
    kubelet_port: int = field(default=0, init=False)
    healthz_port: int = field(default=0, init=False)
    _procs: list[Spawned] = field(default_factory=list, init=False, repr=False)
    _dir: Path | None = field(default=None, init=False, repr=False)
    _tmp: Path | None = field(default=None, init=False, repr=False)
    _trusted: set[str] = field(default_factory=set, init=False, repr=False)
    _tunables: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _legacy_dir_existed: bool = field(default=True, init=False, repr=False)
    _new_host_dirs: list[Path] = field(default_factory=list, init=False, repr=False)
    _new_cgroups: list[Path] = field(default_factory=list, init=False, repr=False)
    _api: Any = field(default=None, init=False, repr=False)
    _sa: str = field(default="", init=False, repr=False)

    # ----------------------------------------------------------------- paths

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise NodeError("node not started")
        return self._dir

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        return self.dir / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.dir / "containerd" / "state"

    @property
    def certs_d(self) -> Path:
        """containerd's registry host configuration (``config_path``): one dir per ``host:port``."""
        return self.dir / "containerd" / "certs.d"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    def log(self, name: str) -> Path:
        """``containerd`` or ``kubelet``: the process's log file."""
        return self.log_dir / f"{name}.log"

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, registries: Iterable[Registry] = (), timeout: float = 120.0) -> Node:
        """Start containerd and the kubelet, trusting ``registries``; return once the Node is Ready."""
        if self._procs:
            raise NodeError("already started")
        missing = missing_prerequisites()
        if missing:
            raise NodeError("cannot start a node: missing " + "; ".join(missing) + f" ({NODE_INSTALL_HINT})")
        t0 = time.monotonic()
        deadline = t0 + timeout
        atexit.register(self.stop)  # containers and shims are not our children: no PDEATHSIG for them
        try:
            self._prepare_dir()
            for registry in registries:
                self.trust(registry)
            self._start_containerd(deadline)
            self.containerd_seconds = time.monotonic() - t0
            self._create_identity()
            t1 = time.monotonic()
            self._start_kubelet()
            self._wait(self._node_ready, f"Node {self.name} Ready", deadline)
            self.ready_seconds = time.monotonic() - t1
        except BaseException as err:
            if self._dir is not None:
                self.keep_workdir = True
                err.add_note(f"node workdir kept for inspection: {self._dir} (logs in logs/)")
            try:
                self.stop()
            except NodeError as stop_error:
                err.add_note(str(stop_error))
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _prepare_dir(self) -> None:
        if self.workdir is None:
            # short: containerd's socket path must stay below the 108 bytes of sun_path
            self._tmp = Path(tempfile.mkdtemp(prefix="psi-node-"))
            self._dir = self._tmp
        else:
            self._dir = Path(self.workdir)
            self._dir.mkdir(parents=True, exist_ok=True)
        for d in (self.log_dir, self.certs_d, self.containerd_root, self.containerd_state, self.kubelet_root):
            d.mkdir(parents=True, exist_ok=True)
        self._legacy_dir_existed = LEGACY_KUBELET_DIR.exists()
        self._new_host_dirs = [d for d in HOST_DIRS if not d.exists()]
        with contextlib.suppress(OSError):
            self._new_cgroups = [
                h / K8S_NAMESPACE for h in CGROUP_ROOT.iterdir() if h.is_dir() and not (h / K8S_NAMESPACE).exists()
            ]
        self.kubelet_path = self.kubelet_path or find_kubelet()

    def trust(self, registry: Registry) -> None:
        """Make containerd trust ``registry``'s CA (a ``hosts.toml`` read at every pull: works any time)."""
        host_dir = self.certs_d / registry.host
        host_dir.mkdir(parents=True, exist_ok=True)
        ca = host_dir / "ca.crt"
        shutil.copyfile(registry.ca_path, ca)
        (host_dir / "hosts.toml").write_text(
            f'server = "{registry.url}"\n\n'
            f'[host."{registry.url}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
            f'  ca = "{ca}"\n'
        )
        self._trusted.add(registry.host)

    # ----------------------------------------------------------------- containerd

    def _containerd_config(self) -> str:
        d = self.dir
        cni_bin = next(str(p) for p in CNI_BIN_DIRS if (p / "loopback").is_file())
        cni_conf = d / "cni"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-loopback.conflist").write_text(
            json.dumps({"cniVersion": "0.4.0", "name": "psi-loopback", "plugins": [{"type": "loopback"}]})
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{self.containerd_root}"
state = "{self.containerd_state}"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_tcp_service = true
  stream_server_address = "{LOOPBACK}"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{d / "runc"}"

[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"

[{cri}.registry]
  config_path = "{self.certs_d}"
"""

    def ctr(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run ``ctr`` against this node's containerd, in the ``k8s.io`` namespace; its stdout."""
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", K8S_NAMESPACE, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise NodeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    def _start_containerd(self, deadline: float) -> None:
        config = self.dir / "containerd.toml"
        config.write_text(self._containerd_config())
        self._spawn("containerd", ["containerd", "--config", str(config)])

        def answering() -> bool:
            if not self.containerd_socket.exists():
                return False
            try:
                done = subprocess.run(
                    ["ctr", "--address", str(self.containerd_socket), "version"],
                    capture_output=True,
                    timeout=5,
                )
            except subprocess.TimeoutExpired:
                return False
            return done.returncode == 0

        self._wait(answering, "containerd answering on its socket", deadline)
        archive = self.images.archive(
            self.images.image("pause", entrypoint=["/bin/sleep", "2147483647"]),
            self.dir / "pause.tar",
            PAUSE_IMAGE,
        )
        self.ctr("images", "import", str(archive))
        archive.unlink()

    # ----------------------------------------------------------------- kubelet

    def _create_identity(self) -> None:
        """A ServiceAccount bound to ``system:node``: the kubelet's credentials (token kubeconfig).

        The e2e API server has no Node authorizer and its CA key is not kept, so neither node
        client certificates nor bootstrap tokens apply; the ``system:node`` role has what a
        1.20 kubelet calls (nodes, node status, Pods, Secrets for pull secrets, leases, events).
        """
        from kubernetes import client

        self._api = self.control_plane.api_client()
        core: Any = client.CoreV1Api(self._api)
        rbac: Any = client.RbacAuthorizationV1Api(self._api)
        self._sa = self.name
        core.create_namespaced_service_account("kube-system", {"metadata": {"name": self._sa}})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": f"psi-e2e:{self.name}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
                "subjects": [{"kind": "ServiceAccount", "name": self._sa, "namespace": "kube-system"}],
            }
        )

        def token() -> str | None:
            sa = core.read_namespaced_service_account(self._sa, "kube-system")
            if not sa.secrets:
                return None
            secret = core.read_namespaced_secret(sa.secrets[0].name, "kube-system")
            import base64

            return base64.b64decode(secret.data["token"]).decode()

        value = self._wait(token, f"a token for ServiceAccount kube-system/{self._sa}", time.monotonic() + 60)
        write_kubeconfig(
            self.dir / "kubelet.kubeconfig",
            server=self.control_plane.server,
            ca_path=self.control_plane.ca_path,
            user="kubelet",
            token=value,
        )

    def _kubelet_config(self) -> dict[str, Any]:
        self.kubelet_port = free_port()
        self.healthz_port = free_port()
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": LOOPBACK,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": LOOPBACK,
            "healthzPort": self.healthz_port,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.control_plane.ca_path)},
            },
            "authorization": {"mode": "AlwaysAllow"},  # bound to 127.0.0.1, client certificates only
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "oomScoreAdj": 0,
            "makeIPTablesUtilChains": False,
            "hairpinMode": "none",
            "protectKernelDefaults": False,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "evictionPressureTransitionPeriod": "5s",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "maxPods": 250,
            "podPidsLimit": -1,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusUpdateFrequency": "2s",
            "nodeStatusReportFrequency": "10s",
            "volumeStatsAggPeriod": "0s",
            "resolvConf": "/etc/resolv.conf",
            "registerNode": True,
            "staticPodPath": "",
            "containerLogMaxSize": "1Mi",
            "containerLogMaxFiles": 2,
        }

    def _save_tunables(self) -> None:
        for key in KERNEL_TUNABLES:
            with contextlib.suppress(OSError):
                self._tunables[key] = (Path("/proc/sys") / key).read_text().strip()

    def _restore_tunables(self) -> None:
        tunables, self._tunables = self._tunables, {}
        for key, value in tunables.items():
            path = Path("/proc/sys") / key
            with contextlib.suppress(OSError):
                if path.read_text().strip() != value:
                    path.write_text(value + "\n")

    def _start_kubelet(self) -> None:
        assert self.kubelet_path is not None
        config = self.dir / "kubelet-config.yaml"
        config.write_text(yaml.safe_dump(self._kubelet_config(), sort_keys=False))
        self._save_tunables()
        (self.dir / "volume-plugins").mkdir(exist_ok=True)
        self._spawn(
            "kubelet",
            [
                str(self.kubelet_path),
                f"--config={config}",
                f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
                "--container-runtime=remote",
                f"--container-runtime-endpoint=unix://{self.containerd_socket}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.dir / 'kubelet-pki'}",
                f"--volume-plugin-dir={self.dir / 'volume-plugins'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                f"--pod-infra-container-image={PAUSE_IMAGE}",
                f"--node-labels=e2e.pullsecret-injector.io/node={self.name}",
                f"--v={self.verbosity}",
            ],
            env=kubelet_env(),
        )

    # ----------------------------------------------------------------- readiness

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self._procs.append(Spawned.start(argv, self.log(name), name=name, cwd=self.dir, env=env))

    def _wait(self, ready: Callable[[], T | None], what: str, deadline: float) -> T:
        """Poll ``ready`` until ``deadline`` (monotonic); NodeError if containerd or the kubelet exits or on timeout."""
        return wait_until(ready, what, deadline - time.monotonic(), watch=self._procs, error=NodeError, interval=0.2)

    def node_conditions(self) -> dict[str, str]:
        """The Node's conditions (type -> status), {} if it is not registered."""
        status, body = self.control_plane.get(f"/api/v1/nodes/{self.name}")
        if status != 200:
            return {}
        conditions = json.loads(body).get("status", {}).get("conditions") or []
        return {c["type"]: c["status"] for c in conditions}

    def _node_ready(self) -> bool:
        try:
            return self.node_conditions().get("Ready") == "True"
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.running for p in self._procs)

    def process_ids(self) -> dict[str, int]:
        """Every process this node runs, by PID: ``containerd``, ``kubelet``, ``shim:<id>``, ``init:<id>``.

        The shims and the containers' first processes are not our children (shims daemonize),
        so their PIDs come from containerd's state dir, where ``stop()`` looks for them too.
        """
        pids = {p.name: p.pid for p in self._procs if p.running}
        pids.update({f"shim:{pid}": pid for pid in self._shim_pids()})
        for pidfile in self.containerd_state.glob("io.containerd.runtime.v2.task/*/*/init.pid"):
            pid = _read_pid(pidfile)
            if pid is not None:
                pids[f"init:{pidfile.parent.name}"] = pid
        return pids

    def _shim_pids(self) -> list[int]:
        """The runc shims serving this containerd: ``containerd-shim-runc-v2 ... -address <our socket>``.

        containerd 1.6 writes no shim.pid, and a shim daemonizes (its parent is not containerd),
        so the shims are found by the one thing that is ours alone: our containerd's socket path.
        """
        socket = str(self.containerd_socket)
        found: list[int] = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if not argv or not argv[0].endswith(b"containerd-shim-runc-v2"):
                continue
            args = [a.decode(errors="replace") for a in argv]
            if any(a == "-address" and i + 1 < len(args) and args[i + 1] == socket for i, a in enumerate(args)):
                found.append(int(proc.name))
        return found

    def mounts(self) -> list[str]:
        """What is mounted under the node's dir now (container rootfs, shm, Pod volumes, ...)."""
        return _mounts_under(self.dir)

    # ----------------------------------------------------------------- teardown

    def stop(self, timeout: float = 20.0) -> None:
        """Tear everything down by PID (see the module docstring); safe to call twice.

        Every step runs even when an earlier one failed (an API server already gone, a hung
        ``ctr``): what could not be done is raised as one NodeError at the end.
        """
        errors: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as err:  # teardown goes on: report everything at the end
                errors.append(f"{what}: {type(err).__name__}: {err}")

        procs = {p.name: p for p in self._procs}
        self._procs = []
        kubelet = procs.get("kubelet")
        if kubelet is not None:
            step("stop kubelet", lambda: kubelet.stop(timeout))
        # after the kubelet: it would otherwise keep updating (or re-create) it
        step("delete the Node", self._delete_node_object)
        step("restore kernel tunables", self._restore_tunables)
        containerd = procs.get("containerd")
        pod_dirs: set[str] = set()
        if containerd is not None:
            if containerd.running:
                step("remove containers", lambda: pod_dirs.update(self._remove_containers()))
            step("stop containerd", lambda: containerd.stop(timeout))
        if self._dir is not None:
            step("kill leftover processes", self._kill_leftover_processes)
            left = unmount_all(self._dir)
            if left:
                self.keep_workdir = True
                errors.append(f"still mounted: {left}")
        step("remove host leftovers", lambda: self._remove_host_leftovers(pod_dirs))
        step("remove cgroups", self._remove_cgroups)
        if self._api is not None:
            step("close the API client", self._api.close)
            self._api = None
        atexit.unregister(self.stop)
        if self._tmp is not None and not self.keep_workdir:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self._dir = None
        if errors:
            raise NodeError(f"node {self.name} teardown incomplete:\n" + "\n".join(errors))

    def _delete_node_object(self) -> None:
        if self._api is None:
            return
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core: Any = client.CoreV1Api(self._api)
        rbac: Any = client.RbacAuthorizationV1Api(self._api)
        calls: list[Callable[[], object]] = [
            lambda: core.delete_node(self.name),
            lambda: rbac.delete_cluster_role_binding(f"psi-e2e:{self.name}"),
            lambda: core.delete_namespaced_service_account(self._sa, "kube-system"),
        ]
        for call in calls:
            try:
                call()
            except ApiException as err:
                if err.status != 404:
                    raise

    def containers(self) -> list[dict[str, Any]]:
        """containerd's containers in ``k8s.io`` (sandboxes included) as ``ctr containers info`` JSON."""
        infos = []
        for cid in self.ctr("containers", "list", "--quiet").split():
            with contextlib.suppress(NodeError, json.JSONDecodeError):
                infos.append(json.loads(self.ctr("containers", "info", cid)))
        return infos

    def _remove_containers(self) -> set[str]:
        """Kill and delete every task and container through containerd; the Pods' log dir names."""
        pod_dirs: set[str] = set()
        with contextlib.suppress(NodeError, subprocess.TimeoutExpired):
            for info in self.containers():
                labels = info.get("Labels") or {}
                ns, pod, uid = (
                    labels.get("io.kubernetes.pod.namespace"),
                    labels.get("io.kubernetes.pod.name"),
                    labels.get("io.kubernetes.pod.uid"),
                )
                if ns and pod and uid:
                    pod_dirs.add(f"{ns}_{pod}_{uid}")
            # workload containers first, sandboxes last (as the kubelet would)
            infos = sorted(
                self.containers(),
                key=lambda i: (i.get("Labels") or {}).get("io.cri-containerd.kind") == "sandbox",
            )
            for info in infos:
                cid = info["ID"]
                self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False, timeout=15)
                self.ctr("tasks", "delete", "--force", cid, check=False, timeout=15)
                self.ctr("containers", "delete", cid, check=False, timeout=15)
        return pod_dirs

    def _kill_leftover_processes(self) -> None:
        """Any container init recorded in containerd's state dir, and any shim of ours: SIGKILL by PID.

        After a clean ``_remove_containers`` there are none; this is for a containerd that died
        or hung, so that nothing started by this node outlives ``stop()``.
        """
        tasks = self.containerd_state / "io.containerd.runtime.v2.task"
        pids = [_read_pid(f) for f in sorted(tasks.glob("*/*/init.pid"))]
        for pid in [p for p in pids if p is not None] + self._shim_pids():
            if pid > 1 and pid_alive(pid):
                _kill_pid(pid)

    def _remove_cgroups(self) -> None:
        """Remove the ``/k8s.io`` cgroup parents this node's containers created, if empty.

        runc removes a container's own cgroup when it is deleted; the parent containerd named
        after its namespace stays. ``rmdir`` fails on a cgroup that still has children or
        processes, so another containerd using it at the same time is never disturbed.
        """
        new, self._new_cgroups = self._new_cgroups, []
        for parent in new:
            with contextlib.suppress(OSError):
                os.rmdir(parent)

    def _remove_host_leftovers(self, pod_dirs: Sequence[str] | set[str]) -> None:
        for name in pod_dirs:
            target = POD_LOGS / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):
            for link in CONTAINER_LOGS.iterdir():
                if link.is_symlink() and any(f"/{name}/" in os.readlink(link) for name in pod_dirs):
                    link.unlink()
        sock = LEGACY_KUBELET_DIR / "device-plugins" / "kubelet.sock"
        with contextlib.suppress(OSError):
            sock.unlink()
        if not self._legacy_dir_existed:
            shutil.rmtree(LEGACY_KUBELET_DIR, ignore_errors=True)
            self._legacy_dir_existed = True
        new_dirs, self._new_host_dirs = self._new_host_dirs, []
        for top in new_dirs:  # only empty dirs go: someone else may have started using them meanwhile
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


def main() -> int:
    """A control plane, two registries and a Ready node to poke at by hand, until Ctrl-C / SIGTERM.

    ``.venv/bin/python -m tests.e2e.node`` prints the kubeconfig, the registries and their
    users, and how to reach containerd; everything is stopped by PID on the way out.
    """
    import sys

    from .controlplane import find_assets

    missing = missing_prerequisites()
    assets = find_assets()
    if missing or assets is None:
        print(
            f"cannot start: missing {'; '.join(missing) or 'etcd/kube-apiserver'} ({NODE_INSTALL_HINT})",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="psi-node-images-") as images_dir, ControlPlane(assets) as cp:
        a = Registry(users={"puller-a": "a-pass-1"}, name="registry-a").start()
        b = Registry(users={"puller-b": "b-pass-1"}, name="registry-b").start()
        try:
            with Node(cp, BusyboxImages(Path(images_dir) / "layout")) as node:
                for reg in (a, b):
                    node.trust(reg)
                print(f"node {node.name} Ready in {node.startup_seconds:.1f}s; export KUBECONFIG={cp.kubeconfig_path}")
                for reg in (a, b):
                    print(f"registry {reg.host} users {reg.current_users} (CA {reg.ca_path})")
                print(f"ctr --address {node.containerd_socket} -n {K8S_NAMESPACE} containers list")
                print(f"logs: {node.log_dir}   (Ctrl-C to stop)")
                sys.stdout.flush()
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
        finally:
            b.stop()
            a.stop()
    return 0


__all__ = [
    "CGROUP_ROOT",
    "K8S_NAMESPACE",
    "PAUSE_IMAGE",
    "Node",
    "NodeError",
    "find_kubelet",
    "missing_prerequisites",
    "pid_alive",
    "unmount_all",
]


if __name__ == "__main__":
    raise SystemExit(main())
