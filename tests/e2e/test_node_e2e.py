"""Acceptance on a real node: Pods that actually pull private images with the Secrets we inject.

Everything else in tests/e2e stops at the API server. Here a real kubelet and containerd
(``node`` fixture, tests/e2e/node.py) run the Pods, pulling from two real private registries
(``node_registries``: CNCF Distribution with htpasswd and TLS, users ``puller-a``/``rotator``
on ``a`` and ``puller-b`` on ``b``). The Pods name private images and no pull secret; only
the webhook (a real ``serve`` process, registered for this module's namespaces) can make
them pull. The negative cases (no webhook, an excluded namespace) show the same Pods really
end in ImagePullBackOff, so a passing positive case is not the node's image cache talking:
every container has ``imagePullPolicy: Always``, every start authenticates.

There is no scheduler and no Pod network: Pods set ``nodeName`` and ``hostNetwork: true``.
Measurements are printed and listed at the end of the run ("pullsecret-injector node e2e").
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.builders import pull_secrets, wait_for
from tests.registries import BusyboxImages, PushedImage, Registry

from .conftest import require_node
from .controlplane import ControlPlane, tail
from .node import CGROUP_ROOT, K8S_NAMESPACE, Node, pid_alive
from .test_webhook_e2e import (
    DOCKERCONFIGJSON,
    INJECTED,
    Namespaces,
    _delete_namespace,
    dockerconfig_secret,
    dry_run_probe,
    read_secret,
)
from .webhook import WebhookProcess

NODE_HOOK = "psi-e2e-node"
NODE_SYSTEM_NS = "psi-e2e-node-system"
#: No webhook configuration selects namespaces labelled with this hook name.
NO_HOOK = "none"
EXCLUDED_PREFIX = "e2e-node-excluded"
ROTATION_BUDGET_SECONDS = 10.0
KEEP = os.environ.get("PSI_E2E_KEEP") == "1"
#: Generous bounds for the node itself (image pull + container start on 2 shared cores).
POD_TIMEOUT = 90.0
BACKOFF_TIMEOUT = 90.0


# --------------------------------------------------------------------------- reporting


class _NodeReport:
    """Prints this module's measurements after the test summary (its own section, its own plugin name)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.lines:
            terminalreporter.write_sep("-", "pullsecret-injector node e2e measurements")
            for line in self.lines:
                terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def node_report(request: pytest.FixtureRequest) -> _NodeReport:
    plugin = _NodeReport()
    request.config.pluginmanager.register(plugin, "psi-e2e-node-measurements")
    return plugin


Note = Callable[[str, str], None]


@pytest.fixture
def note(
    node_report: _NodeReport, record_property: Callable[[str, object], None], request: pytest.FixtureRequest
) -> Note:
    def add(key: str, text: str) -> None:
        line = f"{request.node.name}: {key}: {text}"
        print(line)
        record_property(key, text)
        node_report.lines.append(line)

    return add


# --------------------------------------------------------------------------- images and policy


@dataclass(frozen=True)
class Images:
    """What the module pushes: private images on registry ``a`` (``team/*``, ``rotate/*``) and ``b``."""

    app: PushedImage
    """a: writes ``ran:team-app`` as its termination message and exits 0"""
    web: PushedImage
    """a: runs until SIGTERM (for the Deployment)"""
    rotate: PushedImage
    """a, under the ``rotate`` rule: writes ``ran:rotate`` and exits 0"""
    init: PushedImage
    """b: the init container, writes ``ran:init`` and exits 0"""


def _finishing(message: str) -> list[str]:
    return ["/bin/sh", "-c", f"printf '{message}' > /dev/termination-log"]


