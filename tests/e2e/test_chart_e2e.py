"""Acceptance (issue 5): the Helm chart, installed by real Helm into the real control plane.

- The chart is installed with ``helm_sdkpy`` (Helm's Go SDK) into etcd + kube-apiserver +
  kube-controller-manager on loopback, with ``certificates.mode=self``.
- The webhook runs as the chart's Deployment would run it: its rendered container args,
  the policy from the chart's ConfigMap, and the **chart ServiceAccount's token** (so
  everything it does is authorized by the chart's RBAC and nothing else).
- The API server reaches it through the chart's own ``clientConfig.service``: this module's
  control plane allocates ClusterIPs from a loopback range and the process listens on the
  Service's ClusterIP:443 (see chart_support.py for why and what else differs from a real cluster).
- The self mode fills the caBundle by itself; a Pod then gets its pull secrets, and the
  Secrets exist.
- RBAC: real requests impersonating the ServiceAccount (refused unrelated Secrets, allowed
  what the webhook needs), and every permission the chart grants (ClusterRole and every
  Role of the release, in any namespace) compared with the table of what the code calls:
  exactly those, no more (a SubjectAccessReview table checks each and its neighbours,
  and the grants earlier chart versions made without need are denied). Source Secrets are
  readable in their own namespace only (a Role per source namespace).
- ``helm uninstall`` leaves no MutatingWebhookConfiguration behind.

The tests run in file order; the last one uninstalls the release.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509

from tests.builders import auth_entry, b64, pod_body, pull_secrets, wait_for

from .chart_support import (
    CLUSTER,
    DeploymentProcess,
    Grant,
    HelmRelease,
    chart_copy,
    container_args,
    https_get,
    is_loopback,
    loopback_control_plane,
    namespace_body,
    release_rbac,
    request_as,
    role_grants,
    service_account_groups,
    service_account_token,
    service_account_user,
    subject_access_review,
    webhook_ca_bundle,
    write_token_kubeconfig,
)
from .cluster import core_api
from .conftest import require_assets
from .controlplane import KEEP, ControlPlane

RELEASE = "psi"
FULLNAME = "psi-pullsecret-injector"  # <release>-<chart name>
RELEASE_NS = "psi-chart-system"
VAULT_NS = "psi-chart-vault"  # where the harbor rule's password lives: a source outside the release namespace
SERVICE_HOST = f"{FULLNAME}.{RELEASE_NS}.svc"  # the name the API server verifies the certificate for
TLS_SECRET = f"{FULLNAME}-tls"
LEASE = f"{FULLNAME}-leader"
POLICY_CONFIGMAP = f"{FULLNAME}-policy"
LEDGER = f"{FULLNAME}-ledger"
WEBHOOK_CONFIG_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{FULLNAME}"

MANAGED_BY = "app.kubernetes.io/managed-by"
DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
EXAMPLE_IMAGE = "registry.example.com/team/app:1.0"
HARBOR_IMAGE = "harbor.example.com/ci/tool:2.0"
HARBOR_USER = "robot$ci"
HARBOR_TOKEN = "harbor-token-1"

VALUES: dict[str, Any] = {
    # 1.20 has no policy/v1 PodDisruptionBudget: one replica, no budget (see chart_support.py)
    "replicaCount": 1,
    "podDisruptionBudget": {"enabled": False},
    "certificates": {"mode": "self"},
    "service": {"type": "ClusterIP"},
    # Fail: a Pod in a selected namespace is only admitted through the webhook, never around it
    "webhook": {"failurePolicy": "Fail"},
    "policy": {
        "excludeNamespaces": ["kube-system", "kube-public", "kube-node-lease"],
        "rules": [
            {
                "name": "example",
                "registries": ["registry.example.com"],
                "secret": "example-pull",
                "source": {"secret": {"namespace": RELEASE_NS, "name": "registry-credentials"}},
            },
            {
                "name": "harbor",
                "registries": ["harbor.example.com"],
                "secret": "harbor-pull",
                "source": {
                    "credentials": {
                        "registry": "harbor.example.com",
                        "username": HARBOR_USER,
                        "passwordFrom": {"namespace": VAULT_NS, "name": "harbor-robot", "key": "token"},
                    }
                },
            },
        ],
    },
}
TARGET_SECRETS = ("example-pull", "harbor-pull")
SOURCE_SECRETS = ("harbor-robot", "registry-credentials")


# --------------------------------------------------------------------------- small helpers


def get_json(control_plane: ControlPlane, path: str) -> dict[str, Any]:
    status, body = control_plane.get(path)
    assert status == 200, f"GET {path}: {status} {body[:300]!r}"
    value: dict[str, Any] = json.loads(body)
    return value


def ca_bundle(control_plane: ControlPlane) -> bytes:
    """The PEM caBundle of the chart's webhook entry (b'' while there is none, or the config is gone)."""
    return webhook_ca_bundle(control_plane, FULLNAME)


