"""``doctor`` against the real API server: one test per diagnosis of issue 15, and the README's example.

One ``pullsecret-injector serve`` process (module fixture ``doctor_hook``) is registered for
namespaces labelled ``HOOK_LABEL=psi-e2e-doctor``; the tests that need a webhook
configuration of their own (made after a Pod, with a wrong CA, named like the chart's)
create it beside, pointing at the same process. There is no kubelet in this control plane:
where a test needs a Pod "in ImagePullBackOff", it writes the container status and the
``Failed`` Event the kubelet would write (the status subresource and an Event object), and
says so. Everything else is the real thing: admission by the API server, copies written by
the webhook, ``doctor`` reading them over the API and handshaking with the webhook.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import builders
from tests.builders import auth_entry, b64, wait_for
from webhook.cli import main as cli_main
from webhook.tls.certs import write_local_certs

from .cluster import Namespaces, dockerconfig_secret, dry_run_probe, injects, source_namespace
from .controlplane import ControlPlane
from .process import REPO
from .webhook import HOOK_LABEL, WebhookProcess, registered_webhook

SYS = "pullsecret-system"
HOOK = "psi-e2e-doctor"
README = REPO / "README.md"
POLICY_CONFIGMAP = f"{SYS}/pullsecret-injector-policy"
OPT_IN = "pull-secrets"

POLICY: dict[str, Any] = {
    "excludeNamespaces": ["kube-system", "kube-public", "kube-node-lease", "doc-excluded-*"],
    "rules": [
        {
            "name": "shop",
            "registries": ["registry.example.com", "registry.example.com:5000"],
            "secret": "shop-pull",
            "source": {"secret": {"namespace": SYS, "name": "shop-registry"}},
        },
        {
            "name": "labelled",
            "registries": ["labelled.example.com"],
            "namespaces": {"selector": {"matchLabels": {OPT_IN: "enabled"}}},
            "secret": "labelled-pull",
            "source": {"secret": {"namespace": SYS, "name": "labelled-credentials"}},
        },
        {"name": "handmade", "registries": ["handmade.example.com:5000"], "secret": "handmade-pull"},
        {
            "name": "missing",
            "registries": ["missing.example.com"],
            "secret": "missing-pull",
            "source": {"secret": {"namespace": SYS, "name": "missing-credentials"}},
        },
        {
            "name": "stale",
            "registries": ["stale.example.com"],
            "secret": "stale-pull",
            "source": {"secret": {"namespace": SYS, "name": "stale-credentials"}},
        },
    ],
}

SHOP_IMAGE = "registry.example.com/shop/web:1.4"
SHOP_PORT_IMAGE = "registry.example.com:5000/shop/web:1.4"
PASSWORDS = ("shop-pass-7f3a", "labelled-pass-91c2", "stale-pass-v1", "stale-pass-v2", "hand-pass-55e1")


# --------------------------------------------------------------------------- helpers


def docker_secret(name: str, auths: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """A dockerconfigjson Secret with one ``(user, password)`` per registry."""
    return dockerconfig_secret(name, {server: auth_entry(user, password) for server, (user, password) in auths.items()})


def pod_body(name: str, image: str, container: str = "app", labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One container named ``container``: doctor names the container in what it reports."""
    body = builders.pod_body(image, name=name, labels=labels)
    body["spec"]["containers"][0]["name"] = container
    return body


def doctor(*args: str, kubeconfig: Path) -> tuple[int, str]:
    """``pullsecret-injector doctor ...`` in-process (the same ``main`` as the console script)."""
    out = io.StringIO()
    code = cli_main(["doctor", "--kubeconfig", str(kubeconfig), *args], out=out)
    return code, out.getvalue()


def doctor_json(*args: str, kubeconfig: Path) -> tuple[int, dict[str, Any]]:
    code, text = doctor(*args, "-o", "json", kubeconfig=kubeconfig)
    return code, json.loads(text)


def by_check(report: Mapping[str, Any], check: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["check"] == check]


def verdicts(report: Mapping[str, Any], check: str) -> list[str]:
    return [f["verdict"] for f in by_check(report, check)]


def assert_no_credential(text: str) -> None:
    for password in PASSWORDS:
        assert password not in text
        assert b64(password) not in text