@pytest.fixture(scope="module")
def images(node_images: BusyboxImages, node_registries: tuple[Registry, Registry], node_report: _NodeReport) -> Images:
    a, b = node_registries
    t0 = time.monotonic()
    built = Images(
        app=a.push(node_images.image("app", entrypoint=_finishing("ran:team-app")), "team/app", "1.0"),
        web=a.push(
            node_images.image("web", entrypoint=["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]),
            "team/web",
            "1.0",
        ),
        rotate=a.push(node_images.image("rotate", entrypoint=_finishing("ran:rotate")), "rotate/app", "1.0"),
        init=b.push(node_images.image("init", entrypoint=_finishing("ran:init")), "tools/init", "1.0"),
    )
    node_report.lines.append(f"images: 4 built with umoci and pushed with skopeo in {time.monotonic() - t0:.2f}s")
    return built


def node_policy(a: Registry, b: Registry) -> dict[str, Any]:
    def source(name: str) -> dict[str, Any]:
        return {"secret": {"namespace": NODE_SYSTEM_NS, "name": name}}

    return {
        "excludeNamespaces": ["kube-system", "kube-public", "kube-node-lease", f"{EXCLUDED_PREFIX}-*"],
        "rules": [
            {
                "name": "registry-a",
                "registries": [a.host],
                "repositories": ["team/*"],
                "secret": "registry-a-pull",
                "source": source("registry-a-credentials"),
            },
            {
                "name": "registry-b",
                "registries": [b.host],
                "secret": "registry-b-pull",
                "source": source("registry-b-credentials"),
            },
            {
                "name": "rotate",
                "registries": [a.host],
                "repositories": ["rotate/*"],
                "secret": "rotate-pull",
                "source": source("rotate-credentials"),
            },
        ],
    }


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session", autouse=True)
def _node_prerequisites() -> None:
    """Skip (or fail, PSI_REQUIRE_E2E=1) before the control plane starts, not 30 s later."""
    require_node()


@pytest.fixture(scope="module")
def core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="module")
def apps(api_client: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(api_client)


@pytest.fixture(scope="module")
def node_system_namespace(core: Any, node_registries: tuple[Registry, Registry]) -> Iterator[str]:
    """The webhook's namespace with the three source Secrets (the registries' current passwords)."""
    a, b = node_registries
    core.create_namespace({"metadata": {"name": NODE_SYSTEM_NS}})
    try:
        for name, registry, user in (
            ("registry-a-credentials", a, "puller-a"),
            ("registry-b-credentials", b, "puller-b"),
            ("rotate-credentials", a, "rotator"),
        ):
            core.create_namespaced_secret(
                NODE_SYSTEM_NS, dockerconfig_secret(name, {registry.host: registry.auth_entry(user)})
            )
        yield NODE_SYSTEM_NS
    finally:
        _delete_namespace(core, NODE_SYSTEM_NS)


@pytest.fixture(scope="module")
def node_hook(
    control_plane: ControlPlane,
    api_client: Any,
    core: Any,
    node: Node,
    node_registries: tuple[Registry, Registry],
    node_system_namespace: str,
    images: Images,
    node_report: _NodeReport,
) -> Iterator[WebhookProcess]:
    """The webhook for this module's namespaces (labelled ``HOOK_LABEL=psi-e2e-node``)."""
    node_report.lines.append(
        f"node {node.name}: Ready {node.startup_seconds:.2f}s after start "
        f"(containerd + pause image {node.containerd_seconds:.2f}s, kubelet to Ready {node.ready_seconds:.2f}s); "
        f"registries up in {node_registries[0].startup_seconds:.2f}s / {node_registries[1].startup_seconds:.2f}s"
    )
    hook = WebhookProcess(
        control_plane=control_plane,
        name=NODE_HOOK,
        namespace=node_system_namespace,
        policy=node_policy(*node_registries),
        extra_args=("--resync-seconds", "30"),
    )
    hook.start()
    probe_ns = Namespaces(control_plane, core)
    try:
        probe = probe_ns.one("e2e-node-probe", hook=NODE_HOOK)
        hook.register(api_client, probe=dry_run_probe(core, probe, images.app.reference, "registry-a-pull"))
    except BaseException:
        hook.cleanup(keep=True)
        raise
    finally:
        probe_ns.close()
    try:
        yield hook
    finally:
        hook.cleanup(keep=KEEP)


@pytest.fixture
def namespaces(control_plane: ControlPlane, core: Any) -> Iterator[Namespaces]:
    factory = Namespaces(control_plane, core)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def live_hook(node_hook: WebhookProcess, node: Node) -> Iterator[WebhookProcess]:
    """The module's webhook; after the test: still running, no traceback logged, the node still up."""
    mark = node_hook.log_mark()
    yield node_hook
    assert node_hook.running, f"the webhook died:\n{node_hook.log_tail()}"
    tracebacks = [line for line in node_hook.logs(mark).splitlines() if "Traceback" in line]
    assert not tracebacks, f"the webhook logged a traceback:\n{node_hook.logs(mark)}"
    assert node.running, "containerd or the kubelet exited"


# --------------------------------------------------------------------------- Pods on the node


def node_pod_spec(node: Node, *images: str, init: str | None = None, restart_policy: str = "Never") -> dict[str, Any]:
    """A Pod spec for the node: bound to it (no scheduler), host network (no CNI), every image pulled."""
    spec: dict[str, Any] = {
        "nodeName": node.name,
        "hostNetwork": True,
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": 2,
        "enableServiceLinks": False,
        "containers": [
            {"name": f"c{i}", "image": image, "imagePullPolicy": "Always"} for i, image in enumerate(images)
        ],
    }
    if init is not None:
        spec["initContainers"] = [{"name": "init", "image": init, "imagePullPolicy": "Always"}]
    return spec


def node_pod(node: Node, name: str, *images: str, init: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": node_pod_spec(node, *images, init=init),
    }


def _describe(core: Any, node: Node, namespace: str, name: str) -> str:
    """The Pod's status, its Events and the kubelet's last lines: what a timeout message needs."""
    try:
        pod = core.read_namespaced_pod(name, namespace)
        status = json.dumps(core.api_client.sanitize_for_serialization(pod.status), indent=1)[:4000]
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        lines = "\n".join(f"  {e.reason}: {e.message}" for e in events)
    except Exception as err:  # diagnostics only: never hide the original failure
        return f"(could not read Pod {namespace}/{name}: {err})"
    return f"Pod {namespace}/{name} status:\n{status}\nEvents:\n{lines}\n--- kubelet:\n{tail(node.log('kubelet'), 15)}"


def wait_pod(
    core: Any, node: Node, namespace: str, name: str, check: Callable[[Any], bool], what: str, timeout: float
) -> tuple[Any, float]:
    """Poll the Pod until ``check(pod)``; (the Pod, seconds waited). On timeout, the Pod's story."""
    t0 = time.monotonic()

    def ready() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if check(pod) else None

    try:
        pod = wait_for(ready, f"Pod {namespace}/{name} {what}", timeout=timeout, interval=0.25)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{_describe(core, node, namespace, name)}") from None
    return pod, time.monotonic() - t0


def finished(pod: Any) -> bool:
    return pod.status.phase in ("Succeeded", "Failed")


def waiting_reasons(pod: Any) -> dict[str, str]:
    """container name -> waiting reason (init containers included)."""
    statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
    return {s.name: s.state.waiting.reason for s in statuses if s.state and s.state.waiting}


def in_pull_backoff(pod: Any) -> bool:
    return "ImagePullBackOff" in waiting_reasons(pod).values()


def termination_messages(pod: Any) -> dict[str, str]:
    statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
    return {s.name: s.state.terminated.message for s in statuses if s.state and s.state.terminated}


def pull_failure_messages(core: Any, namespace: str, name: str) -> list[str]:
    """The kubelet's "Failed" Events for the Pod (what the runtime said about the pull)."""
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [e.message for e in events if e.reason == "Failed"]


def secret_password(secret: Any, host: str) -> str:
    config = json.loads(base64.b64decode(secret.data[".dockerconfigjson"]))
    return str(config["auths"][host]["password"])


def assert_pulls_unauthorized(core: Any, namespace: str, name: str) -> None:
    messages = pull_failure_messages(core, namespace, name)
    assert any("401" in m or "unauthorized" in m.lower() for m in messages), (
        f"the pull should fail on authentication: {messages}"
    )


# --------------------------------------------------------------------------- scenarios


def test_first_pod_in_a_new_namespace_pulls_a_private_image_without_a_pull_secret(
    live_hook: WebhookProcess,
    core: Any,
    node: Node,
    images: Images,
    node_registries: tuple[Registry, Registry],
    namespaces: Namespaces,
    note: Note,
) -> None:
    a, _ = node_registries
    ns = namespaces.one("e2e-node-first", hook=NODE_HOOK)
    assert read_secret(core, ns, "registry-a-pull") is None
    mark = a.log_mark()

    t0 = time.monotonic()
    created = core.create_namespaced_pod(ns, node_pod(node, "first", images.app.reference))
    pod, seconds = wait_pod(core, node, ns, "first", finished, "finished", POD_TIMEOUT)

    assert pull_secrets(created) == ["registry-a-pull"]
    assert created.metadata.annotations[INJECTED] == "registry-a-pull"
    assert pod.status.phase == "Succeeded", _describe(core, node, ns, "first")
    assert termination_messages(pod) == {"c0": "ran:team-app"}, "the private image itself ran"
    (status,) = pod.status.container_statuses
    assert status.image_id.endswith(images.app.digest), "the kubelet ran the digest that was pushed"
    copy = read_secret(core, ns, "registry-a-pull")
    assert copy.type == DOCKERCONFIGJSON
    assert secret_password(copy, a.host) == a.current_users["puller-a"]
    assert a.manifest_requests("team/app", since=mark) >= 1, "the registry served the manifest (authenticated)"
    note("first-pod", f"created -> Succeeded in {time.monotonic() - t0:.2f}s (wait {seconds:.2f}s)")


def test_without_the_webhook_the_same_pod_really_ends_in_image_pull_backoff(
    node_hook: WebhookProcess, core: Any, node: Node, images: Images, namespaces: Namespaces, note: Note
) -> None:
    ns = namespaces.one("e2e-node-nohook", hook=NO_HOOK)  # no configuration selects it

    created = core.create_namespaced_pod(ns, node_pod(node, "bare", images.app.reference))
    pod, seconds = wait_pod(core, node, ns, "bare", in_pull_backoff, "in ImagePullBackOff", BACKOFF_TIMEOUT)

    assert pull_secrets(created) == []
    assert pod.status.phase == "Pending"
    assert_pulls_unauthorized(core, ns, "bare")
    assert read_secret(core, ns, "registry-a-pull") is None
    note("no-webhook", f"ImagePullBackOff {seconds:.2f}s after create")


def test_an_excluded_namespace_gets_no_secret_and_really_ends_in_image_pull_backoff(
    live_hook: WebhookProcess, core: Any, node: Node, images: Images, namespaces: Namespaces, note: Note
) -> None:
    ns = namespaces.one(EXCLUDED_PREFIX, hook=NODE_HOOK)  # the webhook is called; the policy says no

    created = core.create_namespaced_pod(ns, node_pod(node, "excluded", images.app.reference))
    pod, seconds = wait_pod(core, node, ns, "excluded", in_pull_backoff, "in ImagePullBackOff", BACKOFF_TIMEOUT)

    assert pull_secrets(created) == []
    assert INJECTED not in (created.metadata.annotations or {})
    assert pod.status.phase == "Pending"
    assert_pulls_unauthorized(core, ns, "excluded")
    assert core.list_namespaced_secret(ns, label_selector="app.kubernetes.io/managed-by").items == []
    note("excluded-namespace", f"ImagePullBackOff {seconds:.2f}s after create, no managed Secret")


def test_init_and_main_containers_from_two_registries_with_different_users(
    live_hook: WebhookProcess,
    core: Any,
    node: Node,
    images: Images,
    node_registries: tuple[Registry, Registry],
    namespaces: Namespaces,
    note: Note,
) -> None:
    a, b = node_registries
    ns = namespaces.one("e2e-node-two", hook=NODE_HOOK)
    marks = (a.log_mark(), b.log_mark())

    created = core.create_namespaced_pod(ns, node_pod(node, "two", images.app.reference, init=images.init.reference))
    pod, seconds = wait_pod(core, node, ns, "two", finished, "finished", POD_TIMEOUT)

    assert sorted(pull_secrets(created)) == ["registry-a-pull", "registry-b-pull"]
    assert pod.status.phase == "Succeeded", _describe(core, node, ns, "two")
    assert termination_messages(pod) == {"init": "ran:init", "c0": "ran:team-app"}
    assert secret_password(read_secret(core, ns, "registry-a-pull"), a.host) == a.current_users["puller-a"]
    copy_b = read_secret(core, ns, "registry-b-pull")
    assert list(json.loads(base64.b64decode(copy_b.data[".dockerconfigjson"]))["auths"]) == [b.host]
    assert secret_password(copy_b, b.host) == b.current_users["puller-b"]
    assert a.manifest_requests("team/app", since=marks[0]) >= 1
    assert b.manifest_requests("tools/init", since=marks[1]) >= 1
    note("two-registries", f"init (registry b) + main (registry a) Succeeded {seconds:.2f}s after create")


def test_a_deployments_pods_run(
    live_hook: WebhookProcess, core: Any, apps: Any, node: Node, images: Images, namespaces: Namespaces, note: Note
) -> None:
    ns = namespaces.one("e2e-node-deploy", hook=NODE_HOOK)
    labels = {"app": "web"}
    t0 = time.monotonic()
    apps.create_namespaced_deployment(
        ns,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": node_pod_spec(node, images.web.reference, restart_policy="Always"),
                },
            },
        },
    )

    def available() -> Any:
        deployment = apps.read_namespaced_deployment("web", ns)
        return deployment if (deployment.status.available_replicas or 0) == 2 else None

    try:
        wait_for(available, "the Deployment's 2 replicas available", timeout=POD_TIMEOUT, interval=0.25)
    except AssertionError as err:
        names = [p.metadata.name for p in core.list_namespaced_pod(ns).items]
        stories = "\n".join(_describe(core, node, ns, name) for name in names[:2])
        raise AssertionError(f"{err}\n{stories}") from None
    seconds = time.monotonic() - t0

    pods = core.list_namespaced_pod(ns, label_selector="app=web").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.metadata.owner_references[0].kind == "ReplicaSet"
        assert pull_secrets(pod) == ["registry-a-pull"]
        assert pod.status.phase == "Running"
        (status,) = pod.status.container_statuses
        assert status.ready
        assert status.image_id.endswith(images.web.digest)
    note("deployment", f"2 replicas Running and available {seconds:.2f}s after the Deployment was created")