def certificates(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Installed:
    control_plane: ControlPlane
    admin: Any
    helm: HelmRelease
    service_ip: str
    service_port: int
    service_account: str
    ca_bundle_at_install: bytes
    rbac_namespace: str
    """A namespace for the RBAC probes, holding a Secret ``unrelated`` the webhook must not read."""

    @property
    def user(self) -> str:
        return service_account_user(RELEASE_NS, self.service_account)

    @property
    def groups(self) -> list[str]:
        return service_account_groups(RELEASE_NS)


@dataclass
class Running:
    process: DeploymentProcess
    serving_seconds: float
    """From spawning the process to verified TLS on the ClusterIP with the caBundle it patched."""


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    """This module's own control plane: ClusterIPs from a loopback /24 (the session one uses 10.0.0.0/24)."""
    with loopback_control_plane(require_assets()) as cp:
        yield cp


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Iterator[Any]:
    with control_plane.admin_client() as api:
        yield api


@pytest.fixture(scope="module")
def core(admin: Any) -> Any:
    return core_api(admin)


@pytest.fixture(scope="module")
def release(
    control_plane: ControlPlane, admin: Any, core: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """The chart installed by Helm, with its source Secrets in place; uninstalled at the end if still there."""
    rbac_ns = f"psi-chart-rbac-{uuid.uuid4().hex[:6]}"
    for name in (RELEASE_NS, VAULT_NS, rbac_ns):
        core.create_namespace(namespace_body(name))
    auths = {
        "registry.example.com": auth_entry("robot", "example-pass"),
        "quay.io": auth_entry("quay-robot", "quay-pass"),  # must not reach the copy (least privilege)
    }
    core.create_namespaced_secret(
        RELEASE_NS,
        {
            "metadata": {"name": "registry-credentials"},
            "type": DOCKERCONFIGJSON,
            "data": {".dockerconfigjson": b64(json.dumps({"auths": auths}))},
        },
    )
    core.create_namespaced_secret(
        VAULT_NS, {"metadata": {"name": "harbor-robot"}, "stringData": {"token": HARBOR_TOKEN}}
    )
    core.create_namespaced_secret(rbac_ns, {"metadata": {"name": "unrelated"}, "stringData": {"password": "nope"}})

    chart_dir = chart_copy(tmp_path_factory.mktemp("chart") / "pullsecret-injector")
    helm = HelmRelease(control_plane, RELEASE, RELEASE_NS, chart_dir, VALUES)
    helm.install()
    try:
        service = core.read_namespaced_service(FULLNAME, RELEASE_NS)
        port = next(p.port for p in service.spec.ports if p.name == "https")
        yield Installed(
            control_plane=control_plane,
            admin=admin,
            helm=helm,
            service_ip=str(service.spec.cluster_ip),
            service_port=int(port),
            service_account=FULLNAME,
            ca_bundle_at_install=ca_bundle(control_plane),
            rbac_namespace=rbac_ns,
        )
    finally:
        helm.uninstall_at_teardown()


@pytest.fixture(scope="module")
def webhook(release: Installed, core: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The Deployment's webhook as a process, with the ServiceAccount's credentials, serving on the ClusterIP."""
    from kubernetes import client

    cp = release.control_plane
    workdir = tmp_path_factory.mktemp("webhook")
    token = service_account_token(core, RELEASE_NS, release.service_account)
    kubeconfig = write_token_kubeconfig(workdir / "sa.kubeconfig", cp, user=release.user, token=token)
    apps: Any = client.AppsV1Api(release.admin)
    deployment = release.admin.sanitize_for_serialization(apps.read_namespaced_deployment(FULLNAME, RELEASE_NS))
    policy_yaml = core.read_namespaced_config_map(POLICY_CONFIGMAP, RELEASE_NS).data["policy.yaml"]
    # The Pending Pod the ReplicaSet made (no kubelet runs it): the process plays it, by name too.
    pods = core.list_namespaced_pod(RELEASE_NS, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
    pod_name = pods[0].metadata.name if pods else f"{FULLNAME}-e2e"
    process = DeploymentProcess(
        args=container_args(deployment),
        policy_yaml=policy_yaml,
        host=release.service_ip,
        port=release.service_port,
        kubeconfig=kubeconfig,
        pod_name=pod_name,
        pod_namespace=RELEASE_NS,
        workdir=workdir / "run",
    )
    t0 = time.monotonic()
    process.start()
    try:

        def serving() -> bool:
            process.check_alive()
            bundle = ca_bundle(cp)
            if not bundle:
                return False
            try:
                answer = https_get(
                    release.service_ip, release.service_port, "/readyz", ca_pem=bundle, server_hostname=SERVICE_HOST
                )
            except OSError:  # not listening yet, or still serving a certificate the bundle does not verify
                return False
            return answer.status == 200

        try:
            wait_for(serving, "the webhook to fill the caBundle and serve verified TLS on its ClusterIP", timeout=60)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- webhook log tail:\n{process.log_tail()}") from None
        running = Running(process=process, serving_seconds=time.monotonic() - t0)
        print(f"\nchart e2e: webhook serving (self mode, caBundle patched) {running.serving_seconds:.2f}s after start")
        yield running
    finally:
        process.cleanup(keep=KEEP)


@pytest.fixture
def team_namespace(release: Installed, core: Any) -> Iterator[str]:
    name = f"psi-chart-team-{uuid.uuid4().hex[:6]}"
    core.create_namespace(namespace_body(name))
    try:
        release.control_plane.wait_for_default_service_account(name)
        yield name
    finally:
        core.delete_namespace(name)


# --------------------------------------------------------------------------- install and self mode


def test_helm_installs_the_chart_into_the_real_apiserver(release: Installed) -> None:
    info = release.helm.info
    assert info["info"]["status"] == "deployed"
    rendered = {(doc["kind"], doc["metadata"]["name"]) for doc in release.helm.manifests}
    for kind in ("Deployment", "Service", "ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding"):
        assert (kind, FULLNAME if kind != "ConfigMap" else POLICY_CONFIGMAP) in rendered
    assert ("MutatingWebhookConfiguration", FULLNAME) in rendered
    assert not release.helm.rendered("Secret"), "self mode: the chart renders no Secret, the webhook makes it"
    # RBAC: a Role (+ binding) in the release namespace, and one per namespace a source lives in.
    for kind in ("Role", "RoleBinding"):
        placed = {(doc["metadata"].get("namespace"), doc["metadata"]["name"]) for doc in release.helm.rendered(kind)}
        assert placed == {
            (RELEASE_NS, FULLNAME),
            (RELEASE_NS, f"{FULLNAME}-sources"),
            (VAULT_NS, f"{FULLNAME}-sources"),
        }, kind

    config = get_json(release.control_plane, WEBHOOK_CONFIG_PATH)
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["service"] == {
        "name": FULLNAME,
        "namespace": RELEASE_NS,
        "path": "/mutate",
        "port": 443,
    }
    assert hook["failurePolicy"] == "Fail"
    # Self mode: nothing to trust at install time; the webhook fills it.
    assert release.ca_bundle_at_install == b""
    # What makes the service reference reachable here (chart_support.py): a loopback ClusterIP.
    assert is_loopback(release.service_ip), release.service_ip
    assert release.service_port == 443


def test_self_mode_fills_the_ca_bundle_by_itself(webhook: Running, release: Installed, core: Any) -> None:
    secret = core.read_namespaced_secret(TLS_SECRET, RELEASE_NS)
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    assert {"ca.crt", "ca.key", "tls.crt", "tls.key"} <= set(data)
    assert (secret.metadata.labels or {}).get(MANAGED_BY) == "pullsecret-injector"

    bundle = ca_bundle(release.control_plane)
    assert bundle, "the caBundle is still empty"
    assert bundle == data["ca.crt"], "the caBundle is not the CA bundle of the Secret"
    serving = certificates(data["tls.crt"])[0]
    serving.verify_directly_issued_by(certificates(bundle)[0])  # raises if not
    san = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert SERVICE_HOST in san.get_values_for_type(x509.DNSName)

    # The live server on the ClusterIP presents that certificate and it verifies for <svc>.<ns>.svc ...
    answer = https_get(release.service_ip, release.service_port, "/readyz", ca_pem=bundle, server_hostname=SERVICE_HOST)
    assert answer.status == 200
    assert x509.load_der_x509_certificate(answer.peer_cert_der) == serving
    # ... and not against any other CA (the verification above is real).
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(
            release.service_ip,
            release.service_port,
            "/readyz",
            ca_pem=release.control_plane.ca_path.read_bytes(),
            server_hostname=SERVICE_HOST,
        )


# --------------------------------------------------------------------------- a Pod gets its secrets


def test_a_pod_gets_its_secrets_through_the_service(
    webhook: Running, release: Installed, core: Any, team_namespace: str
) -> None:
    from kubernetes.client.exceptions import ApiException

    ns = team_namespace

    def mutated_dry_run() -> bool:
        try:
            pod = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, name=None), dry_run="All")
        except ApiException:  # failurePolicy Fail: refused until the apiserver trusts the new caBundle
            return False
        return "example-pull" in pull_secrets(pod)

    t0 = time.monotonic()
    wait_for(mutated_dry_run, "the API server to call the webhook through its Service", timeout=30, interval=0.2)
    print(f"\nchart e2e: API server calls the webhook {time.monotonic() - t0:.2f}s after it was serving")

    pod = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, HARBOR_IMAGE, name=None))
    assert sorted(pull_secrets(pod)) == ["example-pull", "harbor-pull"]

    example = core.read_namespaced_secret("example-pull", ns)
    assert example.type == DOCKERCONFIGJSON
    assert (example.metadata.labels or {}).get(MANAGED_BY) == "pullsecret-injector"
    auths = json.loads(base64.b64decode(example.data[".dockerconfigjson"]))["auths"]
    assert set(auths) == {"registry.example.com"}, "the copy must hold only the rule's registries"
    assert (auths["registry.example.com"]["username"], auths["registry.example.com"]["password"]) == (
        "robot",
        "example-pass",
    )

    harbor = core.read_namespaced_secret("harbor-pull", ns)
    assert harbor.type == DOCKERCONFIGJSON
    entry = json.loads(base64.b64decode(harbor.data[".dockerconfigjson"]))["auths"]["harbor.example.com"]
    assert (entry["username"], entry["password"]) == (HARBOR_USER, HARBOR_TOKEN)


def test_the_release_namespace_is_never_sent_to_the_webhook(webhook: Running, release: Installed, core: Any) -> None:
    """The chart's namespaceSelector excludes its own namespace (by the kubernetes.io/metadata.name label)."""
    release.control_plane.wait_for_default_service_account(RELEASE_NS)
    pod = core.create_namespaced_pod(RELEASE_NS, pod_body(EXAMPLE_IMAGE, name=None), dry_run="All")
    assert pull_secrets(pod) == []


def test_the_service_account_was_enough(webhook: Running, release: Installed, core: Any) -> None:
    """Everything the webhook did, it did with the chart ServiceAccount's token: no request was refused."""
    from kubernetes import client

    cp = release.control_plane
    # Leader election (Role: leases) ran under the Pod's name.
    coordination: Any = client.CoordinationV1Api(release.admin)
    lease = wait_for(
        lambda: _lease_holder(coordination), f"Lease {RELEASE_NS}/{LEASE} held by {webhook.process.pod_name}"
    )
    assert lease == webhook.process.pod_name
    # Self mode wrote its Secret (Role: secrets) and patched the caBundle (ClusterRole: mutatingwebhookconfigurations);
    # the copies below were built from sources read through the per-namespace source Roles only.
    assert core.read_namespaced_secret(TLS_SECRET, RELEASE_NS)
    assert ca_bundle(cp)

    metrics = https_metrics(release)
    errors = {
        line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("pullsecret_injector_secret_errors_total{")
    }
    refused = {
        labels: value for labels, value in errors.items() if value and ("forbidden" in labels or "unauth" in labels)
    }
    assert not refused, f"API calls refused: {refused}"
    assert "pullsecret_injector_ready 1.0" in metrics

    webhook.process.check_alive()
    log = webhook.process.logs().lower()
    for word in ("forbidden", "unauthorized", " 403", " 401"):
        assert word not in log, f"{word.strip()!r} in the webhook log:\n{webhook.process.log_tail()}"


def _lease_holder(coordination: Any) -> str | None:
    from kubernetes.client.exceptions import ApiException

    try:
        lease = coordination.read_namespaced_lease(LEASE, RELEASE_NS)
    except ApiException:
        return None
    holder = lease.spec.holder_identity
    return str(holder) if holder else None


def https_metrics(release: Installed) -> str:
    """GET http://<ClusterIP>:<metrics port>/metrics (the chart's Service port ``metrics``)."""
    import urllib.request

    port = next(int(p["port"]) for p in _service_ports(release) if p["name"] == "metrics")
    with urllib.request.urlopen(f"http://{release.service_ip}:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _service_ports(release: Installed) -> list[dict[str, Any]]:
    service = get_json(release.control_plane, f"/api/v1/namespaces/{RELEASE_NS}/services/{FULLNAME}")
    ports: list[dict[str, Any]] = service["spec"]["ports"]
    return ports


# --------------------------------------------------------------------------- RBAC: real requests, impersonated


@dataclass(frozen=True)
class Probe:
    """One API request made as the ServiceAccount; ``expect`` is the set of acceptable statuses."""

    id: str
    method: str
    path: str
    expect: frozenset[int]
    query: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    content_type: str = "application/json"


REFUSED = frozenset({403})
#: Authorized; 404 still proves authorization (RBAC is checked before the object is looked up).
OK = frozenset({200})
OK_OR_ABSENT = frozenset({200, 404})
CREATED = frozenset({201})
DRY = {"dryRun": "All"}
RBAC_NS = "{rbac}"  # replaced by the module's RBAC namespace


def _by_name(name: str, *, watch: bool = False) -> dict[str, str]:
    query = {"fieldSelector": f"metadata.name={name}"}
    return {**query, "watch": "1", "timeoutSeconds": "1"} if watch else query


def _secret(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque"}


_MERGE = "application/merge-patch+json"
_ANNOTATE = {"metadata": {"annotations": {"e2e.pullsecret-injector.io/probe": "1"}}}

PROBES: list[Probe] = [
    # ---- refused: Secrets the webhook has no business with
    Probe(
        "get helm release secret",
        "GET",
        f"/api/v1/namespaces/{RELEASE_NS}/secrets/sh.helm.release.v1.{RELEASE}.v1",
        REFUSED,
    ),
    Probe("get unrelated secret", "GET", f"/api/v1/namespaces/{RBAC_NS}/secrets/unrelated", REFUSED),
    Probe("get unrelated secret in release ns", "GET", f"/api/v1/namespaces/{RELEASE_NS}/secrets/unrelated", REFUSED),
    Probe("list all secrets", "GET", "/api/v1/secrets", REFUSED),
    Probe("watch all secrets", "GET", "/api/v1/secrets", REFUSED, {"watch": "1", "timeoutSeconds": "1"}),
    Probe("list secrets of a namespace", "GET", f"/api/v1/namespaces/{RBAC_NS}/secrets", REFUSED),
    Probe("list unrelated by name", "GET", "/api/v1/secrets", REFUSED, _by_name("unrelated")),
    Probe("list release secrets", "GET", f"/api/v1/namespaces/{RELEASE_NS}/secrets", REFUSED),
    Probe("tls secret name elsewhere", "GET", f"/api/v1/namespaces/{RBAC_NS}/secrets/{TLS_SECRET}", REFUSED),
    # ---- refused: a source's name outside the namespace the policy names for it
    Probe("source name elsewhere", "GET", f"/api/v1/namespaces/{RBAC_NS}/secrets/registry-credentials", REFUSED),
    Probe(
        "source name in the other source namespace",
        "GET",
        f"/api/v1/namespaces/{VAULT_NS}/secrets/registry-credentials",
        REFUSED,
    ),
    Probe("list a source cluster-wide by name", "GET", "/api/v1/secrets", REFUSED, _by_name("registry-credentials")),
    Probe(
        "watch a source cluster-wide by name", "GET", "/api/v1/secrets", REFUSED, _by_name("harbor-robot", watch=True)
    ),
    # ---- refused: writing what it only reads, deleting what it must keep
    Probe(
        "update source",
        "PUT",
        f"/api/v1/namespaces/{RELEASE_NS}/secrets/registry-credentials",
        REFUSED,
        DRY,
        {**_secret("registry-credentials"), "metadata": {"name": "registry-credentials", "namespace": RELEASE_NS}},
    ),
    Probe(
        "patch source",
        "PATCH",
        f"/api/v1/namespaces/{VAULT_NS}/secrets/harbor-robot",
        REFUSED,
        DRY,
        _ANNOTATE,
        _MERGE,
    ),
    Probe("delete source", "DELETE", f"/api/v1/namespaces/{RELEASE_NS}/secrets/registry-credentials", REFUSED, DRY),
    Probe("delete tls secret", "DELETE", f"/api/v1/namespaces/{RELEASE_NS}/secrets/{TLS_SECRET}", REFUSED, DRY),
    # ---- refused: verbs the code never uses (copies and the Lease are patched, not PUT; Events only created)
    Probe(
        "update a copy (PUT)",
        "PUT",
        f"/api/v1/namespaces/{RBAC_NS}/secrets/example-pull",
        REFUSED,
        DRY,
        {**_secret("example-pull"), "metadata": {"name": "example-pull", "namespace": RBAC_NS}},
    ),
    Probe(
        "patch an event", "PATCH", f"/api/v1/namespaces/{RBAC_NS}/events/psi-probe.1", REFUSED, DRY, _ANNOTATE, _MERGE
    ),
    Probe(
        "update own lease (PUT)",
        "PUT",
        f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{LEASE}",
        REFUSED,
        DRY,
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE}, "spec": {}},
    ),
    Probe(
        "replace the policy configmap (PUT)",
        "PUT",
        f"/api/v1/namespaces/{RELEASE_NS}/configmaps/{POLICY_CONFIGMAP}",
        REFUSED,
        DRY,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": POLICY_CONFIGMAP}, "data": {}},
    ),
    Probe(
        "delete the policy configmap",
        "DELETE",
        f"/api/v1/namespaces/{RELEASE_NS}/configmaps/{POLICY_CONFIGMAP}",
        REFUSED,
        DRY,
    ),
    Probe("list configmaps of the release namespace", "GET", f"/api/v1/namespaces/{RELEASE_NS}/configmaps", REFUSED),
    Probe(
        "patch the tls secret",
        "PATCH",
        f"/api/v1/namespaces/{RELEASE_NS}/secrets/{TLS_SECRET}",
        REFUSED,
        DRY,
        _ANNOTATE,
        _MERGE,
    ),
    Probe(
        "list the tls secret by name", "GET", f"/api/v1/namespaces/{RELEASE_NS}/secrets", REFUSED, _by_name(TLS_SECRET)
    ),
    # ---- refused: other kinds and other objects
    Probe("list pods", "GET", "/api/v1/pods", REFUSED),
    Probe("get configmaps", "GET", f"/api/v1/namespaces/{RBAC_NS}/configmaps", REFUSED),
    Probe("update a namespace", "PATCH", f"/api/v1/namespaces/{RBAC_NS}", REFUSED, DRY, _ANNOTATE, _MERGE),
    Probe(
        "patch another webhook config",
        "PATCH",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/someone-else",
        REFUSED,
        DRY,
        _ANNOTATE,
        _MERGE,
    ),
    Probe("delete own webhook config", "DELETE", WEBHOOK_CONFIG_PATH, REFUSED, DRY),
    Probe(
        "list webhook configs", "GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", REFUSED
    ),
    Probe(
        "delete own lease",
        "DELETE",
        f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{LEASE}",
        REFUSED,
        DRY,
    ),
    Probe("get another lease", "GET", f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/other", REFUSED),
    Probe(
        "bind itself cluster-admin",
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        REFUSED,
        DRY,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "psi-escalate"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NS}],
        },
    ),
    # ---- allowed: what the webhook does
    Probe("get the policy configmap", "GET", f"/api/v1/namespaces/{RELEASE_NS}/configmaps/{POLICY_CONFIGMAP}", OK),
    Probe(
        "watch the policy configmap",
        "GET",
        f"/api/v1/namespaces/{RELEASE_NS}/configmaps",
        OK,
        _by_name(POLICY_CONFIGMAP, watch=True),
    ),
    Probe(
        "annotate the policy configmap",
        "PATCH",
        f"/api/v1/namespaces/{RELEASE_NS}/configmaps/{POLICY_CONFIGMAP}",
        OK,
        DRY,
        _ANNOTATE,
        _MERGE,
    ),
    Probe("get the ledger", "GET", f"/api/v1/namespaces/{RELEASE_NS}/configmaps/{LEDGER}", OK_OR_ABSENT),
    Probe("get source secret", "GET", f"/api/v1/namespaces/{RELEASE_NS}/secrets/registry-credentials", OK),
    Probe(
        "list source by name", "GET", f"/api/v1/namespaces/{RELEASE_NS}/secrets", OK, _by_name("registry-credentials")
    ),
    Probe(
        "watch source by name",
        "GET",
        f"/api/v1/namespaces/{VAULT_NS}/secrets",
        OK,
        _by_name("harbor-robot", watch=True),
    ),
    Probe("list copies cluster-wide by name", "GET", "/api/v1/secrets", OK, _by_name("example-pull")),
    Probe("watch copies cluster-wide by name", "GET", "/api/v1/secrets", OK, _by_name("harbor-pull", watch=True)),
    Probe("create a copy", "POST", f"/api/v1/namespaces/{RBAC_NS}/secrets", CREATED, DRY, _secret("example-pull")),
    Probe("get a copy", "GET", f"/api/v1/namespaces/{RBAC_NS}/secrets/example-pull", OK_OR_ABSENT),
    Probe(
        "patch a copy",
        "PATCH",
        f"/api/v1/namespaces/{RBAC_NS}/secrets/example-pull",
        frozenset({404}),
        DRY,
        _ANNOTATE,
        _MERGE,
    ),
    Probe("delete a copy", "DELETE", f"/api/v1/namespaces/{RBAC_NS}/secrets/harbor-pull", frozenset({404}), DRY),
    Probe("list namespaces", "GET", "/api/v1/namespaces", OK),
    Probe("watch namespaces", "GET", "/api/v1/namespaces", OK, {"watch": "1", "timeoutSeconds": "1"}),
    Probe("get a namespace", "GET", f"/api/v1/namespaces/{RBAC_NS}", OK),
    Probe(
        "create an event",
        "POST",
        f"/api/v1/namespaces/{RBAC_NS}/events",
        CREATED,
        DRY,
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "psi-probe.1"},
            "involvedObject": {"apiVersion": "v1", "kind": "Namespace", "name": RBAC_NS, "namespace": RBAC_NS},
            "reason": "Probe",
            "message": "rbac probe",
            "type": "Normal",
            "source": {"component": "pullsecret-injector"},
        },
    ),
    Probe("get own webhook config", "GET", WEBHOOK_CONFIG_PATH, OK),
    Probe("patch own webhook config", "PATCH", WEBHOOK_CONFIG_PATH, OK, DRY, _ANNOTATE, _MERGE),
    Probe(
        "create a lease",
        "POST",
        f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases",
        CREATED,
        DRY,
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "psi-probe"}, "spec": {}},
    ),
    Probe("get own lease", "GET", f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{LEASE}", OK_OR_ABSENT),
    Probe(
        "create the tls secret",
        "POST",
        f"/api/v1/namespaces/{RELEASE_NS}/secrets",
        CREATED,
        DRY,
        _secret("psi-probe-tls"),
    ),
    Probe("get the tls secret", "GET", f"/api/v1/namespaces/{RELEASE_NS}/secrets/{TLS_SECRET}", OK_OR_ABSENT),
    Probe(
        "update the tls secret (PUT)",
        "PUT",
        f"/api/v1/namespaces/{RELEASE_NS}/secrets/{TLS_SECRET}",
        OK_OR_ABSENT,
        DRY,
        {**_secret(TLS_SECRET), "metadata": {"name": TLS_SECRET, "namespace": RELEASE_NS}},
    ),
    Probe(
        "patch own lease",
        "PATCH",
        f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{LEASE}",
        OK_OR_ABSENT,
        DRY,
        _ANNOTATE,
        _MERGE,
    ),
]


