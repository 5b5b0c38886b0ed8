"""Smoke tests proving the e2e harness: a real apiserver + controllers behave as the webhook needs."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.builders import deployment_body, pod_body, wait_for

from .conftest import MISSING_ASSETS
from .controlplane import ControlPlane, find_assets, make_serving_cert, register_webhook, unregister_webhook
from .process import REPO

IMAGE = "registry.example.com/team/app:1.0"


# --------------------------------------------------------------------------- the control plane


def test_apiserver_answers(control_plane: ControlPlane, api_client: Any) -> None:
    from kubernetes import client

    status, body = control_plane.get("/readyz")
    assert (status, body) == (200, b"ok")
    version_api: Any = client.VersionApi(api_client)
    version = version_api.get_code()
    assert version.major == "1"
    assert version.minor.startswith("20")
    assert control_plane.server.startswith("https://127.0.0.1:")
    assert control_plane.kubeconfig_path.is_file()


def test_admin_is_system_masters(api_client: Any) -> None:
    from kubernetes import client

    authz: Any = client.AuthorizationV1Api(api_client)
    review = authz.create_self_subject_access_review(
        {"spec": {"resourceAttributes": {"verb": "*", "group": "*", "resource": "*"}}}
    )
    assert review.status.allowed is True


def test_namespace_gets_default_service_account(namespace: str, api_client: Any) -> None:
    from kubernetes import client

    core: Any = client.CoreV1Api(api_client)
    sa = core.read_namespaced_service_account("default", namespace)
    assert sa.metadata.name == "default"
    assert sa.secrets, "the serviceaccount-token controller should have added a token Secret"


def test_pod_is_created_and_stays_pending(namespace: str, api_client: Any) -> None:
    from kubernetes import client

    core: Any = client.CoreV1Api(api_client)
    created = core.create_namespaced_pod(namespace, pod_body(IMAGE, name="plain"))
    assert created.metadata.uid
    # the ServiceAccount admission plugin ran
    assert created.spec.service_account_name == "default"
    assert any(v.name.startswith("default-token-") for v in created.spec.volumes)
    time.sleep(1)
    pod = core.read_namespaced_pod("plain", namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None  # no scheduler, no kubelet


def test_deployment_creates_pod_via_replicaset(namespace: str, api_client: Any) -> None:
    from kubernetes import client

    apps: Any = client.AppsV1Api(api_client)
    core: Any = client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, deployment_body("web", IMAGE, labels={"app": "web"}))
    pods = wait_for(
        lambda: core.list_namespaced_pod(namespace, label_selector="app=web").items,
        "the Deployment's Pod",
        timeout=60,
        interval=0.25,
    )
    assert len(pods) == 1
    pod = pods[0]
    assert pod.metadata.generate_name.startswith("web-")
    assert pod.metadata.name.startswith(pod.metadata.generate_name)
    (owner,) = pod.metadata.owner_references
    assert owner.kind == "ReplicaSet"
    assert owner.name.startswith("web-")


def test_dry_run_pod_creation(namespace: str, api_client: Any) -> None:
    from kubernetes import client

    core: Any = client.CoreV1Api(api_client)
    dry = core.create_namespaced_pod(namespace, pod_body(IMAGE, name="ghost"), dry_run="All")
    assert dry.metadata.name == "ghost"
    assert dry.spec.service_account_name == "default"
    assert core.list_namespaced_pod(namespace).items == []


# --------------------------------------------------------------------------- webhooks


class _Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()


def _handler(recorder: _Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with recorder.lock:
                recorder.requests.append(review)
            patch = [{"op": "add", "path": "/metadata/labels", "value": {"mutated-by": "e2e"}}]
            import base64

            response = {
                "apiVersion": review["apiVersion"],
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
            data = json.dumps(response).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def https_webhook(tmp_path: Path) -> Iterator[tuple[str, bytes, _Recorder]]:
    """A throwaway HTTPS admission webhook on 127.0.0.1 that labels Pods; yields (url, ca_pem, recorder)."""
    tls = make_serving_cert(common_name="e2e-webhook")
    _, crt, key = tls.write(tmp_path, "webhook")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    recorder = _Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/mutate", tls.ca_pem, recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_register_webhook_mutates_pods(
    namespace: str, api_client: Any, https_webhook: tuple[str, bytes, _Recorder]
) -> None:
    from kubernetes import client

    url, ca_pem, recorder = https_webhook
    core: Any = client.CoreV1Api(api_client)
    name = f"e2e-{namespace}"
    created = register_webhook(
        api_client,
        name,
        url,
        ca_pem,
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
    )
    try:
        (hook,) = created.webhooks
        assert hook.client_config.url == url
        assert hook.side_effects == "NoneOnDryRun"
        assert hook.failure_policy == "Ignore"
        assert hook.reinvocation_policy == "IfNeeded"
        assert hook.admission_review_versions == ["v1", "v1beta1"]
        assert hook.timeout_seconds == 5
        assert hook.rules[0].operations == ["CREATE"]
        assert hook.rules[0].resources == ["pods"]

        # kube-apiserver 1.20 has no kubernetes.io/metadata.name namespace label (1.21+): select by our own
        core.patch_namespace(namespace, {"metadata": {"labels": {"kubernetes.io/metadata.name": namespace}}})

        # the apiserver picks the configuration up asynchronously: poll with dry-run creates
        def mutated_dry_run() -> bool:
            pod = core.create_namespaced_pod(namespace, pod_body(IMAGE, name="probe"), dry_run="All")
            return (pod.metadata.labels or {}).get("mutated-by") == "e2e"

        wait_for(mutated_dry_run, "the webhook to be called", timeout=30)
        assert recorder.requests[-1]["request"]["dryRun"] is True
        assert recorder.requests[-1]["apiVersion"] == "admission.k8s.io/v1"

        pod = core.create_namespaced_pod(namespace, pod_body(IMAGE, name="real"))
        assert pod.metadata.labels == {"mutated-by": "e2e"}
        assert recorder.requests[-1]["request"]["dryRun"] is False
        assert recorder.requests[-1]["request"]["operation"] == "CREATE"
    finally:
        unregister_webhook(api_client, name)
    unregister_webhook(api_client, name)  # idempotent


def test_register_webhook_rejects_unknown_options(api_client: Any) -> None:
    with pytest.raises(TypeError, match="unknown options"):
        register_webhook(api_client, "x", "https://127.0.0.1:1/mutate", b"", failurePolicy="Fail")


# --------------------------------------------------------------------------- the harness itself


def test_find_assets_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_assets(tmp_path) is None
    monkeypatch.setenv("KUBE_ASSETS", str(tmp_path))
    assert find_assets() is None


def _run_pytest_without_assets(require: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PSI_REQUIRE_E2E", "PYTEST_ADDOPTS"}}
    env["KUBE_ASSETS"] = "/nonexistent/kube-assets"
    if require:
        env["PSI_REQUIRE_E2E"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rs",
            "-q",
            "tests/e2e/test_controlplane.py::test_apiserver_answers",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_skips_without_assets() -> None:
    res = _run_pytest_without_assets(require=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 skipped" in res.stdout
    assert MISSING_ASSETS in res.stdout


def test_fails_without_assets_when_required() -> None:
    res = _run_pytest_without_assets(require=True)
    assert res.returncode == 1, res.stdout + res.stderr
    assert MISSING_ASSETS in res.stdout
    assert "PSI_REQUIRE_E2E=1" in res.stdout


def test_e2e_marker_applied(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("e2e") is not None
