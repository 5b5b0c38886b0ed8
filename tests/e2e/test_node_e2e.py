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

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.builders import pull_secrets, wait_for
from tests.registries import BusyboxImages, PushedImage, Registry
from webhook.admission.patch import INJECTED_ANNOTATION as INJECTED

from .cluster import (
    DOCKERCONFIGJSON,
    Namespaces,
    copy_auths,
    dockerconfig_secret,
    injects,
    read_secret,
    secret_password,
    source_namespace,
)
from .conftest import require_node
from .controlplane import ControlPlane
from .node import CGROUP_ROOT, K8S_NAMESPACE, Node, pid_alive
from .pods import (
    BACKOFF_TIMEOUT,
    POD_TIMEOUT,
    assert_pulls_unauthorized,
    describe,
    finishing,
    in_pull_backoff,
    node_deployment,
    node_pod,
    node_pod_spec,
    pull_failure_messages,
    run_pod,
    succeeded,
    wait_pod,
)
from .report import Measurements, Note
from .webhook import WebhookProcess, registered_webhook

NODE_HOOK = "psi-e2e-node"
NODE_SYSTEM_NS = "psi-e2e-node-system"
#: No webhook configuration selects namespaces labelled with this hook name.
NO_HOOK = "none"
EXCLUDED_PREFIX = "e2e-node-excluded"
ROTATION_BUDGET_SECONDS = 10.0


# --------------------------------------------------------------------------- reporting


@pytest.fixture(scope="module")
def measurements(request: pytest.FixtureRequest) -> Measurements:
    """Listed at the end of the run; ``note`` (conftest.py) adds to them."""
    return Measurements.register(request, "pullsecret-injector node e2e measurements", "psi-e2e-node-measurements")


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