def _fill(value: Any, rbac_ns: str) -> Any:
    if isinstance(value, str):
        return value.replace(RBAC_NS, rbac_ns)
    if isinstance(value, dict):
        return {k: _fill(v, rbac_ns) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, rbac_ns) for v in value]
    return value


@pytest.mark.parametrize("probe", PROBES, ids=[p.id for p in PROBES])
def test_impersonated_service_account(probe: Probe, release: Installed) -> None:
    """A real request as ``system:serviceaccount:<ns>:<sa>``: refused (403) or authorized, as the table says."""
    answer = request_as(
        release.control_plane,
        probe.method,
        _fill(probe.path, release.rbac_namespace),
        user=release.user,
        groups=release.groups,
        query=_fill(dict(probe.query), release.rbac_namespace),
        body=_fill(probe.body, release.rbac_namespace),
        content_type=probe.content_type,
    )
    assert answer.status in probe.expect, f"{probe.method} {probe.path}: {answer.status} {answer.message}"
    if probe.expect == REFUSED:
        assert release.user in answer.message  # refused for this user, by the authorizer


def test_impersonation_is_the_service_account(release: Installed) -> None:
    """Control: the same request as the admin itself succeeds, so the 403s above are the ServiceAccount's."""
    status, _ = release.control_plane.get(f"/api/v1/namespaces/{release.rbac_namespace}/secrets/unrelated")
    assert status == 200