def test_a_rotated_registry_password_reaches_new_pods_within_10s(
    live_hook: WebhookProcess,
    core: Any,
    node: Node,
    images: Images,
    node_registries: tuple[Registry, Registry],
    node_system_namespace: str,
    namespaces: Namespaces,
    note: Note,
) -> None:
    a, _ = node_registries
    ns = namespaces.one("e2e-node-rotate", hook=NODE_HOOK)
    core.create_namespaced_pod(ns, node_pod(node, "before", images.rotate.reference))
    pod, _ = wait_pod(core, node, ns, "before", finished, "finished", POD_TIMEOUT)
    assert pod.status.phase == "Succeeded", _describe(core, node, ns, "before")
    old_password = a.current_users["rotator"]
    assert secret_password(read_secret(core, ns, "rotate-pull"), a.host) == old_password

    # The registry's password changes (the old one is refused from now on), then the source follows.
    new_password = f"rot-pass-{int(time.time())}"
    a.set_password("rotator", new_password)
    assert not a.login_ok("rotator", old_password)
    t0 = time.monotonic()
    core.replace_namespaced_secret(
        "rotate-credentials",
        node_system_namespace,
        dockerconfig_secret("rotate-credentials", {a.host: a.auth_entry("rotator")}),
    )
    # Created at once, maybe before the copy changes: if it loses that race its first pull fails,
    # and the kubelet's retry (after its 10 s back-off) must read the rotated copy.
    core.create_namespaced_pod(ns, node_pod(node, "racing", images.rotate.reference))

    def copy_rotated() -> bool:
        copy = read_secret(core, ns, "rotate-pull")
        return copy is not None and secret_password(copy, a.host) == new_password

    wait_for(copy_rotated, "the copy to carry the new password", timeout=ROTATION_BUDGET_SECONDS, interval=0.05)
    copy_seconds = time.monotonic() - t0
    mark = a.log_mark()
    core.create_namespaced_pod(ns, node_pod(node, "after", images.rotate.reference))
    pod, pod_seconds = wait_pod(core, node, ns, "after", finished, "finished", POD_TIMEOUT)
    total = time.monotonic() - t0

    assert pod.status.phase == "Succeeded", _describe(core, node, ns, "after")
    assert termination_messages(pod) == {"c0": "ran:rotate"}
    assert a.manifest_requests("rotate/app", since=mark) >= 1
    assert pull_failure_messages(core, ns, "after") == [], "the new Pod pulled at the first attempt"
    assert total <= ROTATION_BUDGET_SECONDS, f"source update -> new Pod pulled and ran took {total:.2f}s"
    racing, _ = wait_pod(core, node, ns, "racing", finished, "finished", POD_TIMEOUT)
    racing_seconds = time.monotonic() - t0
    assert racing.status.phase == "Succeeded", _describe(core, node, ns, "racing")
    racing_failures = len(pull_failure_messages(core, ns, "racing"))
    note(
        "rotation",
        f"source updated -> copy in the namespace {copy_seconds:.2f}s; a new Pod created then pulled with the new "
        f"password and Succeeded {pod_seconds:.2f}s later ({total:.2f}s from the source update, budget "
        f"{ROTATION_BUDGET_SECONDS:g}s); a Pod created together with the source update Succeeded after "
        f"{racing_seconds:.2f}s ({racing_failures} failed pull Events before)",
    )


