"""The container image, run by a real node: the smoke, then the chart's own Deployment (issue 16).

Part 1, the in-image smoke: ``build/image/pullsecret-injector.tar`` (``hack/build-image.sh``)
is imported into the node's containerd (namespace ``k8s.io``, the one the kubelet uses) and
run with ``ctr run --read-only`` under the image's own user: ``pullsecret-injector check``
answers, and ``serve --dev`` serves ``/healthz`` (a tmpfs on /tmp, as the chart's emptyDir).

Part 2, the chart as shipped, on the node: real Helm installs the chart with the imported
image (``pullPolicy: Never``: the kubelet must use the image built above, never a registry),
``certificates.mode: self`` and ``hostNetwork: true`` on a free port; the kubelet runs the
Deployment's Pod exactly as rendered (securityContext, probes, volumes and the ServiceAccount
token the controller-manager issued), and nothing else runs the webhook.

How the API server reaches the webhook Pod here, and why
---------------------------------------------------------
Through the Service and its Endpoints, with ``kube-apiserver --enable-aggregator-routing``:
the API server resolves the webhook's ``clientConfig.service`` to an address of the Service's
**Endpoints** (the endpoints controller's, from the Pod's IP and readiness) and dials
``<node address>:<server.port>``, verifying the certificate for ``<svc>.<ns>.svc``. That is
what a real cluster does when the control plane runs no kube-proxy (managed control planes,
and the setups ``hostNetwork`` exists for); the default, dialling the ClusterIP, needs
kube-proxy's DNAT to reach the same ``<node address>:<port>``, and there is no kube-proxy on
this machine. Nothing stands in between: the Endpoints, the Pod IP, the readiness that puts it
there and the TLS are all real. The node address is a /32 on ``lo`` from 198.18.0.0/15
(``NodeAddress``): Endpoints refuse loopback addresses, and traffic to an address on ``lo``
never leaves the machine. The chart's ``server.bindNodeIP`` makes the webhook listen on that
address only. The reverse direction, the webhook's in-cluster client dialling the
``kubernetes`` Service's ClusterIP:443, needs the one thing kube-proxy would do:
``TcpRelay`` forwards that ClusterIP (a loopback range, so local) to the API server. With no
scheduler, ``PodBinder`` binds Pending Pods to the node through ``pods/binding``.

Part 3, the seed workflow: a Pod in a new namespace naming a private image (registry ``a`` of
``tests/registries.py``) and no pull secret is admitted by the webhook Pod, gets its Secret,
and the kubelet pulls the image with it; ``helm uninstall`` then leaves no webhook
configuration and no running container (checked through containerd).

This module runs its own control plane (aggregator routing, loopback ClusterIPs) and its own
node, so the session's ones keep their ClusterIP routing for the other modules.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import ssl
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.registries import BusyboxImages, PushedImage, Registry

from .chart_support import (
    METADATA_NAME_LABEL,
    HelmRelease,
    can_bind,
    chart_copy,
    https_get,
    loopback_service_range,
)
from .conftest import require_assets, require_node
from .controlplane import ControlPlane, free_port, tail
from .image_support import (
    NodeAddress,
    PodBinder,
    TcpRelay,
    container_spec,
    image_env,
    process_ids,
    require_image,
    task_pids,
    wait_until,
)
from .node import Node

KEEP = os.environ.get("PSI_E2E_KEEP") == "1"
RELEASE = "psi"
FULLNAME = "psi-pullsecret-injector"
RELEASE_NS = "psi-image-system"
SERVICE_HOST = f"{FULLNAME}.{RELEASE_NS}.svc"
WEBHOOK_CONFIG_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{FULLNAME}"
DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
INJECTED = "pullsecret-injector.io/injected"
RUN_AS = 65532
#: The image's Python starts slowly on 2 shared cores; the kubelet's probes are the real bound.
POD_TIMEOUT = 240.0
#: The image's ENTRYPOINT: arguments after ``ctr run IMAGE ID`` replace the whole command line.
ENTRYPOINT = ("pullsecret-injector",)
#: containerd's default capability set (oci.defaultUnixCaps); ctr has no ``--cap-drop ALL``.
OCI_DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


@dataclass
class Cluster:
    control_plane: ControlPlane
    node: Node
    address: str
    admin: Any
    binder: PodBinder
    relay: TcpRelay
    image: str
    image_digest: str

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.admin)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image_archive() -> tuple[Path, str]:
    require_node()
    return require_image()


@pytest.fixture(scope="module")
def cluster(
    image_archive: tuple[Path, str], node_images: BusyboxImages, node_registries: tuple[Registry, Registry]
) -> Iterator[Cluster]:
    """Own control plane (aggregator routing, loopback ClusterIPs) + a node on a /32 of ``lo``, image imported."""
    assets = require_assets()
    archive, image = image_archive
    address = NodeAddress().add()
    cp = node = relay = binder = admin = None
    try:
        cp = ControlPlane(
            assets,
            service_cluster_ip_range=loopback_service_range(),
            extra_apiserver_args=("--enable-aggregator-routing=true",),
            keep_workdir=KEEP,
        ).start()
        kubernetes_ip = str(next(ipaddress.ip_network(cp.service_cluster_ip_range).hosts()))
        problem = can_bind(kubernetes_ip, 443)
        assert problem is None, problem
        relay = TcpRelay(kubernetes_ip, 443, "127.0.0.1", cp.apiserver_port).start()
        node = Node(cp, node_images, node_ip=address.address, keep_workdir=KEEP)
        node.start(node_registries)
        t0 = time.monotonic()
        node.ctr("images", "import", str(archive), timeout=180)
        import_seconds = time.monotonic() - t0
        digest = _image_digest(node, image)
        admin = cp.api_client()
        binder = PodBinder(admin, node.name).start()
        env = image_env()
        print(
            f"\nimage e2e: node {node.name} at {address.address} Ready in {node.startup_seconds:.1f}s; "
            f"image {image} imported in {import_seconds:.1f}s (archive {env.get('IMAGE_MB', '?')} MB, "
            f"/opt/venv {env.get('VENV_MB', '?')} MB, built in {env.get('SECONDS_TOTAL', '?')}s)"
        )
        yield Cluster(cp, node, address.address, admin, binder, relay, image, digest)
    finally:
        if binder is not None:
            binder.stop()
        if node is not None:
            node.stop()
        if relay is not None:
            relay.stop()
        if admin is not None:
            admin.close()
        if cp is not None:
            cp.stop()
        address.remove()


def _image_digest(node: Node, image: str) -> str:
    """The manifest digest of ``image`` in containerd (what ``ctr images import`` stored)."""
    for line in node.ctr("images", "list").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == image:
            return next(f for f in fields if f.startswith("sha256:"))
    raise AssertionError(f"{image} not in containerd after the import:\n{node.ctr('images', 'list')}")


def _image_ids(node: Node, manifest_digest: str) -> set[str]:
    """The manifest and config digests of the image: the CRI reports one of them as a container's imageID."""
    ids = {manifest_digest}
    manifest = json.loads(node.ctr("content", "get", manifest_digest))
    for child in manifest.get("manifests") or []:  # an index: its manifests too
        ids.add(str(child["digest"]))
        manifest = json.loads(node.ctr("content", "get", str(child["digest"])))
    if "config" in manifest:
        ids.add(str(manifest["config"]["digest"]))
    return ids


