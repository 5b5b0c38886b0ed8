"""Mirrors on the real node: a Pod naming ``docker.io/rancher/...`` pulls from the loopback mirror and runs.

Issue 14's node acceptance point. Registry ``a`` of ``node_registries`` (CNCF Distribution,
htpasswd + TLS, trusted by the ``node`` fixture's containerd) is the only place holding
``mirrorproject/rancher-images/pause:3.6`` (a busybox image built with umoci that exits 0);
there is no internet, so ``docker.io`` itself cannot serve it. Our webhook (a real ``serve``
process) has a k3s-shaped mirror (``docker.io`` -> registry ``a``, rewrite
``^rancher/(.*)`` -> ``mirrorproject/rancher-images/$1``) and a rule giving registry ``a``'s
pull secret (``puller-a``). A Pod naming the tag, and one naming the pushed digest, must be
rewritten, get the secret, be pulled by the kubelet from the mirror (``imagePullPolicy:
Always``) and reach Succeeded; the originals are kept in the annotation.

No scheduler, no Pod network: Pods set ``nodeName`` and ``hostNetwork: true`` (see test_node_e2e).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.builders import pull_secrets
from tests.registries import BusyboxImages, PushedImage, Registry
from webhook.admission.patch import INJECTED_ANNOTATION
from webhook.policy.mirrors import ORIGINAL_IMAGES_ANNOTATION

from .cluster import Namespaces, copy_auths, dockerconfig_secret, read_secret, source_namespace
from .conftest import require_node
from .controlplane import ControlPlane
from .node import Node
from .pods import finishing, run_pod
from .webhook import WebhookProcess, registered_webhook

HOOK = "psi-e2e-mirrors-node"
SYSTEM_NS = "psi-e2e-mirrors-node-system"
REWRITTEN = "mirrorproject/rancher-images/pause"
ORIGINAL = "docker.io/rancher/pause"
SECRET = "mirror-a-pull"


@pytest.fixture(scope="session", autouse=True)
def _node_prerequisites() -> None:
    """Skip (or fail, PSI_REQUIRE_E2E=1) before the control plane starts."""
    require_node()


@pytest.fixture(scope="module")
def pause(node_images: BusyboxImages, node_registries: tuple[Registry, Registry]) -> PushedImage:
    """The image only registry ``a`` holds, under the mirror's rewritten name."""
    a, _ = node_registries
    t0 = time.monotonic()
    image = node_images.image("rancher-pause", entrypoint=finishing("ran:mirror-pause"))
    pushed = a.push(image, REWRITTEN, "3.6")
    print(
        f"\nmirror image: built and pushed to {a.host}/{REWRITTEN}:3.6 ({pushed.digest}) "
        f"in {time.monotonic() - t0:.2f}s"
    )
    return pushed


def mirror_policy(a: Registry) -> dict[str, Any]:
    return {
        "mirrors": {
            "docker.io": {
                "endpoint": [a.host],
                "rewrite": {"^rancher/(.*)": "mirrorproject/rancher-images/$1"},
            }
        },
        "rules": [
            {
                "name": "mirror-a",
                "registries": [a.host],
                "secret": SECRET,
                "source": {"secret": {"namespace": SYSTEM_NS, "name": "mirror-a-credentials"}},
            }
        ],
    }


@pytest.fixture(scope="module")
def mirror_hook(
    control_plane: ControlPlane,
    api_client: Any,
    core: Any,
    node: Node,
    node_registries: tuple[Registry, Registry],
    pause: PushedImage,
) -> Iterator[WebhookProcess]:
    """The webhook with the mirror policy, registered for namespaces labelled with ``HOOK``."""
    a, _ = node_registries
    print(f"node {node.name}: Ready {node.startup_seconds:.2f}s after start")
    wanted = f"{a.host}/{REWRITTEN}:3.6"

    def rewritten(namespace: str) -> bool:
        body = {"metadata": {"name": "probe"}, "spec": {"containers": [{"name": "c", "image": f"{ORIGINAL}:3.6"}]}}
        pod = core.create_namespaced_pod(namespace, body, dry_run="All")
        return bool(pod.spec.containers[0].image == wanted and SECRET in pull_secrets(pod))

    sources = [dockerconfig_secret("mirror-a-credentials", {a.host: a.auth_entry("puller-a")})]
    with (
        source_namespace(core, SYSTEM_NS, sources),
        registered_webhook(
            control_plane, api_client, name=HOOK, namespace=SYSTEM_NS, policy=mirror_policy(a), probe=rewritten
        ) as hook,
    ):
        print(f"webhook: ready {hook.startup_seconds:.2f}s, registered {hook.registration_seconds:.2f}s")
        yield hook
        logs = hook.logs()
        assert "Traceback" not in logs, logs
        assert a.current_users["puller-a"] not in logs, "the password never reaches the log"


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_a_pod_naming_docker_io_rancher_pulls_from_the_mirror_and_runs(
    by: str,
    mirror_hook: WebhookProcess,
    core: Any,
    node: Node,
    node_registries: tuple[Registry, Registry],
    pause: PushedImage,
    namespaces: Namespaces,
) -> None:
    a, _ = node_registries
    suffix = ":3.6" if by == "tag" else f"@{pause.digest}"
    original = f"{ORIGINAL}{suffix}"
    ns = namespaces.one(f"e2e-mirror-node-{by}", hook=HOOK)
    assert read_secret(core, ns, SECRET) is None
    mark = a.log_mark()

    ran = run_pod(core, node, ns, "pause", original, messages={"c0": "ran:mirror-pause"})
    created = ran.created

    assert created.spec.containers[0].image == f"{a.host}/{REWRITTEN}{suffix}", "rewritten, digest kept byte for byte"
    assert pull_secrets(created) == [SECRET]
    annotations = created.metadata.annotations
    assert json.loads(annotations[ORIGINAL_IMAGES_ANNOTATION]) == {"containers/c0": original}
    assert annotations[INJECTED_ANNOTATION] == SECRET
    (status,) = ran.pod.status.container_statuses
    assert status.image_id.endswith(pause.digest), "the kubelet ran the digest pushed to the mirror"
    assert a.manifest_requests(REWRITTEN, since=mark) >= 1, "the mirror served the manifest (authenticated)"
    copy = read_secret(core, ns, SECRET)
    assert copy is not None
    assert list(copy_auths(copy)) == [a.host]
    print(
        f"\nmirror-node-{by}: {original} -> {created.spec.containers[0].image}: "
        f"created -> Succeeded in {ran.seconds:.2f}s (wait {ran.waited:.2f}s)"
    )
