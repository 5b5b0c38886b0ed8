"""Acceptance (issue 11): the policy ConfigMap as the live control surface, on the real API server.

The chart is installed by real Helm; the webhook runs as the chart's Deployment runs it
(its rendered args: ``--policy-configmap``, no policy file) with the chart
ServiceAccount's token, so every call is authorized by the chart's RBAC alone (see
chart_support.py for the rest of the harness). In file order:

1. an edit applied to the ConfigMap (a PATCH of its data, what ``kubectl apply`` sends)
   adding a rule RBAC covers is effective within 2 s of the apply: a Pod gets the
   reference and the Secret exists;
2. a rule RBAC does not cover is rejected whole: the last good policy keeps serving, and
   the status annotation and an Event on the ConfigMap name the missing permission and
   the chart value that grants it;
3. with ``rbac.secretAccess: clusterWide`` the same edit works; back to ``byName``, the
   chart keeps RBAC for the names the ledger still lists until cleanup is done;
4. copies in 3 namespaces, webhook stopped, rule removed by hand, webhook started: the
   copies are gone within 30 s;
5. the same through ``helm upgrade`` removing the rule (the ClusterRole keeps the name
   through ``lookup`` of the ledger until its copies are gone);
6. a Pod admitted while its source is missing, the admitting replica SIGKILLed, the source
   created: the copy appears through the other replica within 10 s.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests import builders
from tests.builders import b64, pull_secrets, wait_for
from tests.processes import free_port

from .chart_support import (
    DeploymentProcess,
    HelmRelease,
    chart_copy,
    container_args,
    https_get,
    loopback_control_plane,
    namespace_body,
    service_account_token,
    service_account_user,
    webhook_ca_bundle,
    write_token_kubeconfig,
)
from .cluster import core_api
from .conftest import require_assets
from .controlplane import KEEP, ControlPlane
from .process import REPO

RELEASE = "psl"
FULLNAME = "psl-pullsecret-injector"
RELEASE_NS = "psl-system"
SERVICE_HOST = f"{FULLNAME}.{RELEASE_NS}.svc"
POLICY_CONFIGMAP = f"{FULLNAME}-policy"
LEDGER = f"{FULLNAME}-ledger"
WEBHOOK_CONFIG_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{FULLNAME}"
MANAGED_BY = "app.kubernetes.io/managed-by"
DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
STATUS = "pullsecret-injector.io/status"
VERSION = "pullsecret-injector.io/version"
MESSAGE = "pullsecret-injector.io/message"

SOURCE = {"secret": {"namespace": RELEASE_NS, "name": "registry-credentials"}}
EXCLUDES = ["kube-system", "kube-public", "kube-node-lease"]


def rule(name: str, secret: str, source: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "registries": [f"{name}.example.com"],
        "secret": secret,
        "source": source or SOURCE,
    }


EXAMPLE = rule("example", "example-pull")
LATE = rule("late", "late-pull")  # its name is in rbac.extraSecretNames: covered
DENIED = rule("denied", "denied-pull")  # its name is not: rejected until granted
TRIO = rule("trio", "trio-pull")
DUO = rule("duo", "duo-pull")
ORPHAN = rule("orphan", "orphan-pull", {"secret": {"namespace": RELEASE_NS, "name": "orphan-credentials"}})

VALUES: dict[str, Any] = {
    "replicaCount": 1,
    "podDisruptionBudget": {"enabled": False},
    "certificates": {"mode": "self"},
    "webhook": {"failurePolicy": "Fail"},
    "rbac": {
        "extraSecretNames": ["late-pull", "trio-pull", "orphan-pull"],
        "extraSourceSecrets": [{"namespace": RELEASE_NS, "name": "orphan-credentials"}],
    },
    "policy": {"excludeNamespaces": EXCLUDES, "rules": [EXAMPLE]},
}


def image(r: dict[str, Any]) -> str:
    return f"{r['registries'][0]}/team/app:1.0"


def policy_text(rules: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"excludeNamespaces": EXCLUDES, "rules": rules}, sort_keys=False)


def pod_body(*images: str) -> dict[str, Any]:
    return builders.pod_body(*images, name=None, generate_name="live-e2e-")


def ca_bundle(control_plane: ControlPlane) -> bytes:
    return webhook_ca_bundle(control_plane, FULLNAME)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Cluster:
    control_plane: ControlPlane
    admin: Any
    core: Any
    helm: HelmRelease
    service_ip: str
    kubeconfig: Any
    pod_name: str
    args: list[str]
    workdir: Any
    replicas: list[DeploymentProcess] = field(default_factory=list)
    a: DeploymentProcess | None = None

    def deployment_args(self) -> list[str]:
        from kubernetes import client

        apps: Any = client.AppsV1Api(self.admin)
        deployment = self.admin.sanitize_for_serialization(apps.read_namespaced_deployment(FULLNAME, RELEASE_NS))
        return container_args(deployment)

    def start(self, name: str, *, host: str | None = None, port: int = 443, **overrides: str) -> DeploymentProcess:
        process = DeploymentProcess(
            args=self.deployment_args(),
            policy_yaml="",
            host=host or self.service_ip,
            port=port,
            kubeconfig=self.kubeconfig,
            pod_name=name,
            pod_namespace=RELEASE_NS,
            workdir=self.workdir / f"{name}-{uuid.uuid4().hex[:4]}",
            extra_overrides=overrides,
        )
        process.start()
        self.replicas.append(process)

        def serving() -> bool:
            process.check_alive()
            bundle = ca_bundle(self.control_plane)
            if not bundle:
                return False
            try:
                answer = https_get(process.host, process.port, "/readyz", ca_pem=bundle, server_hostname=SERVICE_HOST)
            except OSError:
                return False
            return answer.status == 200

        try:
            wait_for(serving, f"replica {name} to serve", timeout=60, interval=0.1)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{process.log_tail()}") from None
        return process

    def start_a(self) -> DeploymentProcess:
        self.a = self.start(f"{FULLNAME}-a-{uuid.uuid4().hex[:4]}")
        return self.a

    # the ConfigMap, as a user sees it ----------------------------------------------------

    def apply_policy(self, rules: list[dict[str, Any]]) -> str:
        """What ``kubectl apply`` of the edited ConfigMap sends: a patch of its data. Returns the text."""
        text = policy_text(rules)
        self.core.patch_namespaced_config_map(POLICY_CONFIGMAP, RELEASE_NS, {"data": {"policy.yaml": text}})
        return text

    def annotations(self) -> dict[str, str]:
        cm = self.core.read_namespaced_config_map(POLICY_CONFIGMAP, RELEASE_NS)
        return dict(cm.metadata.annotations or {})

    def ledger(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            cm = self.core.read_namespaced_config_map(LEDGER, RELEASE_NS)
        except ApiException:
            return {}
        return {
            key: json.loads(value) for key, value in (cm.data or {}).items() if key in ("copies", "pending", "names")
        }

    def events(self, reason: str) -> list[Any]:
        items = self.core.list_namespaced_event(RELEASE_NS).items
        return [e for e in items if e.involved_object.name == POLICY_CONFIGMAP and e.reason == reason]

    def cluster_role_names(self) -> set[str]:
        from kubernetes import client

        rbac: Any = client.RbacAuthorizationV1Api(self.admin)
        role = rbac.read_cluster_role(FULLNAME)
        return {n for r in role.rules if "secrets" in r.resources for n in (r.resource_names or [])}

    def upgrade(self, values: dict[str, Any]) -> None:
        self.helm.values = values
        self.helm.upgrade()

    def namespace(self) -> str:
        name = f"psl-team-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(namespace_body(name))
        self.control_plane.wait_for_default_service_account(name)
        return name

    def copies(self, name: str) -> set[str]:
        items = self.core.list_secret_for_all_namespaces(field_selector=f"metadata.name={name}").items
        return {
            s.metadata.namespace for s in items if (s.metadata.labels or {}).get(MANAGED_BY) == "pullsecret-injector"
        }

    def wait_served(self, r: dict[str, Any], ns: str, *, timeout: float = 15.0) -> float:
        """Seconds until a dry-run Pod with ``r``'s image gets its secret."""
        from kubernetes.client.exceptions import ApiException

        t0 = time.monotonic()

        def injected() -> bool:
            try:
                pod = self.core.create_namespaced_pod(ns, pod_body(image(r)), dry_run="All")
            except ApiException:
                return False
            return r["secret"] in pull_secrets(pod)

        wait_for(injected, f"rule {r['name']} served", timeout=timeout, interval=0.05)
        return time.monotonic() - t0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with loopback_control_plane(require_assets()) as cp, cp.admin_client() as admin:
        yield from _installed(cp, admin, tmp_path_factory)