# --------------------------------------------------------------------------- part 1: the smoke


def _ctr_run_args(cluster: Cluster, name: str) -> list[str]:
    """``ctr run`` options of the smoke: what the chart asks of the kubelet, as far as ctr can say it."""
    node = cluster.node
    return [
        "run",
        "--read-only",
        "--net-host",
        "--seccomp",
        *(arg for cap in OCI_DEFAULT_CAPABILITIES for arg in ("--cap-drop", cap)),
        "--runc-root",
        str(node.dir / "runc-ctr"),
        "--fifo-dir",
        str(node.dir / "fifo-ctr"),
        "--label",
        f"e2e.pullsecret-injector.io/smoke={name}",
    ]


def test_the_image_answers_check_read_only_as_its_own_user(cluster: Cluster) -> None:
    """``pullsecret-injector check`` in the image, read-only root, no capabilities, the image's USER."""
    cid = f"psi-smoke-check-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    out = cluster.node.ctr(*_ctr_run_args(cluster, cid), "--rm", cluster.image, cid, *ENTRYPOINT, "check", timeout=120)
    seconds = time.monotonic() - t0
    assert "registry.example.com" in out or "pull" in out.lower(), f"check printed:\n{out}"
    assert cid not in cluster.node.ctr("containers", "list", "--quiet").split(), "--rm removed it"
    print(f"image smoke: check answered in {seconds:.2f}s")