def simulate_image_pull_backoff(core: Any, namespace: str, pod: str, container: str, image: str) -> None:
    """What the kubelet writes when a pull fails with 401: the waiting state and a ``Failed`` Event.

    There is no kubelet in the e2e control plane, so the test writes them itself through the
    same API (status subresource, Events) the kubelet uses.
    """
    obj = core.read_namespaced_pod(pod, namespace)
    message = (
        f'Failed to pull image "{image}": rpc error: code = Unknown desc = failed to pull and unpack image '
        f'"{image}": failed to resolve reference "{image}": unexpected status code 401 Unauthorized'
    )
    core.patch_namespaced_pod_status(
        pod,
        namespace,
        {
            "status": {
                "containerStatuses": [
                    {
                        "name": container,
                        "image": image,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {
                            "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
                        },
                    }
                ]
            }
        },
    )
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    core.create_namespaced_event(
        namespace,
        {
            "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:12]}"},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod,
                "namespace": namespace,
                "uid": obj.metadata.uid,
                "fieldPath": f"spec.containers{{{container}}}",
            },
            "reason": "Failed",
            "message": message,
            "type": "Warning",
            "source": {"component": "kubelet", "host": "node-1"},
            "count": 3,
            "firstTimestamp": now,
            "lastTimestamp": now,
        },
    )


def wait_gone(core: Any, namespace: str, timeout: float = 60.0) -> None:
    from kubernetes.client.exceptions import ApiException

    def gone() -> bool:
        try:
            core.read_namespace(namespace)
        except ApiException as err:
            return bool(err.status == 404)
        return False

    wait_for(gone, f"namespace {namespace} to be deleted", timeout=timeout, interval=0.5)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return Path(control_plane.kubeconfig_path)


@pytest.fixture(scope="module")
def system(core: Any) -> Iterator[str]:
    """The webhook's namespace: the sources, and the policy ConfigMap labelled like the chart's."""
    sources = [
        docker_secret("shop-registry", {"registry.example.com": ("shop", PASSWORDS[0])}),
        docker_secret("labelled-credentials", {"labelled.example.com": ("lab", PASSWORDS[1])}),
        docker_secret("stale-credentials", {"stale.example.com": ("st", PASSWORDS[2])}),
    ]
    with source_namespace(core, SYS, sources) as name:
        core.create_namespaced_config_map(
            name,
            {
                "metadata": {
                    "name": "pullsecret-injector-policy",
                    "labels": {"app.kubernetes.io/name": "pullsecret-injector"},
                },
                "data": {"policy.yaml": yaml.safe_dump(POLICY, sort_keys=False)},
            },
        )
        yield name


@pytest.fixture(scope="module")
def doctor_hook(control_plane: ControlPlane, api_client: Any, core: Any, system: str) -> Iterator[WebhookProcess]:
    with registered_webhook(
        control_plane,
        api_client,
        name=HOOK,
        namespace=system,
        policy=POLICY,
        probe=injects(core, SHOP_IMAGE, "shop-pull"),
    ) as hook:
        yield hook


def common(kubeconfig: Path) -> dict[str, Any]:
    return {"kubeconfig": kubeconfig}


def args(namespace: str, target: str, *extra: str, config: str = HOOK) -> list[str]:
    return ["-n", namespace, target, "--policy-configmap", POLICY_CONFIGMAP, "--webhook-config", config, *extra]


# --------------------------------------------------------------------------- the findings


def test_a_healthy_pod_exits_0(
    doctor_hook: WebhookProcess, core: Any, namespaces: Namespaces, kubeconfig: Path
) -> None:
    ns = namespaces.one("doc", hook=HOOK)
    core.create_namespaced_pod(ns, pod_body("web", SHOP_IMAGE))

    code, report = doctor_json(*args(ns, "web"), kubeconfig=kubeconfig)

    assert code == 0, report
    assert report["problems"] == 0
    for check in ("webhook-scope", "webhook-ca", "webhook-ready", "rule", "listed", "secret", "auths", "current"):
        assert verdicts(report, check) == ["ok"], (check, report)
    assert "'registry.example.com'" in by_check(report, "auths")[0]["message"]
    assert_no_credential(json.dumps(report))


