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

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.builders import wait_for
from tests.mirror_registries import INSTALL_HINT, LoopbackCA, LoopbackRegistry, build_image, missing_tools
from webhook.admission.patch import INJECTED_ANNOTATION
from webhook.policy.mirrors import ORIGINAL_IMAGES_ANNOTATION

from .controlplane import ControlPlane, register_webhook, unregister_webhook
from .webhook import HOOK_LABEL, WebhookProcess

SYSTEM_NS = "psi-mirrors-system"
HOOK = "psi-e2e-mirrors"
AGAIN = "psi-e2e-mirrors-again"
REWRITTEN = "mirrorproject/rancher-images/pause"
PASSWORD = "mirror-e2e-password"


@dataclass
class Mirror:
    registry: LoopbackRegistry
    digest: str
    hook: WebhookProcess

    @property
    def host(self) -> str:
        return self.registry.host


def _core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


def _apps(api_client: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(api_client)


def _make_namespace(control_plane: ControlPlane, core: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {HOOK_LABEL: HOOK}}})
    control_plane.wait_for_default_service_account(name)
    return name


def _delete_namespace(core: Any, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


def pod_body(*images: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "mirror-e2e-"},
        "spec": {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]},
    }


@pytest.fixture(scope="module")
def mirror(control_plane: ControlPlane, api_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    if missing_tools():
        pytest.fail(f"missing {', '.join(missing_tools())}: {INSTALL_HINT}", pytrace=False)
    root = tmp_path_factory.mktemp("mirror-e2e")
    ca = LoopbackCA.create()
    registry = LoopbackRegistry(root / "registry", ca, users={"robot": PASSWORD}).start()
    core = _core(api_client)
    created: list[str] = []
    hook: WebhookProcess | None = None
    try:
        digest = registry.push(build_image(root / "oci", "pause", marker="pause 3.6"), REWRITTEN, "3.6")
        ca_file = root / "mirror-ca.pem"
        ca_file.write_bytes(ca.ca_pem)
        core.create_namespace({"metadata": {"name": SYSTEM_NS}})
        created.append(SYSTEM_NS)
        core.create_namespaced_secret(SYSTEM_NS, registry.dockerconfig_secret("mirror-creds", SYSTEM_NS))
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
        hook = WebhookProcess(
            control_plane=control_plane,
            name=HOOK,
            namespace=SYSTEM_NS,
            policy=policy,
            extra_args=("--mirror-ca-file", str(ca_file)),
        ).start()
        probe_ns = _make_namespace(control_plane, core, "mirror-probe")
        created.append(probe_ns)
        wanted = f"{registry.host}/{REWRITTEN}:3.6"

        def rewritten() -> bool:
            pod = core.create_namespaced_pod(probe_ns, pod_body("rancher/pause:3.6"), dry_run="All")
            return bool(pod.spec.containers[0].image == wanted)

        hook.register(api_client, probe=rewritten)
        # The same process once more, so every create hands it its own output (reinvocation).
        register_webhook(
            api_client,
            AGAIN,
            hook.url,
            hook.ca_pem,
            namespace_selector={"matchLabels": {HOOK_LABEL: HOOK}},
            replace=True,
        )
        time.sleep(1.0)  # the second configuration reaches the apiserver asynchronously
        yield Mirror(registry=registry, digest=digest, hook=hook)
    finally:
        with contextlib.suppress(Exception):
            unregister_webhook(api_client, AGAIN)
        if hook is not None:
            hook.unregister()
            hook.cleanup()
        for name in created:
            _delete_namespace(core, name)
        registry.stop()


@pytest.fixture
def namespace_for_mirror(control_plane: ControlPlane, api_client: Any, mirror: Mirror) -> Iterator[str]:
    core = _core(api_client)
    name = _make_namespace(control_plane, core, "mirror-e2e")
    mark = mirror.hook.log_mark()
    try:
        yield name
    finally:
        _delete_namespace(core, name)
        logs = mirror.hook.logs(mark)
        assert "Traceback" not in logs, logs
        assert PASSWORD not in logs


def test_a_deployment_comes_out_on_the_mirror_with_its_pull_secret(
    api_client: Any, mirror: Mirror, namespace_for_mirror: str
) -> None:
    core, apps = _core(api_client), _apps(api_client)
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
    config = json.loads(base64.b64decode(secret.data[".dockerconfigjson"]))
    assert list(config["auths"]) == [mirror.host]
    # Workload templates are never rewritten (no GitOps drift).
    template = apps.read_namespaced_deployment("pause", namespace).spec.template.spec
    assert [c.image for c in template.containers] == images
    assert not template.image_pull_secrets


def test_reinvocation_adds_nothing(api_client: Any, mirror: Mirror, namespace_for_mirror: str) -> None:
    core = _core(api_client)
    namespace = namespace_for_mirror
    first = core.create_namespaced_pod(namespace, pod_body("rancher/pause:3.6"))
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


def test_an_image_the_mirror_lacks_is_kept_as_written(
    api_client: Any, mirror: Mirror, namespace_for_mirror: str
) -> None:
    core = _core(api_client)
    pod = core.create_namespaced_pod(namespace_for_mirror, pod_body("rancher/not-mirrored:1"))
    assert pod.spec.containers[0].image == "rancher/not-mirrored:1"
    assert not pod.spec.image_pull_secrets
    assert ORIGINAL_IMAGES_ANNOTATION not in (pod.metadata.annotations or {})


def test_fallback_deny_rejects_the_pod_naming_image_and_endpoint(
    api_client: Any, mirror: Mirror, namespace_for_mirror: str
) -> None:
    from kubernetes.client.exceptions import ApiException

    core = _core(api_client)
    with pytest.raises(ApiException) as excinfo:
        core.create_namespaced_pod(namespace_for_mirror, pod_body("quay.io/org/absent:1"))
    assert excinfo.value.status == 403
    body = json.loads(excinfo.value.body or "{}")
    assert "'quay.io/org/absent:1' is on no endpoint of mirror quay.io" in body["message"]
    assert f"{mirror.host}/quay absent (404)" in body["message"]
    assert not core.list_namespaced_pod(namespace_for_mirror).items


def test_fixture_is_loopback(mirror: Mirror) -> None:
    assert mirror.host.startswith("127.0.0.1:")
    assert Path(mirror.hook.log_path).is_file()