#: Run by /bin/sh in the image: prints what should not be in the final stage (nothing, when lean).
LEAN_CHECK = r"""
for tool in pip pip3 gcc cc make; do command -v "$tool"; done
python -c 'import pip' 2>/dev/null && echo 'import pip'
find /opt/venv -name __pycache__ | head -1
ls -d /src /wheels /wheelhouse /opt/venv/lib/python3*/site-packages/tests 2>/dev/null
exit 0
"""


def test_the_image_is_lean_no_pip_compiler_sources_or_caches(cluster: Cluster) -> None:
    """The final stage holds the virtualenv only: no pip, no compiler, no build sources or wheels."""
    cid = f"psi-smoke-lean-{uuid.uuid4().hex[:6]}"
    out = cluster.node.ctr(
        *_ctr_run_args(cluster, cid), "--rm", cluster.image, cid, "/bin/sh", "-c", LEAN_CHECK, timeout=120
    )
    assert out.strip() == "", f"found in the image:\n{out}"


def test_the_image_serves_healthz_with_serve_dev_read_only_as_65532(cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.node
    cid = f"psi-smoke-serve-{uuid.uuid4().hex[:6]}"
    port, metrics_port = free_port(), free_port()
    log = node.dir / f"{cid}.log"
    node.ctr(
        *_ctr_run_args(cluster, cid),
        "--detach",
        "--log-uri",
        f"file://{log}",
        "--mount",
        "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev:size=16m",
        cluster.image,
        cid,
        *ENTRYPOINT,
        "serve",
        "--dev",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
    )
    try:
        t0 = time.monotonic()
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # --dev: a throwaway self-signed certificate

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=insecure, timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        try:
            wait_until(healthy, f"/healthz of the image on 127.0.0.1:{port}", timeout=90)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- container log:\n{tail(log)}") from None
        seconds = time.monotonic() - t0
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert r.status == 200
        pid, status = task_pids(node)[cid]
        assert status == "RUNNING"
        assert process_ids(pid) == (RUN_AS, RUN_AS), "the image's USER 65532:65532, no root"
        spec = container_spec(node, cid)
        assert spec["root"]["readonly"] is True
        assert spec["process"]["user"]["uid"] == RUN_AS
        assert not spec["process"]["capabilities"].get("bounding"), "all capabilities dropped"
        assert spec["linux"].get("seccomp"), "the default seccomp profile"
        print(f"image smoke: serve --dev answered /healthz {seconds:.2f}s after start")
    finally:
        node.ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
        wait_until(
            lambda: cid not in task_pids(node) or task_pids(node)[cid][1] == "STOPPED", "the smoke task to stop", 30
        )
        node.ctr("tasks", "delete", cid, check=False)
        node.ctr("containers", "delete", cid, check=False)


# --------------------------------------------------------------------------- part 2: the chart on the node


@dataclass
class Release:
    helm: HelmRelease
    port: int
    metrics_port: int
    pod: Any
    ready_seconds: float


def _values(cluster: Cluster, registry: Registry, port: int, metrics_port: int) -> dict[str, Any]:
    repository, _, tag = cluster.image.rpartition(":")
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        # one node and a host port: a second replica could never be placed (see the chart README)
        "replicaCount": 1,
        "podDisruptionBudget": {"enabled": False},  # no policy/v1 before 1.21
        "certificates": {"mode": "self"},
        "hostNetwork": True,
        "server": {"port": port, "bindNodeIP": True, "shutdownDelay": 1},
        "metrics": {"port": metrics_port},
        "terminationGracePeriodSeconds": 10,
        "webhook": {"failurePolicy": "Fail"},
        "policy": {
            "excludeNamespaces": ["kube-system", "kube-public", "kube-node-lease"],
            "rules": [
                {
                    "name": "registry-a",
                    "registries": [registry.host],
                    "repositories": ["team/*"],
                    "secret": "registry-a-pull",
                    "source": {"secret": {"namespace": RELEASE_NS, "name": "registry-a-credentials"}},
                }
            ],
        },
    }