def test_no_rule_matched(doctor_hook: WebhookProcess, core: Any, namespaces: Namespaces, kubeconfig: Path) -> None:
    ns = namespaces.one("doc", hook=HOOK)
    core.create_namespaced_pod(ns, pod_body("tool", "ghcr.io/team/tool:2.0", container="tool"))
    code, report = doctor_json(*args(ns, "tool"), kubeconfig=kubeconfig)
    assert code == 0, "a public image without a rule is no problem by itself"
    (rule,) = by_check(report, "rule")
    assert rule["verdict"] == "info"
    assert "no rule names registry ghcr.io" in rule["message"]

    simulate_image_pull_backoff(core, ns, "tool", "tool", "ghcr.io/team/tool:2.0")
    code, text = doctor(*args(ns, "tool"), kubeconfig=kubeconfig)
    assert code == 1
    assert re.search(r"FAIL\s+rule\s+\[tool\] no rule: no rule names registry ghcr.io -- fix: if ghcr.io needs", text)
    assert 'Event Failed (x3): "Failed to pull image \\"ghcr.io/team/tool:2.0\\"' in text
    assert "ImagePullBackOff" in text


def test_excluded_namespace(doctor_hook: WebhookProcess, core: Any, namespaces: Namespaces, kubeconfig: Path) -> None:
    ns = namespaces.one("doc-excluded", hook=HOOK)
    core.create_namespaced_pod(ns, pod_body("web", SHOP_IMAGE))
    code, report = doctor_json(*args(ns, "web"), kubeconfig=kubeconfig)
    assert code == 1
    (rule,) = by_check(report, "rule")
    assert rule["verdict"] == "fail"
    assert "excluded by excludeNamespaces" in rule["message"]
    assert "excludeNamespaces" in rule["fix"]


def test_unlabelled_namespace(doctor_hook: WebhookProcess, core: Any, namespaces: Namespaces, kubeconfig: Path) -> None:
    ns = namespaces.one("doc", hook=HOOK)
    core.create_namespaced_pod(ns, pod_body("lab", "labelled.example.com/team/app:1.0"))
    code, report = doctor_json(*args(ns, "lab"), kubeconfig=kubeconfig)
    assert code == 1
    (rule,) = by_check(report, "rule")
    assert rule["verdict"] == "fail"
    assert rule["fix"] == (
        f"label namespace {ns} {OPT_IN}=enabled: kubectl label namespace {ns} {OPT_IN}=enabled (rule labelled)"
    )
    # Following the fix makes the next Pod healthy.
    core.patch_namespace(ns, {"metadata": {"labels": {OPT_IN: "enabled"}}})
    core.create_namespaced_pod(ns, pod_body("lab2", "labelled.example.com/team/app:1.0"))
    code, report = doctor_json(*args(ns, "lab2"), kubeconfig=kubeconfig)
    assert code == 0, report


def test_a_pod_created_before_the_webhook_existed(
    doctor_hook: WebhookProcess, api_client: Any, core: Any, namespaces: Namespaces, kubeconfig: Path
) -> None:
    late = f"{HOOK}-late"
    ns = namespaces.one("doc-late", hook=late)
    core.create_namespaced_pod(ns, pod_body("old", SHOP_IMAGE))
    time.sleep(1.1)  # creationTimestamps have a resolution of one second
    with doctor_hook.configuration(api_client, late):
        wait_for(dry_run_probe(core, ns, SHOP_IMAGE, "shop-pull"), "the late webhook to be called", interval=0.2)
        code, report = doctor_json(*args(ns, "old", config=late), kubeconfig=kubeconfig)
    assert code == 1
    (listed,) = by_check(report, "listed")
    assert listed["verdict"] == "fail"
    assert "before the webhook configuration existed" in listed["message"]
    assert listed["fix"].startswith("delete the Pod")