# --------------------------------------------------------------------------- RBAC: every grant, reviewed

_MWC = ("admissionregistration.k8s.io", "mutatingwebhookconfigurations")
#: Where each source lives (the Role granting it is there, and only there).
SOURCE_NAMESPACES: dict[str, str] = {"registry-credentials": RELEASE_NS, "harbor-robot": VAULT_NS}
#: Every (scope, apiGroup, resource, verb, resourceName or "*") the webhook's code calls, and why
#: (webhook/kube.py KubeApi, called from sync.py and selfcert.py). scope: CLUSTER (ClusterRole)
#: or the namespace of a Role. The chart must grant exactly these: nothing missing, nothing more.
NEEDED: dict[Grant, str] = {
    (CLUSTER, "", "secrets", "create", "*"): "create a rule's Secret in a Pod's namespace",
    **{
        (CLUSTER, "", "secrets", verb, name): f"copies: {why}"
        for name in TARGET_SECRETS
        for verb, why in (
            ("get", "read one the watch has not shown yet"),
            ("list", "cluster-wide by-name ListWatch"),
            ("watch", "cluster-wide by-name ListWatch"),
            ("patch", "refresh from the source (resourceVersion-guarded)"),
            ("delete", "--cleanup of copies no rule allows; replace a copy of the wrong type"),
        )
    },
    **{
        (namespace, "", "secrets", verb, name): "sources: by-name ListWatch in their namespace, GET fallback"
        for name, namespace in SOURCE_NAMESPACES.items()
        for verb in ("get", "list", "watch")
    },
    **{(CLUSTER, "", "namespaces", verb, "*"): "namespace labels (selectors)" for verb in ("get", "list", "watch")},
    (CLUSTER, "", "events", "create", "*"): "Events for sync failures",
    (CLUSTER, *_MWC, "get", FULLNAME): "self mode: read the caBundle the API server trusts",
    (CLUSTER, *_MWC, "patch", FULLNAME): "self mode: write the caBundle (JSON patch)",
    (RELEASE_NS, "coordination.k8s.io", "leases", "create", "*"): "leader election: first start",
    (RELEASE_NS, "coordination.k8s.io", "leases", "get", LEASE): "leader election",
    (RELEASE_NS, "coordination.k8s.io", "leases", "patch", LEASE): "leader election: renew, take over, release",
    (RELEASE_NS, "", "secrets", "create", "*"): "self mode: create the certificate Secret (even with no rules)",
    (RELEASE_NS, "", "secrets", "get", TLS_SECRET): "self mode: read the certificate Secret",
    (RELEASE_NS, "", "secrets", "update", TLS_SECRET): "self mode: replace it with its resourceVersion (renewal)",
    **{
        (RELEASE_NS, "", "configmaps", verb, POLICY_CONFIGMAP): "the policy: get, by-name watch, status annotations"
        for verb in ("get", "list", "watch", "patch")
    },
    (RELEASE_NS, "", "configmaps", "create", "*"): "the ownership ledger: created by the first replica",
    **{
        (RELEASE_NS, "", "configmaps", verb, LEDGER): "the ownership ledger: read, watched, patched by name"
        for verb in ("get", "list", "watch", "patch")
    },
}
#: Grants earlier versions of the chart made although no code path calls them (the RBAC
#: findings of this test, fixed in the chart). Each must now be denied.
REMOVED: dict[Grant, str] = {
    **{(CLUSTER, "", "secrets", "update", name): "copies are PATCHed, never PUT" for name in TARGET_SECRETS},
    (CLUSTER, "", "events", "patch", "*"): "Events are only created",
    (RELEASE_NS, "coordination.k8s.io", "leases", "update", LEASE): "the Lease is PATCHed, never PUT",
    **{
        (RELEASE_NS, "", "configmaps", verb, POLICY_CONFIGMAP): "the policy's data is the user's: never PUT or deleted"
        for verb in ("update", "delete")
    },
    **{
        (RELEASE_NS, "", "secrets", verb, TLS_SECRET): "selfcert uses get, create and update (PUT) only"
        for verb in ("list", "watch", "patch")
    },
    **{
        (CLUSTER, "", "secrets", verb, name): "sources are read in their own namespace only"
        for name in SOURCE_SECRETS
        for verb in ("get", "list", "watch")
    },
}


