"""Mirrors on the real API server: a Deployment naming docker.io/rancher/... comes out on the mirror.

A loopback CNCF Distribution registry (TLS, htpasswd) holds
``mirrorproject/rancher-images/pause:3.6`` (busybox built with umoci, pushed with skopeo);
the webhook runs as a process with a k3s-shaped mirror (``docker.io`` -> the registry,
``rewrite: {"^rancher/(.*)": "mirrorproject/rancher-images/$1"}``, ``check: true``) and a rule
giving the registry's pull secret. It is registered twice (two configurations, same process),
so the API server hands it its own output within one create: the reinvocation case, live.
The controller-manager turns the Deployment into a Pod; no kubelet is needed to see the Pod
the API server stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.builders import pod_body, wait_for
from tests.registries import INSTALL_HINT, BusyboxImages, Registry, missing_tools
from webhook.admission.patch import INJECTED_ANNOTATION
from webhook.policy.mirrors import ORIGINAL_IMAGES_ANNOTATION

from .cluster import Namespaces, copy_auths, source_namespace
from .controlplane import ControlPlane
from .webhook import WebhookProcess, registered_webhook

SYSTEM_NS = "psi-mirrors-system"
HOOK = "psi-e2e-mirrors"
AGAIN = "psi-e2e-mirrors-again"
REWRITTEN = "mirrorproject/rancher-images/pause"
PASSWORD = "mirror-e2e-password"


@dataclass
class Mirror:
    registry: Registry
    digest: str
    hook: WebhookProcess

    @property
    def host(self) -> str:
        return self.registry.host


def mirror_pod(*images: str) -> dict[str, Any]:
    return pod_body(*images, name=None, generate_name="mirror-e2e-")


@pytest.fixture(scope="module")
def mirror(
    control_plane: ControlPlane, api_client: Any, core: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mirror]:
    if missing_tools():
        pytest.fail(f"missing {', '.join(missing_tools())}: {INSTALL_HINT}", pytrace=False)
    root = tmp_path_factory.mktemp("mirror-e2e")
    with Registry(users={"robot": PASSWORD}, name="mirror-e2e", workdir=root / "registry") as registry:
        image = BusyboxImages(root / "oci").image("pause", labels={"psi.image": "pause 3.6"})
        digest = registry.push(image, REWRITTEN, "3.6").digest
        policy = {
            "mirrors": {
                "docker.io": {
                    "endpoint": [registry.host],
                    "rewrite": {"^rancher/(.*)": "mirrorproject/rancher-images/$1"},
                    "check": True,
                },
                # Air-gapped style: what the mirror lacks is refused at admission, not left to ImagePullBackOff.
                "quay.io": {"endpoint": [f"{registry.host}/quay"], "check": True, "fallback": "deny"},
            },
            "rules": [
                {
                    "name": "mirror",
                    "registries": [registry.host],
                    "secret": "mirror-pull",
                    "source": {"secret": {"namespace": SYSTEM_NS, "name": "mirror-creds"}},
                }
            ],
        }
        wanted = f"{registry.host}/{REWRITTEN}:3.6"

        def rewritten(namespace: str) -> bool:
            pod = core.create_namespaced_pod(namespace, mirror_pod("rancher/pause:3.6"), dry_run="All")
            return bool(pod.spec.containers[0].image == wanted)

        with (
            source_namespace(core, SYSTEM_NS, [registry.dockerconfig_secret("mirror-creds")]),
            registered_webhook(
                control_plane,
                api_client,
                name=HOOK,
                namespace=SYSTEM_NS,
                policy=policy,
                probe=rewritten,
                extra_args=("--mirror-ca-file", str(registry.ca_path)),
            ) as hook,
            # The same process once more, so every create hands it its own output (reinvocation).
            hook.configuration(api_client, AGAIN, selects=HOOK),
        ):
            time.sleep(1.0)  # the second configuration reaches the apiserver asynchronously
            yield Mirror(registry=registry, digest=digest, hook=hook)


@pytest.fixture
def namespace_for_mirror(mirror: Mirror, namespaces: Namespaces) -> Iterator[str]:
    name = namespaces.one("mirror-e2e", hook=HOOK)
    mark = mirror.hook.log_mark()
    yield name
    logs = mirror.hook.logs(mark)
    assert "Traceback" not in logs, logs
    assert PASSWORD not in logs


def test_a_deployment_comes_out_on_the_mirror_with_its_pull_secret(
    core: Any, apps: Any, mirror: Mirror, namespace_for_mirror: str
) -> None:
    namespace = namespace_for_mirror
    images = ["docker.io/rancher/pause:3.6", f"rancher/pause@{mirror.digest}"]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "pause"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "pause"}},
            "template": {
                "metadata": {"labels": {"app": "pause"}},
                "spec": {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]},
            },
        },
    }
    apps.create_namespaced_deployment(namespace, deployment)

    def the_pod() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="app=pause").items
        return pods[0] if pods else None

    pod = wait_for(the_pod, "the Deployment's Pod", timeout=60)
    assert [c.image for c in pod.spec.containers] == [
        f"{mirror.host}/{REWRITTEN}:3.6",
        f"{mirror.host}/{REWRITTEN}@{mirror.digest}",
    ]
    assert [ref.name for ref in pod.spec.image_pull_secrets] == ["mirror-pull"], "once, though called twice"
    annotations = pod.metadata.annotations
    assert json.loads(annotations[ORIGINAL_IMAGES_ANNOTATION]) == {
        "containers/c0": images[0],
        "containers/c1": images[1],
    }
    assert annotations[INJECTED_ANNOTATION] == "mirror-pull"
    # The mirror's pull secret is there, filtered to the mirror's credentials.
    secret = core.read_namespaced_secret("mirror-pull", namespace)
    assert list(copy_auths(secret)) == [mirror.host]
    # Workload templates are never rewritten (no GitOps drift).
    template = apps.read_namespaced_deployment("pause", namespace).spec.template.spec
    assert [c.image for c in template.containers] == images
    assert not template.image_pull_secrets


def test_reinvocation_adds_nothing(core: Any, mirror: Mirror, namespace_for_mirror: str) -> None:
    namespace = namespace_for_mirror
    first = core.create_namespaced_pod(namespace, mirror_pod("rancher/pause:3.6"))
    stored = core.read_namespaced_pod(first.metadata.name, namespace)
    # Our own output as input: what the API server sends on reinvocation, or a Pod re-created from it.
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "again-", "annotations": dict(stored.metadata.annotations)},
        "spec": {
            "containers": [{"name": c.name, "image": c.image} for c in stored.spec.containers],
            "imagePullSecrets": [{"name": ref.name} for ref in stored.spec.image_pull_secrets],
        },
    }
    again = core.create_namespaced_pod(namespace, body, dry_run="All")
    assert [c.image for c in again.spec.containers] == [c.image for c in stored.spec.containers]
    assert [ref.name for ref in again.spec.image_pull_secrets] == ["mirror-pull"]
    ours = (ORIGINAL_IMAGES_ANNOTATION, INJECTED_ANNOTATION)
    assert {k: again.metadata.annotations[k] for k in ours} == {k: stored.metadata.annotations[k] for k in ours}


def test_an_image_the_mirror_lacks_is_kept_as_written(core: Any, mirror: Mirror, namespace_for_mirror: str) -> None:
    pod = core.create_namespaced_pod(namespace_for_mirror, mirror_pod("rancher/not-mirrored:1"))
    assert pod.spec.containers[0].image == "rancher/not-mirrored:1"
    assert not pod.spec.image_pull_secrets
    assert ORIGINAL_IMAGES_ANNOTATION not in (pod.metadata.annotations or {})


def test_fallback_deny_rejects_the_pod_naming_image_and_endpoint(
    core: Any, mirror: Mirror, namespace_for_mirror: str
) -> None:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as excinfo:
        core.create_namespaced_pod(namespace_for_mirror, mirror_pod("quay.io/org/absent:1"))
    assert excinfo.value.status == 403
    body = json.loads(excinfo.value.body or "{}")
    assert "'quay.io/org/absent:1' is on no endpoint of mirror quay.io" in body["message"]
    assert f"{mirror.host}/quay absent (404)" in body["message"]
    assert not core.list_namespaced_pod(namespace_for_mirror).items


def test_fixture_is_loopback(mirror: Mirror) -> None:
    assert mirror.host.startswith("127.0.0.1:")
    assert Path(mirror.hook.log_path).is_file()