def test_secret_missing(doctor_hook: WebhookProcess, core: Any, namespaces: Namespaces, kubeconfig: Path) -> None:
    ns = namespaces.one("doc", hook=HOOK)
    core.create_namespaced_pod(ns, pod_body("miss", "missing.example.com/team/app:1.0"))
    core.create_namespaced_pod(ns, pod_body("hand", "handmade.example.com:5000/team/app:1.0"))

    code, report = doctor_json(*args(ns, "miss"), kubeconfig=kubeconfig)
    assert code == 1
    assert verdicts(report, "listed") == ["ok"]
    (secret,) = by_check(report, "secret")
    assert secret["verdict"] == "fail"
    assert secret["message"] == f"Secret {ns}/missing-pull not found"
    assert secret["fix"] == f"create the source Secret {SYS}/missing-credentials: the webhook then copies it into {ns}"

    code, report = doctor_json(*args(ns, "hand"), kubeconfig=kubeconfig)
    assert code == 1
    (secret,) = by_check(report, "secret")
    assert secret["fix"] == (
        f"create it: pullsecret-injector import docker-config --registry handmade.example.com:5000 "
        f"--name handmade-pull -n {ns} --apply"
    )


def test_an_unmanaged_secret_without_a_matching_auths_entry(
    doctor_hook: WebhookProcess, core: Any, namespaces: Namespaces, kubeconfig: Path
) -> None:
    ns = namespaces.one("doc", hook=HOOK)
    # The user made it by hand, for the host without the port: the kubelet never matches it.
    core.create_namespaced_secret(ns, docker_secret("handmade-pull", {"handmade.example.com": ("me", PASSWORDS[4])}))
    core.create_namespaced_pod(ns, pod_body("hand", "handmade.example.com:5000/team/app:1.0"))
    code, report = doctor_json(*args(ns, "hand"), kubeconfig=kubeconfig)
    assert code == 1
    (secret,) = by_check(report, "secret")
    assert secret["verdict"] == "ok"
    assert "not managed by pullsecret-injector" in secret["message"]
    (auths,) = by_check(report, "auths")
    assert auths["verdict"] == "fail"
    assert "no auths entry the kubelet would pick for handmade.example.com:5000/team/app" in auths["message"]
    assert "'handmade.example.com'" in auths["message"]
    assert auths["fix"].startswith("the Secret lacks an auths entry for handmade.example.com:5000")
    assert_no_credential(json.dumps(report))


def test_a_stale_copy(doctor_hook: WebhookProcess, core: Any, namespaces: Namespaces, kubeconfig: Path) -> None:
    ns = namespaces.one("doc", hook=HOOK)
    core.create_namespaced_pod(ns, pod_body("st", "stale.example.com/team/app:1.0"))
    code, report = doctor_json(*args(ns, "st"), kubeconfig=kubeconfig)
    assert code == 0, report
    # Freeze the webhook (the PID this module started) so that its reconciler cannot follow the
    # rotation: the copy stays as it is while the source moves on.
    assert doctor_hook.pid is not None
    os.kill(doctor_hook.pid, signal.SIGSTOP)
    try:
        core.replace_namespaced_secret(
            "stale-credentials", SYS, docker_secret("stale-credentials", {"stale.example.com": ("st", PASSWORDS[3])})
        )
        code, report = doctor_json(*args(ns, "st", "--no-probe"), kubeconfig=kubeconfig)
    finally:
        os.kill(doctor_hook.pid, signal.SIGCONT)
    assert code == 1
    (current,) = by_check(report, "current")
    assert current["verdict"] == "fail"
    assert "is stale: its content (sha256:" in current["message"]
    assert "differs from what the source gives now (sha256:" in current["message"]
    assert "resync" in current["fix"]
    assert_no_credential(json.dumps(report))
    # Once the webhook runs again it rewrites the copy, and doctor agrees.
    wait_for(lambda: doctor_json(*args(ns, "st"), kubeconfig=kubeconfig)[0] == 0, "the copy to be current", 30, 0.5)


def test_webhook_configuration_missing(
    doctor_hook: WebhookProcess, core: Any, namespaces: Namespaces, kubeconfig: Path
) -> None:
    ns = namespaces.one("doc", hook=HOOK)
    core.create_namespaced_pod(ns, pod_body("web", SHOP_IMAGE))
    code, report = doctor_json(*args(ns, "web", config="no-such-webhook"), kubeconfig=kubeconfig)
    assert code == 1
    (config,) = by_check(report, "webhook-config")
    assert config["verdict"] == "fail"
    assert config["message"].startswith("no MutatingWebhookConfiguration no-such-webhook")