def _live_grants(release: Installed) -> set[Grant]:
    return {grant for role in release_rbac(release.control_plane, RELEASE) for grant in role_grants(role)}


def test_the_chart_grants_exactly_what_the_webhook_uses(release: Installed) -> None:
    granted = _live_grants(release)
    unreviewed = granted - set(NEEDED)
    assert not unreviewed, f"the chart grants permissions no code path uses: {sorted(unreviewed)}"
    missing = set(NEEDED) - granted
    assert not missing, f"the webhook needs permissions the chart does not grant: {sorted(missing)}"
    assert not set(REMOVED) & granted


def test_source_roles_live_in_the_source_namespaces(release: Installed) -> None:
    """One Role + RoleBinding ``<fullname>-sources`` per source namespace, bound to the ServiceAccount."""
    cp = release.control_plane
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces"
    for namespace in sorted(set(SOURCE_NAMESPACES.values())):
        role = get_json(cp, f"{rbac}/{namespace}/roles/{FULLNAME}-sources")
        names = sorted(name for name, ns in SOURCE_NAMESPACES.items() if ns == namespace)
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": names, "verbs": ["get", "list", "watch"]}
        ]
        binding = get_json(cp, f"{rbac}/{namespace}/rolebindings/{FULLNAME}-sources")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": f"{FULLNAME}-sources",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": release.service_account, "namespace": RELEASE_NS}
        ]
    assert cp.get(f"{rbac}/{release.rbac_namespace}/roles/{FULLNAME}-sources")[0] == 404