def _namespace(core: Any, name: str) -> None:
    """A namespace labelled ``kubernetes.io/metadata.name`` as 1.21+ does (the chart's selector uses it)."""
    core.create_namespace({"metadata": {"name": name, "labels": {METADATA_NAME_LABEL: name}}})


def _webhook_pods(core: Any) -> list[Any]:
    return list(core.list_namespaced_pod(RELEASE_NS, label_selector=f"app.kubernetes.io/instance={RELEASE}").items)


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _describe(cluster: Cluster, pod: Any | None) -> str:
    node = cluster.node
    lines = [f"--- kubelet:\n{tail(node.log('kubelet'), 25)}"]
    if pod is not None:
        status = cluster.admin.sanitize_for_serialization(pod.status)
        lines.insert(0, json.dumps(status, indent=1)[:3000])
        events = cluster.core.list_namespaced_event(
            pod.metadata.namespace, field_selector=f"involvedObject.name={pod.metadata.name}"
        ).items
        lines.insert(1, "events:\n" + "\n".join(f"  {e.reason}: {e.message}" for e in events))
        logs = sorted(Path("/var/log/pods").glob(f"{pod.metadata.namespace}_{pod.metadata.name}_*/*/*.log"))
        for path in logs[-1:]:
            lines.append(f"--- {path}:\n{tail(path, 30)}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def release(
    cluster: Cluster, node_registries: tuple[Registry, Registry], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    """The chart installed by Helm; its one Pod run by the kubelet until Ready (probes passing)."""
    a, _ = node_registries
    core = cluster.core
    _namespace(core, RELEASE_NS)
    auths = {a.host: a.auth_entry("puller-a")}
    core.create_namespaced_secret(
        RELEASE_NS,
        {
            "metadata": {"name": "registry-a-credentials"},
            "type": DOCKERCONFIGJSON,
            "data": {".dockerconfigjson": base64.b64encode(json.dumps({"auths": auths}).encode()).decode()},
        },
    )
    port, metrics_port = free_port(cluster.address), free_port(cluster.address)
    chart_dir = chart_copy(tmp_path_factory.mktemp("chart") / "pullsecret-injector")
    helm = HelmRelease(cluster.control_plane, RELEASE, RELEASE_NS, chart_dir, _values(cluster, a, port, metrics_port))
    t0 = time.monotonic()
    helm.install()
    try:

        def ready_pod() -> Any:
            pods = [p for p in _webhook_pods(core) if p.metadata.deletion_timestamp is None]
            return next((p for p in pods if _ready(p)), None)

        try:
            pod = wait_until(ready_pod, "the chart's webhook Pod Ready on the node", POD_TIMEOUT, interval=0.5)
        except AssertionError as err:
            pods = _webhook_pods(core)
            raise AssertionError(f"{err}\n{_describe(cluster, pods[0] if pods else None)}") from None
        seconds = time.monotonic() - t0
        print(f"\nimage e2e: helm install -> webhook Pod Ready (probes passing) in {seconds:.1f}s")
        yield Release(helm, port, metrics_port, pod, seconds)
    finally:
        if helm.installed:
            try:
                helm.uninstall()
            except Exception as exc:
                print(f"helm uninstall at teardown failed: {exc}")


def test_the_kubelet_runs_the_charts_deployment_as_rendered(cluster: Cluster, release: Release) -> None:
    """The Pod is the rendered template, run by containerd as the chart asks: user, read-only, caps, seccomp."""
    (deployment,) = release.helm.rendered("Deployment")
    template = deployment["spec"]["template"]["spec"]
    rendered = next(c for c in template["containers"] if c["name"] == "webhook")
    pod = cluster.core.read_namespaced_pod(release.pod.metadata.name, RELEASE_NS)
    live = cluster.admin.sanitize_for_serialization(pod.spec)
    container = next(c for c in live["containers"] if c["name"] == "webhook")

    assert live["nodeName"] == cluster.node.name
    assert live["hostNetwork"] is True
    assert container["image"] == cluster.image
    assert container["imagePullPolicy"] == "Never"
    assert container["args"] == rendered["args"]
    for key, value in rendered["securityContext"].items():
        assert container["securityContext"][key] == value, key
    for key, value in template["securityContext"].items():
        assert live["securityContext"][key] == value, key
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == rendered[probe]["httpGet"], probe
    assert {m["mountPath"] for m in rendered["volumeMounts"]} <= {m["mountPath"] for m in container["volumeMounts"]}
    (status,) = pod.status.container_statuses
    assert status.started, "the startup probe passed (the kubelet ran it)"
    assert status.ready, "the readiness probe passed"
    ids = _image_ids(cluster.node, cluster.image_digest)
    assert any(status.image_id.endswith(i) for i in ids), f"the imported image ran: {status.image_id} not in {ids}"
    assert pod.status.pod_ip == cluster.address, "a host-network Pod's IP is the node's address"

    # containerd's view: the container the kubelet made for it
    infos = [
        i
        for i in cluster.node.containers()
        if (i.get("Labels") or {}).get("io.kubernetes.pod.uid") == pod.metadata.uid
        and (i.get("Labels") or {}).get("io.kubernetes.container.name") == "webhook"
    ]
    assert infos, "containerd runs the webhook container"
    cid = infos[-1]["ID"]
    spec = container_spec(cluster.node, cid)
    assert spec["root"]["readonly"] is True
    assert (spec["process"]["user"]["uid"], spec["process"]["user"]["gid"]) == (RUN_AS, RUN_AS)
    assert spec["process"].get("noNewPrivileges") is True
    assert not spec["process"]["capabilities"].get("bounding"), "capabilities: drop ALL"
    assert spec["linux"].get("seccomp"), "seccompProfile RuntimeDefault"
    mounts = {m["destination"]: m for m in spec["mounts"]}
    for mount in rendered["volumeMounts"]:  # every rendered volume, read-only where the chart says so
        assert mount["mountPath"] in mounts, mount
        if mount.get("readOnly"):
            assert "ro" in mounts[mount["mountPath"]]["options"], mount
    assert "/tmp" in mounts  # noqa: S108 - the chart's emptyDir, a path in the container
    assert "rw" in mounts["/tmp"]["options"]  # noqa: S108 - the one writable place
    pid, state = task_pids(cluster.node)[cid]
    assert state == "RUNNING"
    assert process_ids(pid) == (RUN_AS, RUN_AS)


def test_the_pod_authenticates_with_the_token_the_controller_manager_issued(cluster: Cluster, release: Release) -> None:
    """The token controller made the ServiceAccount's token Secret; the kubelet mounted exactly it."""
    from kubernetes import client

    core = cluster.core
    pod = core.read_namespaced_pod(release.pod.metadata.name, RELEASE_NS)
    assert pod.spec.service_account_name == FULLNAME
    sa = core.read_namespaced_service_account(FULLNAME, RELEASE_NS)
    secrets = [core.read_namespaced_secret(r.name, RELEASE_NS) for r in sa.secrets or []]
    tokens = [s for s in secrets if s.type == "kubernetes.io/service-account-token"]
    assert tokens, "kube-controller-manager's token controller issued a token Secret"
    token = base64.b64decode(tokens[0].data["token"]).decode()
    volume = next(v for v in pod.spec.volumes if v.secret and v.secret.secret_name == tokens[0].metadata.name)
    mounted = cluster.node.kubelet_root / "pods" / pod.metadata.uid / "volumes" / "kubernetes.io~secret" / volume.name
    assert (mounted / "token").read_text() == token, "the kubelet mounted that token into the Pod"
    authn: Any = client.AuthenticationV1Api(cluster.admin)
    review = authn.create_token_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    )
    assert review.status.authenticated
    assert review.status.user.username == f"system:serviceaccount:{RELEASE_NS}:{FULLNAME}"
    # and the webhook used it: it holds the leader Lease and filled the chart's caBundle
    assert wait_until(lambda: _ca_bundle(cluster), "the caBundle the webhook patched", 60)