@pytest.fixture(scope="module")
def images(
    node_images: BusyboxImages, node_registries: tuple[Registry, Registry], measurements: Measurements
) -> Images:
    a, b = node_registries
    t0 = time.monotonic()
    built = Images(
        app=a.push(node_images.image("app", entrypoint=finishing("ran:team-app")), "team/app", "1.0"),
        web=a.push(
            node_images.image("web", entrypoint=["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]),
            "team/web",
            "1.0",
        ),
        rotate=a.push(node_images.image("rotate", entrypoint=finishing("ran:rotate")), "rotate/app", "1.0"),
        init=b.push(node_images.image("init", entrypoint=finishing("ran:init")), "tools/init", "1.0"),
    )
    measurements.lines.append(f"images: 4 built with umoci and pushed with skopeo in {time.monotonic() - t0:.2f}s")
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
def node_system_namespace(core: Any, node_registries: tuple[Registry, Registry]) -> Iterator[str]:
    """The webhook's namespace with the three source Secrets (the registries' current passwords)."""
    a, b = node_registries
    sources = [
        dockerconfig_secret(name, {registry.host: registry.auth_entry(user)})
        for name, registry, user in (
            ("registry-a-credentials", a, "puller-a"),
            ("registry-b-credentials", b, "puller-b"),
            ("rotate-credentials", a, "rotator"),
        )
    ]
    with source_namespace(core, NODE_SYSTEM_NS, sources) as name:
        yield name


@pytest.fixture(scope="module")
def node_hook(
    control_plane: ControlPlane,
    api_client: Any,
    core: Any,
    node: Node,
    node_registries: tuple[Registry, Registry],
    node_system_namespace: str,
    images: Images,
    measurements: Measurements,
) -> Iterator[WebhookProcess]:
    """The webhook for this module's namespaces (labelled ``HOOK_LABEL=psi-e2e-node``)."""
    measurements.lines.append(
        f"node {node.name}: Ready {node.startup_seconds:.2f}s after start "
        f"(containerd + pause image {node.containerd_seconds:.2f}s, kubelet to Ready {node.ready_seconds:.2f}s); "
        f"registries up in {node_registries[0].startup_seconds:.2f}s / {node_registries[1].startup_seconds:.2f}s"
    )
    with registered_webhook(
        control_plane,
        api_client,
        name=NODE_HOOK,
        namespace=node_system_namespace,
        policy=node_policy(*node_registries),
        probe=injects(core, images.app.reference, "registry-a-pull"),
        extra_args=("--resync-seconds", "30"),
    ) as hook:
        yield hook


@pytest.fixture
def live_hook(node_hook: WebhookProcess, node: Node) -> Iterator[WebhookProcess]:
    """The module's webhook; after the test: still running, no traceback logged, the node still up."""
    mark = node_hook.log_mark()
    yield node_hook
    node_hook.assert_healthy(since=mark)
    assert node.running, "containerd or the kubelet exited"


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

    ran = run_pod(core, node, ns, "first", images.app.reference, messages={"c0": "ran:team-app"})

    assert pull_secrets(ran.created) == ["registry-a-pull"]
    assert ran.created.metadata.annotations[INJECTED] == "registry-a-pull"
    (status,) = ran.pod.status.container_statuses
    assert status.image_id.endswith(images.app.digest), "the kubelet ran the digest that was pushed"
    copy = read_secret(core, ns, "registry-a-pull")
    assert copy.type == DOCKERCONFIGJSON
    assert secret_password(copy, a.host) == a.current_users["puller-a"]
    assert a.manifest_requests("team/app", since=mark) >= 1, "the registry served the manifest (authenticated)"
    note("first-pod", f"created -> Succeeded in {ran.seconds:.2f}s (wait {ran.waited:.2f}s)")


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

    messages = {"init": "ran:init", "c0": "ran:team-app"}
    ran = run_pod(core, node, ns, "two", images.app.reference, init=images.init.reference, messages=messages)

    assert sorted(pull_secrets(ran.created)) == ["registry-a-pull", "registry-b-pull"]
    assert secret_password(read_secret(core, ns, "registry-a-pull"), a.host) == a.current_users["puller-a"]
    copy_b = read_secret(core, ns, "registry-b-pull")
    assert list(copy_auths(copy_b)) == [b.host]
    assert secret_password(copy_b, b.host) == b.current_users["puller-b"]
    assert a.manifest_requests("team/app", since=marks[0]) >= 1
    assert b.manifest_requests("tools/init", since=marks[1]) >= 1
    note("two-registries", f"init (registry b) + main (registry a) Succeeded {ran.waited:.2f}s after create")


def test_a_deployments_pods_run(
    live_hook: WebhookProcess, core: Any, apps: Any, node: Node, images: Images, namespaces: Namespaces, note: Note
) -> None:
    ns = namespaces.one("e2e-node-deploy", hook=NODE_HOOK)
    t0 = time.monotonic()
    apps.create_namespaced_deployment(ns, node_deployment(node, "web", images.web.reference, replicas=2))

    def available() -> Any:
        deployment = apps.read_namespaced_deployment("web", ns)
        return deployment if (deployment.status.available_replicas or 0) == 2 else None

    try:
        wait_for(available, "the Deployment's 2 replicas available", timeout=POD_TIMEOUT, interval=0.25)
    except AssertionError as err:
        names = [p.metadata.name for p in core.list_namespaced_pod(ns).items]
        stories = "\n".join(describe(core, node, ns, name) for name in names[:2])
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
    run_pod(core, node, ns, "before", images.rotate.reference)
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
    after = run_pod(core, node, ns, "after", images.rotate.reference, messages={"c0": "ran:rotate"})
    total = time.monotonic() - t0

    assert a.manifest_requests("rotate/app", since=mark) >= 1
    assert pull_failure_messages(core, ns, "after") == [], "the new Pod pulled at the first attempt"
    assert total <= ROTATION_BUDGET_SECONDS, f"source update -> new Pod pulled and ran took {total:.2f}s"
    succeeded(core, node, ns, "racing")
    racing_seconds = time.monotonic() - t0
    racing_failures = len(pull_failure_messages(core, ns, "racing"))
    note(
        "rotation",
        f"source updated -> copy in the namespace {copy_seconds:.2f}s; a new Pod created then pulled with the new "
        f"password and Succeeded {after.waited:.2f}s later ({total:.2f}s from the source update, budget "
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
    core.create_namespaced_secret(ns, a.dockerconfig_secret("pull", user="puller-a"))
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