def _review_rows(release: Installed) -> list[tuple[str, bool, dict[str, str]]]:
    """(why, expected allowed, SAR attributes): each needed grant, and its nearest neighbours that must be denied."""
    rbac_ns = release.rbac_namespace
    rows: list[tuple[str, bool, dict[str, str]]] = []

    def attributes(grant: Grant) -> dict[str, str]:
        scope, group, resource, verb, name = grant
        namespace = rbac_ns if scope == CLUSTER else scope
        if resource in ("mutatingwebhookconfigurations", "namespaces"):
            namespace = ""
        attrs = {"group": group, "resource": resource, "verb": verb, "namespace": namespace}
        if name != "*":
            attrs["name"] = name
        return attrs

    for grant, why in NEEDED.items():
        scope, group, resource, verb, name = grant
        attrs = attributes(grant)
        rows.append((why, True, attrs))
        if name != "*":
            rows.append((f"{why}: only that name", False, {**attrs, "name": "unrelated"}))
        if scope != CLUSTER and (CLUSTER, group, resource, verb, "*") not in NEEDED:
            rows.append((f"{why}: only in {scope}", False, {**attrs, "namespace": rbac_ns}))
            rows += [
                (f"{why}: not in the other source namespace {other}", False, {**attrs, "namespace": other})
                for other in sorted(set(SOURCE_NAMESPACES.values()) - {scope})
                if (other, group, resource, verb, name) not in NEEDED
            ]
    for grant, why in REMOVED.items():
        rows.append((f"removed: {why}", False, attributes(grant)))
    rows += [
        ("no Secret list without a name", False, {"group": "", "resource": "secrets", "verb": "list", "namespace": ""}),
        (
            "no Secret get without a name",
            False,
            {"group": "", "resource": "secrets", "verb": "get", "namespace": rbac_ns},
        ),
        (
            "no Helm release Secret",
            False,
            {
                "group": "",
                "resource": "secrets",
                "verb": "get",
                "namespace": RELEASE_NS,
                "name": f"sh.helm.release.v1.{RELEASE}.v1",
            },
        ),
        *[
            (
                f"sources are read-only ({verb})",
                False,
                {"group": "", "resource": "secrets", "verb": verb, "namespace": namespace, "name": name},
            )
            for name, namespace in SOURCE_NAMESPACES.items()
            for verb in ("update", "patch", "delete")
        ],
        *[
            (
                f"no source read cluster-wide ({verb} {name})",
                False,
                {"group": "", "resource": "secrets", "verb": verb, "namespace": "", "name": name},
            )
            for name in SOURCE_SECRETS
            for verb in ("list", "watch")
        ],
        (
            "never deletes its webhook configuration",
            False,
            {
                "group": "admissionregistration.k8s.io",
                "resource": "mutatingwebhookconfigurations",
                "verb": "delete",
                "name": FULLNAME,
            },
        ),
        ("no Pods", False, {"group": "", "resource": "pods", "verb": "list", "namespace": rbac_ns}),
        ("no ConfigMaps", False, {"group": "", "resource": "configmaps", "verb": "list", "namespace": RELEASE_NS}),
    ]
    return rows