def _ca_bundle(cluster: Cluster) -> bytes:
    status, body = cluster.control_plane.get(WEBHOOK_CONFIG_PATH)
    if status != 200:
        return b""
    hooks = json.loads(body).get("webhooks") or []
    encoded = (hooks[0].get("clientConfig") or {}).get("caBundle", "") if hooks else ""
    return base64.b64decode(encoded) if encoded else b""


def test_the_api_server_reaches_the_webhook_pod_through_the_services_endpoints(
    cluster: Cluster, release: Release
) -> None:
    """Endpoints name the node's address and the Pod; that address serves the chart's certificate."""
    endpoints = cluster.core.read_namespaced_endpoints(FULLNAME, RELEASE_NS)
    (subset,) = endpoints.subsets
    (address,) = subset.addresses
    assert address.ip == cluster.address
    assert address.node_name == cluster.node.name
    assert address.target_ref.name == release.pod.metadata.name
    assert {p.name: p.port for p in subset.ports}["https"] == release.port
    bundle = wait_until(lambda: _ca_bundle(cluster), "the caBundle", 60)
    answer = https_get(cluster.address, release.port, "/readyz", ca_pem=bundle, server_hostname=SERVICE_HOST)
    assert answer.status == 200
    # nothing on the ClusterIP: the API server cannot be getting there some other way
    service = cluster.core.read_namespaced_service(FULLNAME, RELEASE_NS)
    assert can_bind(service.spec.cluster_ip, 443) is None, "nothing listens on the Service's ClusterIP:443"