def test_webhook_with_a_wrong_ca_bundle(
    doctor_hook: WebhookProcess,
    api_client: Any,
    core: Any,
    namespaces: Namespaces,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    bad = f"{HOOK}-badca"
    other_ca = write_local_certs(service="other", namespace="other", out_dir=tmp_path / "other")["ca.crt"].read_bytes()
    ns = namespaces.one("doc-badca", hook=bad)
    with doctor_hook.configuration(api_client, bad, ca_pem=other_ca):
        # failurePolicy Ignore: the API server's call fails TLS and the Pod is admitted without its secret.
        time.sleep(1.0)
        core.create_namespaced_pod(ns, pod_body("web", SHOP_IMAGE))
        code, report = doctor_json(*args(ns, "web", config=bad), kubeconfig=kubeconfig)
    assert code == 1
    (ca,) = by_check(report, "webhook-ca")
    assert ca["verdict"] == "fail"
    assert "the caBundle does not verify the serving certificate" in ca["message"]
    assert verdicts(report, "webhook-ready") == ["ok"], "readiness is still asked"
    assert verdicts(report, "listed") == ["fail"]


def test_webhook_not_covering_the_namespace(
    doctor_hook: WebhookProcess, core: Any, namespaces: Namespaces, kubeconfig: Path
) -> None:
    ns = namespaces.one("doc-nohook")
    core.create_namespaced_pod(ns, pod_body("web", SHOP_IMAGE))
    code, report = doctor_json(*args(ns, "web"), kubeconfig=kubeconfig)
    assert code == 1
    (scope,) = by_check(report, "webhook-namespace")
    assert scope["verdict"] == "fail"
    assert scope["fix"] == f"label namespace {ns} {HOOK_LABEL}={HOOK}: kubectl label namespace {ns} {HOOK_LABEL}={HOOK}"
    (listed,) = by_check(report, "listed")
    assert "the webhook is not called for it" in listed["message"]


def test_a_workload_template_and_usage_errors(
    doctor_hook: WebhookProcess, api_client: Any, core: Any, namespaces: Namespaces, kubeconfig: Path
) -> None:
    from kubernetes import client

    ns = namespaces.one("doc", hook=HOOK)
    apps: Any = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": SHOP_IMAGE}]},
                },
            },
        },
    )
    core.create_namespaced_secret(ns, docker_secret("shop-pull", {"registry.example.com": ("u", PASSWORDS[0])}))
    code, report = doctor_json(*args(ns, "deploy/web"), kubeconfig=kubeconfig)
    assert report["kind"] == "Deployment"
    assert verdicts(report, "listed") == ["info"]
    assert verdicts(report, "auths") == ["ok"]
    assert code == 0, report
    assert doctor(*args(ns, "nosuchpod"), kubeconfig=kubeconfig)[0] == 2
    assert doctor(*args(ns, "gizmo/web"), kubeconfig=kubeconfig)[0] == 2


# --------------------------------------------------------------------------- the README's worked example


def readme_block(marker: str) -> str:
    text = README.read_text()
    start = text.index(f"<!-- {marker}:start -->")
    end = text.index(f"<!-- {marker}:end -->")
    return text[start:end].split("```", 2)[1].removeprefix("text\n")