def test_subject_access_review_table(release: Installed) -> None:
    """The authorizer's answer for each needed permission (allowed) and its neighbours (denied)."""
    wrong: list[str] = []
    for why, expected, attrs in _review_rows(release):
        allowed, reason = subject_access_review(
            release.admin,
            user=release.user,
            groups=release.groups,
            verb=attrs["verb"],
            resource=attrs["resource"],
            group=attrs["group"],
            namespace=attrs.get("namespace") or None,
            name=attrs.get("name"),
        )
        if allowed != expected:
            wrong.append(f"{why}: {attrs} -> allowed={allowed} (expected {expected}) {reason}")
    assert not wrong, "\n".join(wrong)


def test_source_secrets_are_readable_only_in_their_own_namespace(release: Installed) -> None:
    """A source name is granted by a Role in the namespace the policy names for it, not cluster-wide."""

    def allowed(name: str, namespace: str) -> bool:
        result, _ = subject_access_review(
            release.admin,
            user=release.user,
            groups=release.groups,
            verb="get",
            resource="secrets",
            namespace=namespace,
            name=name,
        )
        return result

    for name, home in SOURCE_NAMESPACES.items():
        assert allowed(name, home), f"{name} must be readable in {home}"
        for elsewhere in sorted({release.rbac_namespace, *SOURCE_NAMESPACES.values()} - {home}):
            assert not allowed(name, elsewhere), f"{name} is readable in {elsewhere}, where no source lives"