def _installed(cp: ControlPlane, admin: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    core = core_api(admin)
    helm: HelmRelease | None = None
    found: Cluster | None = None
    try:
        core.create_namespace(namespace_body(RELEASE_NS))
        auths = {
            "auths": {
                f"{n}.example.com": {"auth": b64("robot:pass")} for n in ("example", "late", "denied", "trio", "duo")
            }
        }
        core.create_namespaced_secret(
            RELEASE_NS,
            {
                "metadata": {"name": "registry-credentials"},
                "type": DOCKERCONFIGJSON,
                "data": {".dockerconfigjson": b64(json.dumps(auths))},
            },
        )
        chart_dir = chart_copy(tmp_path_factory.mktemp("chart") / "pullsecret-injector")
        helm = HelmRelease(cp, RELEASE, RELEASE_NS, chart_dir, copy.deepcopy(VALUES))
        helm.install()
        service = core.read_namespaced_service(FULLNAME, RELEASE_NS)
        workdir = tmp_path_factory.mktemp("live")
        user = service_account_user(RELEASE_NS, FULLNAME)
        token = service_account_token(core, RELEASE_NS, FULLNAME)
        kubeconfig = write_token_kubeconfig(workdir / "sa.kubeconfig", cp, user=user, token=token)
        found = Cluster(
            control_plane=cp,
            admin=admin,
            core=core,
            helm=helm,
            service_ip=str(service.spec.cluster_ip),
            kubeconfig=kubeconfig,
            pod_name=f"{FULLNAME}-a",
            args=[],
            workdir=workdir,
        )
        found.start_a()
        yield found
    finally:
        if found is not None:
            for process in found.replicas:
                if process.running:
                    print(f"\n--- {process.pod_name} log tail:\n{process.log_tail(15)}")
                process.cleanup(keep=KEEP)
        if helm is not None:
            helm.uninstall_at_teardown()


# --------------------------------------------------------------------------- 1. effective within 2 s


def test_an_applied_edit_is_effective_within_two_seconds(cluster: Cluster) -> None:
    ns = cluster.namespace()
    cluster.wait_served(EXAMPLE, ns, timeout=30)  # the API server trusts the webhook
    t0 = time.monotonic()
    cluster.apply_policy([EXAMPLE, LATE])
    injected = cluster.wait_served(LATE, ns, timeout=10)
    pod = cluster.core.create_namespaced_pod(ns, pod_body(image(LATE)))
    secret = cluster.core.read_namespaced_secret("late-pull", ns)
    effective = time.monotonic() - t0
    print(f"\nlive policy: rule injected {injected:.3f}s after the apply; Pod + Secret {effective:.3f}s")
    assert pull_secrets(pod) == ["late-pull"]
    assert secret.type == DOCKERCONFIGJSON
    assert effective < 2.0, f"effective {effective:.2f}s after the apply"

    # the status a user reads, written by the leader
    def accepted() -> dict[str, str] | None:
        annotations = cluster.annotations()
        return annotations if annotations.get(STATUS) == "Accepted" else None

    status = wait_for(accepted, "the status annotation to say Accepted")
    assert "(resourceVersion " in status[VERSION]
    assert status["pullsecret-injector.io/serving"] == status[VERSION].split(" ")[0]


# --------------------------------------------------------------------------- 2. rejected, last good serving


def test_a_rule_rbac_does_not_cover_is_rejected_and_the_last_good_one_serves(cluster: Cluster) -> None:
    ns = cluster.namespace()
    serving_before = cluster.annotations()["pullsecret-injector.io/serving"]
    t0 = time.monotonic()
    cluster.apply_policy([EXAMPLE, LATE, DENIED])

    def rejected() -> dict[str, str] | None:
        annotations = cluster.annotations()
        return annotations if annotations.get(STATUS) == "Rejected" else None

    status = wait_for(rejected, "the status annotation to say Rejected", timeout=20)
    print(f"\nlive policy: rejection visible on the ConfigMap {time.monotonic() - t0:.2f}s after the apply")
    assert "denied-pull" in status[MESSAGE], status[MESSAGE]
    assert "rbac.extraSecretNames" in status[MESSAGE], status[MESSAGE]
    assert "rbac.secretAccess: clusterWide" in status[MESSAGE]
    assert status["pullsecret-injector.io/serving"] == serving_before
    (event,) = wait_for(lambda: cluster.events("PolicyRejected"), "a PolicyRejected Event on the ConfigMap")
    assert event.type == "Warning"
    assert "denied-pull" in event.message, event.message
    assert "rbac.extraSecretNames" in event.message, event.message
    # the last good policy keeps serving, the rejected rule does not
    assert cluster.wait_served(LATE, ns) < 1.0
    pod = cluster.core.create_namespaced_pod(ns, pod_body(image(DENIED)), dry_run="All")
    assert pull_secrets(pod) == []
    assert cluster.copies("denied-pull") == set()


def test_a_replica_started_while_the_configmap_is_rejected_serves_the_last_good_one(cluster: Cluster) -> None:
    """The last accepted policy is in the ledger: a restart does not fall back to nothing (or crash)."""
    assert cluster.annotations()[STATUS] == "Rejected"  # left so by the previous test
    assert cluster.a is not None
    assert cluster.a.stop() == 0
    cluster.start_a()
    ns = cluster.namespace()
    assert cluster.wait_served(LATE, ns) < 1.0  # the last good policy, from the ledger
    pod = cluster.core.create_namespaced_pod(ns, pod_body(image(DENIED)), dry_run="All")
    assert pull_secrets(pod) == []
    assert cluster.annotations()[STATUS] == "Rejected"
    assert "serving the last good one" in cluster.a.logs()


def _validate(cluster: Cluster, rules: list[dict[str, Any]], *extra: str) -> subprocess.CompletedProcess[str]:
    path = cluster.workdir / f"policy-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(policy_text(rules))
    argv = [sys.executable, "-m", "webhook", "validate", str(path), "--cluster", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def test_validate_cluster_runs_the_same_preflight_from_a_laptop(cluster: Cluster) -> None:
    sa = service_account_user(RELEASE_NS, FULLNAME)
    admin = str(cluster.control_plane.kubeconfig_path)
    # as the admin, about the webhook's ServiceAccount (SubjectAccessReview)
    denied = _validate(cluster, [EXAMPLE, DENIED], "--kubeconfig", admin, "--as", sa)
    assert denied.returncode == 2, denied.stdout + denied.stderr
    assert "denied-pull" in denied.stderr
    assert "rbac.extraSecretNames" in denied.stderr
    fine = _validate(cluster, [EXAMPLE, LATE], "--kubeconfig", admin, "--as", sa)
    assert fine.returncode == 0, fine.stdout + fine.stderr
    # with the ServiceAccount's own credentials (SelfSubjectAccessReview, what a replica asks)
    own = _validate(cluster, [EXAMPLE, DENIED], "--kubeconfig", str(cluster.kubeconfig))
    assert own.returncode == 2, own.stdout + own.stderr
    assert "denied-pull" in own.stderr


# --------------------------------------------------------------------------- 3. clusterWide


def test_with_cluster_wide_secret_access_the_same_edit_works(cluster: Cluster) -> None:
    ns = cluster.namespace()
    wide = copy.deepcopy(VALUES)
    wide["rbac"]["secretAccess"] = "clusterWide"
    cluster.upgrade(wide)  # (renders the ConfigMap from the values again: the hand edit is reverted)
    t0 = time.monotonic()
    cluster.apply_policy([EXAMPLE, LATE, DENIED])
    cluster.wait_served(DENIED, ns, timeout=10)
    pod = cluster.core.create_namespaced_pod(ns, pod_body(image(DENIED)))
    assert pull_secrets(pod) == ["denied-pull"]
    assert cluster.core.read_namespaced_secret("denied-pull", ns).type == DOCKERCONFIGJSON
    print(f"\nlive policy: clusterWide, the same edit effective {time.monotonic() - t0:.2f}s after the apply")
    wait_for(lambda: cluster.annotations().get(STATUS) == "Accepted", "the status to say Accepted")
    wait_for(lambda: cluster.events("PolicyAccepted"), "a PolicyAccepted Event")
    wait_for(lambda: "denied-pull" in cluster.ledger().get("names", []), "the ledger to list denied-pull")

    # Back to least privilege: the ConfigMap reverts to the values (no denied rule), and the
    # ClusterRole keeps denied-pull (from the ledger) until the webhook has deleted its copy.
    cluster.upgrade(copy.deepcopy(VALUES))
    assert "denied-pull" in cluster.cluster_role_names()
    t1 = time.monotonic()
    wait_for(lambda: not cluster.copies("denied-pull"), "the denied-pull copy to be cleaned up", timeout=30)
    wait_for(lambda: "denied-pull" not in cluster.ledger().get("names", []), "the ledger to drop denied-pull")
    print(f"\nlive policy: copy of the removed rule cleaned up {time.monotonic() - t1:.2f}s after helm upgrade")
    cluster.upgrade(copy.deepcopy(VALUES))
    assert "denied-pull" not in cluster.cluster_role_names()


# --------------------------------------------------------------------------- 4. and 5. cleanup after restart


def _copies_in_three_namespaces(cluster: Cluster, r: dict[str, Any]) -> list[str]:
    namespaces = [cluster.namespace() for _ in range(3)]
    cluster.wait_served(r, namespaces[0], timeout=15)
    for ns in namespaces:
        pod = cluster.core.create_namespaced_pod(ns, pod_body(image(r)))
        assert r["secret"] in pull_secrets(pod)
    assert cluster.copies(r["secret"]) >= set(namespaces)
    wait_for(
        lambda: set(cluster.ledger().get("copies", {}).get(r["secret"], [])) >= set(namespaces),
        "the ledger to list the copies",
    )
    return namespaces


def _restart_and_time_cleanup(cluster: Cluster, secret: str) -> float:
    t0 = time.monotonic()
    cluster.start_a()
    serving = time.monotonic() - t0
    wait_for(lambda: not cluster.copies(secret), f"the {secret} copies to be deleted after the restart", timeout=30)
    took = time.monotonic() - t0
    print(
        f"\nlive policy: restarted replica serving after {serving:.2f}s, "
        f"{secret} copies gone {took - serving:.2f}s later"
    )
    wait_for(lambda: secret not in cluster.ledger().get("names", []), "the ledger to drop the name")
    return took


def test_copies_of_a_rule_removed_while_stopped_are_gone_after_start(cluster: Cluster) -> None:
    cluster.apply_policy([EXAMPLE, TRIO])
    _copies_in_three_namespaces(cluster, TRIO)
    assert cluster.a is not None
    assert cluster.a.stop() == 0
    cluster.apply_policy([EXAMPLE])  # the rule removed by hand while no replica runs
    took = _restart_and_time_cleanup(cluster, "trio-pull")
    print(f"\nlive policy: 3 copies of a rule removed while stopped deleted {took:.2f}s after the start")
    assert took < 30


def test_the_same_through_helm_upgrade_removing_the_rule(cluster: Cluster) -> None:
    with_duo = copy.deepcopy(VALUES)
    with_duo["policy"]["rules"] = [EXAMPLE, DUO]
    cluster.upgrade(with_duo)
    _copies_in_three_namespaces(cluster, DUO)
    assert cluster.a is not None
    assert cluster.a.stop() == 0
    cluster.upgrade(copy.deepcopy(VALUES))  # the rule (and its name in the values) removed
    assert "duo-pull" in cluster.cluster_role_names(), "lookup of the ledger keeps the name deletable"
    took = _restart_and_time_cleanup(cluster, "duo-pull")
    print(f"\nlive policy: 3 copies of a rule removed by helm upgrade deleted {took:.2f}s after the start")
    assert took < 30
    cluster.upgrade(copy.deepcopy(VALUES))
    assert "duo-pull" not in cluster.cluster_role_names(), "cleanup done: the next upgrade drops the name"


# --------------------------------------------------------------------------- 6. handoff across SIGKILL


def _metric(process: DeploymentProcess, port: int, host: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = str(resp.read().decode())
    return next((line for line in text.splitlines() if line.startswith("pullsecret_injector_policy_info{")), "")


def test_work_owed_by_a_killed_replica_is_finished_by_the_other(cluster: Cluster) -> None:
    a = cluster.a
    assert a is not None
    assert a.running
    b_port, b_metrics = free_port(), free_port()
    b = cluster.start(f"{FULLNAME}-b", host="127.0.0.1", port=b_port, **{"--metrics-port": str(b_metrics)})
    ns = cluster.namespace()
    cluster.apply_policy([EXAMPLE, ORPHAN])
    cluster.wait_served(ORPHAN, ns)
    # every replica serves the same accepted version
    a_metrics = int(next(x for x in a.argv() if x.startswith("--metrics-port=")).split("=", 1)[1])

    def same_version() -> str | None:
        va, vb = _metric(a, a_metrics, cluster.service_ip), _metric(b, b_metrics, "127.0.0.1")
        return va if va and va == vb and 'state="Accepted"' in va else None

    print(f"\nlive policy: both replicas: {wait_for(same_version, 'both replicas on the same version', timeout=10)}")

    pod = cluster.core.create_namespaced_pod(ns, pod_body(image(ORPHAN)))  # admitted by A, the source is missing
    assert pull_secrets(pod) == ["orphan-pull"]
    assert cluster.copies("orphan-pull") == set()
    # durable before the admission was answered: the ledger holds the debt at once
    assert [ns, "orphan-pull"] in cluster.ledger().get("pending", []), cluster.ledger()
    a.kill()
    t0 = time.monotonic()
    cluster.core.create_namespaced_secret(
        RELEASE_NS,
        {
            "metadata": {"name": "orphan-credentials"},
            "type": DOCKERCONFIGJSON,
            "data": {".dockerconfigjson": b64(json.dumps({"auths": {"orphan.example.com": {"auth": b64("o:p")}}}))},
        },
    )
    wait_for(
        lambda: ns in cluster.copies("orphan-pull"), "the copy through the other replica", timeout=10, interval=0.05
    )
    took = time.monotonic() - t0
    print(f"\nlive policy: copy made by the surviving replica {took:.2f}s after the source was created")
    assert took < 10
    b.check_alive()
    wait_for(lambda: [ns, "orphan-pull"] not in cluster.ledger().get("pending", []), "the debt settled")