# --------------------------------------------------------------------------- part 3: the seed workflow


@pytest.fixture(scope="module")
def app_image(node_images: BusyboxImages, node_registries: tuple[Registry, Registry]) -> PushedImage:
    a, _ = node_registries
    entry = ["/bin/sh", "-c", "printf 'ran:image-e2e' > /dev/termination-log"]
    return a.push(node_images.image("image-e2e-app", entrypoint=entry), "team/image-e2e", "1.0")


def test_seed_workflow_a_private_image_in_a_new_namespace_is_pulled_with_the_injected_secret(
    cluster: Cluster, release: Release, app_image: PushedImage, node_registries: tuple[Registry, Registry]
) -> None:
    """A new namespace, a private image, no pull secret: admitted by the webhook Pod, pulled by the kubelet.

    registry ``a`` refuses anonymous pulls (htpasswd), so the Pod can only run with the injected
    Secret (test_node_e2e.py shows the same Pod in ImagePullBackOff without the webhook).
    """
    a, _ = node_registries
    core = cluster.core
    ns = f"seed-{uuid.uuid4().hex[:6]}"
    _namespace(core, ns)
    cluster.control_plane.wait_for_default_service_account(ns)
    pod_body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app"},
        "spec": {
            # no nodeName: bound like any Pod; hostNetwork: the node has no Pod network
            "hostNetwork": True,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "app", "image": app_image.reference, "imagePullPolicy": "Always"}],
        },
    }
    mark = a.log_mark()
    metrics_before = _admissions(cluster, release)
    t0 = time.monotonic()
    created = wait_until(lambda: _create(core, ns, pod_body), "the Pod admitted through the webhook Pod", 60, 1.0)
    assert [s.name for s in created.spec.image_pull_secrets or []] == ["registry-a-pull"]
    assert created.metadata.annotations[INJECTED] == "registry-a-pull"
    copy = core.read_namespaced_secret("registry-a-pull", ns)
    assert copy.type == DOCKERCONFIGJSON
    auths = json.loads(base64.b64decode(copy.data[".dockerconfigjson"]))["auths"]
    assert auths[a.host]["password"] == a.current_users["puller-a"]

    def done() -> Any:
        pod = core.read_namespaced_pod("app", ns)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    try:
        pod = wait_until(done, f"Pod {ns}/app to finish", 120, 0.5)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{_describe(cluster, core.read_namespaced_pod('app', ns))}") from None
    assert pod.status.phase == "Succeeded", _describe(cluster, pod)
    (status,) = pod.status.container_statuses
    assert status.state.terminated.message == "ran:image-e2e", "the private image itself ran"
    assert status.image_id.endswith(app_image.digest)
    assert a.manifest_requests("team/image-e2e", since=mark) >= 1, "pulled from the registry, authenticated"
    assert _admissions(cluster, release) > metrics_before, "the webhook Pod answered the admission"
    print(f"image e2e: seed Pod created -> Succeeded in {time.monotonic() - t0:.1f}s")