# --------------------------------------------------------------------------- upgrade


@pytest.mark.parametrize("server_side_apply", ["auto", True], ids=["client-side-apply", "server-side-apply"])
def test_helm_upgrade_keeps_the_runtime_ca_bundle(
    server_side_apply: bool | str, webhook: Running, release: Installed, core: Any, team_namespace: str
) -> None:
    """The chart re-renders the live caBundle (``lookup``): an upgrade must not wipe what the webhook patched."""
    cp = release.control_plane
    before = ca_bundle(cp)
    assert before
    upgraded = release.helm.upgrade(server_side_apply=server_side_apply)
    assert upgraded["info"]["status"] == "deployed"
    assert ca_bundle(cp) == before
    # ... and the API server still calls the webhook, still trusting it.
    pod = core.create_namespaced_pod(team_namespace, pod_body(EXAMPLE_IMAGE, name=None), dry_run="All")
    assert pull_secrets(pod) == ["example-pull"]


# --------------------------------------------------------------------------- uninstall (last)


def test_helm_uninstall_leaves_no_webhook_configuration(release: Installed, core: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    cp = release.control_plane
    tls_secret_path = f"/api/v1/namespaces/{RELEASE_NS}/secrets/{TLS_SECRET}"
    had_tls_secret = cp.get(tls_secret_path)[0] == 200
    release.helm.uninstall()
    wait_for(lambda: cp.get(WEBHOOK_CONFIG_PATH)[0] == 404, "the MutatingWebhookConfiguration to be deleted")
    for path in (
        f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{FULLNAME}",
        f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{FULLNAME}",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{RELEASE_NS}/roles/{FULLNAME}",
        *[
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{kind}/{FULLNAME}-sources"
            for ns in (RELEASE_NS, VAULT_NS)
            for kind in ("roles", "rolebindings")
        ],
        f"/api/v1/namespaces/{RELEASE_NS}/services/{FULLNAME}",
        f"/apis/apps/v1/namespaces/{RELEASE_NS}/deployments/{FULLNAME}",
    ):
        assert cp.get(path)[0] == 404, f"{path} survived helm uninstall"
    # A webhook still running (this module's, if it started) does not bring the configuration back:
    # self mode only ever patches it (and its ServiceAccount is gone with the release).
    time.sleep(3)
    status, _ = cp.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations")
    assert status == 200
    names = [
        item["metadata"]["name"]
        for item in get_json(cp, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations")["items"]
    ]
    assert names == [], names
    # The runtime Secret of self mode is not a release resource: it stays, as the chart README says.
    if had_tls_secret:
        assert cp.get(tls_secret_path)[0] == 200
    # With failurePolicy Fail, a leftover configuration would block every Pod: Pods are admitted again.
    ns = f"psi-chart-after-{uuid.uuid4().hex[:6]}"
    core.create_namespace(namespace_body(ns))
    try:
        cp.wait_for_default_service_account(ns)
        try:
            pod = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, name=None), dry_run="All")
        except ApiException as exc:
            pytest.fail(f"Pod refused after helm uninstall: {exc.status} {exc.reason}")
        assert pull_secrets(pod) == []
    finally:
        core.delete_namespace(ns)
