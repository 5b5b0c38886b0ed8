"""Acceptance (issue 12, item 3) on a real node: fail-open recovery brings a Deployment's Pod to Running.

The webhook is registered with ``failurePolicy: Ignore`` and then stopped: the API server
admits Pods unmodified (fail-open). A Deployment's Pod and a bare Pod, both naming a private
image on a real registry (tests/registries.py) and no pull secret, really end in
ImagePullBackOff on the real kubelet (tests/e2e/node.py). The webhook comes back with
``--recover-fail-open``: after the grace period it deletes the Deployment's Pod (an Event on
the Pod says why), the ReplicaSet makes a new one, which goes through the webhook, gets its
reference and its Secret, pulls and runs. The bare Pod is only reported (an Event), and left.

Reproduce: ``.venv/bin/pytest tests/e2e/test_recovery_node_e2e.py -s``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.builders import pull_secrets, wait_for
from tests.registries import BusyboxImages, Registry

from .cluster import Namespaces, dockerconfig_secret, dry_run_probe, source_namespace
from .conftest import require_node
from .controlplane import ControlPlane
from .node import Node
from .pods import in_pull_backoff, node_deployment, node_pod, wait_pod, waiting_reasons
from .webhook import WebhookProcess

HOOK = "psi-e2e-recovery"
SYSTEM_NS = "psi-e2e-recovery-system"
SECRET = "recovery-pull"
GRACE_SECONDS = 5.0
POD_TIMEOUT = 120.0


@pytest.fixture(scope="module", autouse=True)
def _node_prerequisites() -> None:
    require_node()


def _web_image(images: BusyboxImages, registry: Registry) -> str:
    image = images.image(
        "recovery-web", entrypoint=["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    )
    return registry.push(image, "recovery/web", "1.0").reference


def _events(core: Any, namespace: str, reason: str) -> list[Any]:
    return [e for e in core.list_namespaced_event(namespace).items if e.reason == reason]


@pytest.fixture(scope="module")
def system_namespace(core: Any, node_registries: tuple[Registry, Registry]) -> Iterator[str]:
    a, _ = node_registries
    sources = [dockerconfig_secret("recovery-credentials", {a.host: a.auth_entry("puller-a")})]
    with source_namespace(core, SYSTEM_NS, sources) as name:
        yield name


def test_a_deployment_pod_admitted_while_the_webhook_was_down_ends_running(
    control_plane: ControlPlane,
    api_client: Any,
    core: Any,
    apps: Any,
    node: Node,
    node_images: BusyboxImages,
    node_registries: tuple[Registry, Registry],
    system_namespace: str,
    namespaces: Namespaces,
) -> None:
    a, _ = node_registries
    image = _web_image(node_images, a)
    policy = {
        "excludeNamespaces": ["kube-system", "kube-public", "kube-node-lease"],
        "rules": [
            {
                "name": "recovery",
                "registries": [a.host],
                "repositories": ["recovery/*"],
                "secret": SECRET,
                "source": {"secret": {"namespace": SYSTEM_NS, "name": "recovery-credentials"}},
            }
        ],
    }
    hook = WebhookProcess(
        control_plane=control_plane,
        name=HOOK,
        namespace=system_namespace,
        policy=policy,
        extra_args=(
            "--recover-fail-open",
            f"--recovery-grace-seconds={GRACE_SECONDS:g}",
            "--recovery-interval=1",
        ),
    )
    try:
        hook.start()
        ns = namespaces.one("e2e-recovery", hook=HOOK)
        hook.register(api_client, probe=dry_run_probe(core, ns, image, SECRET))  # failurePolicy Ignore
        # The webhook goes down; its configuration stays: the API server fails open.
        hook.stop()
        apps.create_namespaced_deployment(ns, node_deployment(node, "web", image, replicas=1))
        core.create_namespaced_pod(ns, node_pod(node, "bare", image, restart_policy="Always"))

        def first_pod() -> Any:
            pods = core.list_namespaced_pod(ns, label_selector="app=web").items
            return pods[0] if pods else None

        stuck = wait_for(first_pod, "the ReplicaSet's Pod", timeout=60)
        assert pull_secrets(stuck) == [], "admitted while the webhook was down: no reference"
        wait_pod(core, node, ns, stuck.metadata.name, in_pull_backoff, "in ImagePullBackOff", POD_TIMEOUT)
        wait_pod(core, node, ns, "bare", in_pull_backoff, "in ImagePullBackOff", POD_TIMEOUT)

        # The webhook is back (a new process, registered again: its certificate is new).
        back = time.monotonic()
        hook.start()
        hook.register(api_client, probe=dry_run_probe(core, ns, image, SECRET))

        def replaced_and_running() -> Any:
            for pod in core.list_namespaced_pod(ns, label_selector="app=web").items:
                if pod.metadata.uid != stuck.metadata.uid and pod.status.phase == "Running":
                    return pod
            return None

        try:
            running = wait_for(replaced_and_running, "a new Running Pod of the Deployment", timeout=POD_TIMEOUT)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- webhook log:\n{hook.log_tail()}") from None
        seconds = time.monotonic() - back
        assert pull_secrets(running) == [SECRET]
        assert core.read_namespaced_secret(SECRET, ns).type == "kubernetes.io/dockerconfigjson"
        deleted = wait_for(lambda: _events(core, ns, "FailOpenPodDeleted"), "the Event on the deleted Pod")
        assert deleted[0].involved_object.name == stuck.metadata.name
        assert SECRET in deleted[0].message
        assert "ReplicaSet" in deleted[0].message
        # The bare Pod: reported, not deleted.
        reported = wait_for(lambda: _events(core, ns, "FailOpenPodNotRecovered"), "the Event on the bare Pod")
        assert reported[0].involved_object.name == "bare"
        bare = core.read_namespaced_pod("bare", ns)
        assert bare.metadata.deletion_timestamp is None
        # Still failing to pull (the kubelet alternates ErrImagePull and ImagePullBackOff).
        assert set(waiting_reasons(bare).values()) <= {"ErrImagePull", "ImagePullBackOff"}
        assert waiting_reasons(bare)
        assert "a-pass" not in hook.logs(), "no credential in the log"
        print(
            f"\nrecovery node e2e: the Deployment's fail-open Pod replaced and Running {seconds:.2f}s after the "
            f"webhook came back (grace {GRACE_SECONDS:g}s, interval 1s); the bare Pod reported, left in place"
        )
    finally:
        hook.cleanup()