def _create(core: Any, namespace: str, body: dict[str, Any]) -> Any:
    """Create the Pod; None while the API server cannot call the webhook yet (failurePolicy Fail: 500)."""
    from kubernetes.client.exceptions import ApiException

    try:
        return core.create_namespaced_pod(namespace, body)
    except ApiException as err:
        if err.status in (500, 503) or "failed calling webhook" in str(err.body):
            return None
        raise


def _admissions(cluster: Cluster, release: Release) -> float:
    """Sum of the webhook's admission counters from its /metrics on the node's address."""
    url = f"http://{cluster.address}:{release.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("pullsecret_injector_admission") and "_total" in line.split("{")[0]:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_helm_uninstall_leaves_no_webhook_configuration_and_no_running_container(
    cluster: Cluster, release: Release
) -> None:
    """No MutatingWebhookConfiguration, no Pod, no RUNNING task in containerd, nothing on the port."""
    from kubernetes import client

    release.helm.uninstall()
    admission: Any = client.AdmissionregistrationV1Api(cluster.admin)

    def gone() -> bool:
        configs = admission.list_mutating_webhook_configuration().items
        return not configs

    wait_until(gone, "no MutatingWebhookConfiguration left", 30)

    def no_container() -> bool:
        tasks = task_pids(cluster.node)
        for info in cluster.node.containers():
            labels = info.get("Labels") or {}
            running = tasks.get(info["ID"], (0, "STOPPED"))[1] == "RUNNING"
            if labels.get("io.kubernetes.pod.namespace") == RELEASE_NS and running:
                return False
        return not [p for p in _webhook_pods(cluster.core)]

    t0 = time.monotonic()
    wait_until(no_container, "no running container of the release in containerd and no Pod", 90, 0.5)
    assert not accepting(cluster.address, release.port), "nothing serves the webhook port any more"
    # and Pods are admitted again without the webhook (a leftover configuration with Fail would refuse them)
    ns = f"after-{uuid.uuid4().hex[:6]}"
    _namespace(cluster.core, ns)
    cluster.control_plane.wait_for_default_service_account(ns)
    body = {"metadata": {"name": "probe"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    created = cluster.core.create_namespaced_pod(ns, body, dry_run="All")
    assert not created.spec.image_pull_secrets
    print(f"image e2e: helm uninstall -> no webhook container running in {time.monotonic() - t0:.1f}s")


def accepting(host: str, port: int) -> bool:
    """True while something accepts connections on ``host:port``."""
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0