def test_the_readme_example_is_what_doctor_prints(
    doctor_hook: WebhookProcess, api_client: Any, core: Any, namespaces: Namespaces, kubeconfig: Path
) -> None:
    """The ImagePullBackOff of the README, set up for real, through ``kubectl pullsecrets`` (the plugin)."""
    from kubernetes import client

    admission: Any = client.AdmissionregistrationV1Api(api_client)
    with contextlib.suppress(Exception):
        core.delete_namespace("shop")
        wait_gone(core, "shop")
    shop = namespaces.one(hook="pullsecret-injector", name="shop")
    body = {
        "metadata": {"name": "pullsecret-injector", "labels": {"app.kubernetes.io/name": "pullsecret-injector"}},
        "webhooks": [
            {
                "name": "mutate.pullsecret-injector.io",
                "clientConfig": {"url": doctor_hook.url, "caBundle": b64(doctor_hook.ca_pem)},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Ignore",
                "admissionReviewVersions": ["v1"],
                "namespaceSelector": {"matchLabels": {HOOK_LABEL: "pullsecret-injector"}},
            }
        ],
    }
    with contextlib.suppress(Exception):
        admission.delete_mutating_webhook_configuration("pullsecret-injector")
    admission.create_mutating_webhook_configuration(body)
    try:
        wait_for(dry_run_probe(core, shop, SHOP_PORT_IMAGE, "shop-pull"), "the README webhook", interval=0.2)
        core.create_namespaced_pod(shop, pod_body("web", SHOP_PORT_IMAGE, container="web"))
        simulate_image_pull_backoff(core, shop, "web", "web", SHOP_PORT_IMAGE)
        kubectl = shutil.which("kubectl")
        plugin = Path(sys.executable).parent / "kubectl-pullsecrets"
        assert plugin.exists(), "pip install -e . installs the kubectl-pullsecrets entry point"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{plugin.parent}{os.pathsep}{os.environ['PATH']}"}
        argv = [kubectl, "pullsecrets"] if kubectl else [str(plugin)]
        result = subprocess.run(
            [*argv, "doctor", "-n", "shop", "web"], capture_output=True, text=True, env=env, timeout=120, check=False
        )
    finally:
        admission.delete_mutating_webhook_configuration("pullsecret-injector")
    Path(os.environ.get("PSI_DOCTOR_OUT", "/dev/null")).write_text(result.stdout)
    assert result.returncode == 1, result.stderr
    assert readme_block("doctor-output").strip() == result.stdout.strip()
    assert_no_credential(result.stdout + result.stderr)


# --------------------------------------------------------------------------- import --apply, then doctor