def test_stopping_a_node_leaves_no_process_mount_or_cgroup_behind(
    control_plane: ControlPlane,
    core: Any,
    node_images: BusyboxImages,
    node_registries: tuple[Registry, Registry],
    images: Images,
    namespaces: Namespaces,
    note: Note,
) -> None:
    """A second node of its own, stopped while its Pod runs: what ``Node.stop()`` promises, checked."""
    from kubernetes.client.exceptions import ApiException

    a, _ = node_registries
    ns = namespaces.one("e2e-node-teardown", hook=NO_HOOK)  # an explicit pull secret; no webhook needed
    core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "pull"},
            "type": DOCKERCONFIGJSON,
            "data": {".dockerconfigjson": base64.b64encode(a.dockerconfigjson("puller-a")).decode()},
        },
    )
    extra = Node(control_plane, node_images, name=f"psi-node-teardown-{uuid.uuid4().hex[:6]}")
    extra.start(node_registries)
    workdir = extra.dir
    try:
        spec = node_pod_spec(extra, images.web.reference, restart_policy="Always")
        spec["imagePullSecrets"] = [{"name": "pull"}]
        core.create_namespaced_pod(ns, {"metadata": {"name": "running"}, "spec": spec})
        wait_pod(core, extra, ns, "running", lambda p: p.status.phase == "Running", "Running", POD_TIMEOUT)
        pids = extra.process_ids()
        container_ids = [info["ID"] for info in extra.containers()]
        mounted = extra.mounts()
    finally:
        t0 = time.monotonic()
        extra.stop()
        stop_seconds = time.monotonic() - t0
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod("running", ns, grace_period_seconds=0)

    assert {"containerd", "kubelet"} <= set(pids)
    assert sum(key.startswith("shim:") for key in pids) == 1, f"one shim per Pod: {pids}"
    assert sum(key.startswith("init:") for key in pids) == 2, f"a sandbox and a container: {pids}"
    assert len(container_ids) == 2
    assert mounted, "a running Pod has its rootfs, shm and token volume mounted"
    alive = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    assert alive == {}, f"still running after stop(): {alive}"
    assert not workdir.exists(), "the node's temp dir is removed"
    assert not any(point.startswith(str(workdir)) for point in _all_mount_points())
    leftover_cgroups = [
        str(h / K8S_NAMESPACE / cid)
        for h in CGROUP_ROOT.iterdir()
        for cid in container_ids
        if (h / K8S_NAMESPACE / cid).exists()
    ]
    assert leftover_cgroups == []
    status, _ = control_plane.get(f"/api/v1/nodes/{extra.name}")
    assert status == 404, "the Node object is deleted"
    note(
        "node-teardown",
        f"node with a running Pod stopped in {stop_seconds:.2f}s; {len(pids)} processes, {len(mounted)} mounts gone",
    )


def _all_mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]