def kubectl_config_bytes(server: str, username: str, password: str) -> bytes:
    """``.dockerconfigjson`` as the real ``kubectl create secret docker-registry`` makes it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        [kubectl, "create", "secret", "docker-registry", "x", f"--docker-server={server}",
         f"--docker-username={username}", f"--docker-password={password}", "--dry-run=client", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=True,
        env={"PATH": os.environ["PATH"], "HOME": str(REPO), "KUBECONFIG": os.devnull},
    )  # fmt: skip
    return base64.b64decode(json.loads(result.stdout)["data"][".dockerconfigjson"])


def test_import_apply_fixes_what_doctor_found(
    doctor_hook: WebhookProcess, core: Any, namespaces: Namespaces, kubeconfig: Path, tmp_path: Path
) -> None:
    ns = namespaces.one("doc", hook=HOOK)
    image = "handmade.example.com:5000/team/app:1.0"
    core.create_namespaced_pod(ns, pod_body("hand", image))
    assert doctor(*args(ns, "hand"), kubeconfig=kubeconfig)[0] == 1  # Secret handmade-pull not found

    def run_import(password: str, name: str = "handmade-pull") -> tuple[int, str]:
        docker_config = tmp_path / "config.json"
        entry = {"auth": b64(f"robot:{password}")}
        docker_config.write_text(json.dumps({"auths": {"handmade.example.com:5000": entry, "quay.io": entry}}))
        out = io.StringIO()
        code = cli_main(
            ["import", "docker-config", "--config", str(docker_config), "--registry", "handmade.example.com:5000",
             "--name", name, "-n", ns, "--apply", "--kubeconfig", str(kubeconfig)],
            out=out,
        )  # fmt: skip
        return code, out.getvalue()

    code, text = run_import(PASSWORDS[4])
    assert code == 0
    assert text.startswith(f"secret/handmade-pull created in namespace {ns} (handmade.example.com:5000 from ")
    assert_no_credential(text)
    secret = core.read_namespaced_secret("handmade-pull", ns)
    assert secret.type == "kubernetes.io/dockerconfigjson"
    assert base64.b64decode(secret.data[".dockerconfigjson"]) == kubectl_config_bytes(
        "handmade.example.com:5000", "robot", PASSWORDS[4]
    )
    code, report = doctor_json(*args(ns, "hand"), kubeconfig=kubeconfig)
    assert code == 0, report

    code, text = run_import("second-pass")
    assert code == 0
    assert text.startswith("secret/handmade-pull replaced")
    secret = core.read_namespaced_secret("handmade-pull", ns)
    assert base64.b64decode(secret.data[".dockerconfigjson"]) == kubectl_config_bytes(
        "handmade.example.com:5000", "robot", "second-pass"
    )

    # A managed copy is refused: the webhook would revert it.
    core.create_namespaced_pod(ns, pod_body("web", SHOP_IMAGE))
    assert core.read_namespaced_secret("shop-pull", ns).metadata.labels["app.kubernetes.io/managed-by"]
    assert run_import(PASSWORDS[4], name="shop-pull")[0] == 1


# --------------------------------------------------------------------------- a service webhook (the chart's form)


@pytest.mark.parametrize("right_ca", [True, False], ids=["ca-verifies", "wrong-ca"])
def test_a_service_webhook_is_checked_through_its_pods_secret(
    doctor_hook: WebhookProcess,
    api_client: Any,
    core: Any,
    namespaces: Namespaces,
    kubeconfig: Path,
    tmp_path: Path,
    right_ca: bool,
) -> None:
    """As the chart installs it: clientConfig.service, a Deployment's Pods with ``--cert-secret`` (self mode).

    A laptop cannot dial the Service, so doctor finds the serving certificate where the Pods
    take it from and verifies it for ``<service>.<namespace>.svc``. The Pod here never runs
    (no kubelet), so the Service has no ready endpoint: that is reported too.
    """
    from kubernetes import client

    system = namespaces.one("doc-websys")
    certs = write_local_certs(service="psi-webhook", namespace=system, out_dir=tmp_path / "serving")
    other = write_local_certs(service="psi-webhook", namespace=system, out_dir=tmp_path / "other")
    core.create_namespaced_secret(
        system,
        {
            "metadata": {"name": "psi-webhook-tls"},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(certs["tls.crt"].read_bytes()), "tls.key": b64(certs["tls.key"].read_bytes())},
        },
    )
    labels = {"app.kubernetes.io/name": "psi-webhook"}
    core.create_namespaced_service(
        system, {"metadata": {"name": "psi-webhook"}, "spec": {"selector": labels, "ports": [{"port": 443}]}}
    )
    webhook_pod = pod_body("psi-webhook-0", "ghcr.io/example/pullsecret-injector:0.1.0", labels=labels)
    webhook_pod["spec"]["containers"][0]["args"] = ["serve", "--cert-mode=self", "--cert-secret=psi-webhook-tls"]
    core.create_namespaced_pod(system, webhook_pod)
    name = f"{HOOK}-service-{'right' if right_ca else 'wrong'}"
    ca = (certs if right_ca else other)["ca.crt"].read_bytes()
    admission: Any = client.AdmissionregistrationV1Api(api_client)
    admission.create_mutating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "mutate.pullsecret-injector.io",
                    "clientConfig": {
                        "service": {"namespace": system, "name": "psi-webhook", "path": "/mutate", "port": 443},
                        "caBundle": b64(ca),
                    },
                    "rules": [
                        {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
                    ],
                    "sideEffects": "NoneOnDryRun",
                    "failurePolicy": "Ignore",
                    "admissionReviewVersions": ["v1"],
                    "namespaceSelector": {"matchLabels": {HOOK_LABEL: name}},
                }
            ],
        }
    )
    try:
        ns = namespaces.one("doc-svc", hook=name)
        core.create_namespaced_pod(ns, pod_body("web", SHOP_IMAGE))
        code, report = doctor_json(*args(ns, "web", config=name), kubeconfig=kubeconfig)
    finally:
        admission.delete_mutating_webhook_configuration(name)
    assert code == 1
    (ca_finding,) = by_check(report, "webhook-ca")
    assert ca_finding["verdict"] == ("ok" if right_ca else "fail"), report
    if not right_ca:
        assert f"Secret psi-webhook-tls for psi-webhook.{system}.svc" in ca_finding["message"]
        assert "is not signed by any of the 1 CA(s)" in ca_finding["message"]
    (ready,) = by_check(report, "webhook-ready")
    assert ready["verdict"] == "fail"
    assert "0 ready" in ready["message"] or "no Endpoints" in ready["message"]
    assert "PRIVATE KEY" not in json.dumps(report)
