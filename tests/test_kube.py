"""The Kubernetes side against an API emulator on loopback, through the real ``kubernetes`` client.

Every test drives the real pieces: the admission ``Handler`` with the runtime's caches and
ensurer, the watches, the reconciler and the Lease elector, talking HTTP to kmock's
Kubernetes emulator (see ``tests/kube_fixtures.py`` for what it was taught). Nothing of
the client or of our code is patched; faults are injected on the server side.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import kmock
import orjson
import pytest
import yaml

from tests.conftest import RuntimeFactory
from tests.kube_fixtures import LEASES, SECRETS, Apiserver, Cluster, Fault, closed_port, decoded, eventually
from webhook.admission.handler import Handler
from webhook.admission.wire import AdmissionReview, AdmissionReviewResponse
from webhook.cli import build_parser, settings_from_args
from webhook.config import Settings
from webhook.errors import UserError
from webhook.observability.stats import Stats
from webhook.policy.holder import PolicyHolder
from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.runtime import KubeRuntime
from webhook.secrets.dockerconfig import (
    HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    RULE_ANNOTATION,
    SOURCE_ANNOTATION,
    content_hash,
)
from webhook.server import build_components

HUB = base64.b64encode(b"hub-user:hub-pass").decode()
QUAY = base64.b64encode(b"quay-user:quay-pass").decode()
INTERNAL = base64.b64encode(b"int-user:int-pass").decode()
SHARED_CONFIG = {
    "auths": {
        "https://index.docker.io/v1/": {"auth": HUB},
        "quay.io": {"auth": QUAY},
        "registry.example.com:5000": {"username": "int-user", "password": "int-pass", "auth": INTERNAL},
    }
}
QUAY_ONLY = b'{"auths":{"quay.io":{"auth":"' + QUAY.encode() + b'"}}}'

POLICY_TEXT = """
excludeNamespaces: [kube-system, ops]
rules:
  - name: quay
    registries: [quay.io]
    namespaces: {include: ["team-*"], exclude: [team-private]}
    secret: quay-pull
    source: {secret: {namespace: ops, name: shared}}
  - name: internal
    registries: ["registry.example.com:5000"]
    namespaces: {selector: {matchLabels: {internal: "yes"}}}
    secret: internal-pull
    source: {secret: {namespace: ops, name: shared}}
  - name: fail-closed
    registries: [ghcr.io]
    secret: ghcr-pull
    failurePolicy: Fail
    source: {secret: {namespace: ops, name: shared}}
"""
POLICY = load_policy(POLICY_TEXT)


def review(namespace: str, *images: str, dry_run: bool = False) -> AdmissionReview:
    containers = [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0000-1111",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "dryRun": dry_run,
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "app"},
                "spec": {"containers": containers},
            },
        },
    }


def injected(response: AdmissionReviewResponse) -> list[str]:
    """The Secret names the response's patch adds to imagePullSecrets."""
    patch = response["response"].get("patch")
    if not patch:
        return []
    for op in orjson.loads(base64.b64decode(patch)):
        if op["path"] == "/spec/imagePullSecrets":
            return [ref["name"] for ref in op["value"]]
    return []


def warnings(response: AdmissionReviewResponse) -> list[str]:
    return response["response"].get("warnings", [])


def handler_for(runtime: KubeRuntime, policy: CompiledPolicy = POLICY) -> Handler:
    return Handler(policy=lambda: policy, namespaces=runtime.namespaces, ensurer=runtime.ensurer)


async def shared_source(cluster: Cluster, config: dict[str, Any] = SHARED_CONFIG) -> None:
    await cluster.namespace("ops")
    await cluster.secret(
        "ops",
        "shared",
        {".dockerconfigjson": json.dumps(config)},
        labels={"argocd.argoproj.io/instance": "registry-creds"},
        annotations={"team": "platform"},
    )


# --------------------------------------------------------------------------- admission


async def test_the_first_pod_in_a_new_namespace_gets_its_secret_before_the_response(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    runtime = await make_runtime(POLICY, elect=False)  # no reconciler: only the admission can create it
    await cluster.namespace("team-a")

    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))

    assert response["response"]["allowed"] is True
    assert injected(response) == ["quay-pull"]
    assert warnings(response) == []
    copy = apiserver.secret("team-a", "quay-pull")  # right now, no waiting
    assert copy is not None
    assert copy["type"] == "kubernetes.io/dockerconfigjson"
    assert decoded(copy) == QUAY_ONLY  # least privilege: neither the Hub nor the internal password
    assert copy["metadata"]["labels"] == {MANAGED_BY_LABEL: "pullsecret-injector"}  # none of the source's
    assert copy["metadata"]["annotations"] == {
        RULE_ANNOTATION: "quay",
        SOURCE_ANNOTATION: "secret:ops/shared",
        HASH_ANNOTATION: content_hash(QUAY_ONLY),
    }


async def test_a_current_copy_costs_no_api_call(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False)
    handler = handler_for(runtime)
    await handler.handle(review("team-a", "quay.io/acme/web:1"))
    await eventually(lambda: runtime.secrets.lookup("team-a", "quay-pull")[1] is not None)

    before = apiserver.request_count()
    for _ in range(20):
        response = await handler.handle(review("team-a", "quay.io/acme/web:1", "quay.io/acme/sidecar:2"))
        assert injected(response) == ["quay-pull"]
    assert apiserver.request_count() == before
    assert runtime.stats.ensures["fast"] == 20


async def test_a_stale_copy_is_updated_before_the_response(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False)
    handler = handler_for(runtime)
    await handler.handle(review("team-a", "quay.io/acme/web:1"))
    rotated = {"auths": {"quay.io": {"auth": base64.b64encode(b"quay-user:rotated").decode()}}}
    await cluster.update_secret("ops", "shared", {".dockerconfigjson": json.dumps(rotated)})
    await eventually(lambda: runtime.secrets.lookup("ops", "shared")[1] != apiserver.secret("team-a", "quay-pull"))
    await asyncio.sleep(0.1)

    await handler.handle(review("team-a", "quay.io/acme/web:1"))

    copy = apiserver.secret("team-a", "quay-pull")
    assert copy is not None
    assert json.loads(decoded(copy)) == rotated


async def test_two_replicas_racing_to_create_both_succeed_through_409(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    first = await make_runtime(POLICY, elect=False)
    second = await make_runtime(POLICY, elect=False)
    rule = POLICY.rules_by_name["quay"]

    results = await asyncio.gather(
        first.ensurer.ensure(namespace="team-a", secrets={"quay-pull": rule}, dry_run=False),
        second.ensurer.ensure(namespace="team-a", secrets={"quay-pull": rule}, dry_run=False),
    )

    assert [(r.failed, r.warnings) for r in results] == [([], []), ([], [])]
    creates = [r for r in apiserver.writes() if r.namespace == "team-a"]
    assert len(creates) == 2  # both tried...
    writes = first.stats.secret_writes + second.stats.secret_writes
    assert writes == {("create", "ok"): 1, ("create", "conflict"): 1}  # ...one won, the other took 409 as success
    assert list(apiserver.secrets_named("quay-pull")) == ["team-a"]


async def test_dry_run_writes_nothing_and_returns_the_same_patch(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    await cluster.namespace("team-b")
    runtime = await make_runtime(POLICY)  # reconciler and all: still nothing may be written
    handler = handler_for(runtime)

    dry = await handler.handle(review("team-a", "quay.io/acme/web:1", dry_run=True))
    await asyncio.sleep(0.3)
    assert apiserver.writes() == []
    assert apiserver.secret("team-a", "quay-pull") is None

    real = await handler.handle(review("team-b", "quay.io/acme/web:1"))
    assert dry["response"]["patch"] == real["response"]["patch"]
    assert warnings(dry) == warnings(real) == []
    assert apiserver.events() == []


async def test_an_unmanaged_secret_of_the_same_name_is_never_touched(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    await cluster.secret("team-a", "quay-pull", {".dockerconfigjson": '{"auths":{"quay.io":{"auth":"bWluZTptaW5l"}}}'})
    before = apiserver.secret("team-a", "quay-pull")
    runtime = await make_runtime(POLICY)
    await eventually(lambda: runtime.stats.leader)

    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))
    await runtime.reconciler.run_pass()  # the leader's reconciler leaves it alone too

    assert response["response"]["allowed"] is True
    assert injected(response) == ["quay-pull"]  # the reference is injected anyway
    assert any("not managed by pullsecret-injector" in w for w in warnings(response))
    assert apiserver.secret("team-a", "quay-pull") == before
    assert [w for w in apiserver.writes() if w.namespace == "team-a"] == []
    await eventually(lambda: [e["reason"] for e in apiserver.events("team-a")] == ["SecretNotManaged"])


async def test_a_namespace_no_rule_admits_never_gets_a_secret(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    for namespace in ("team-private", "kube-system", "default"):
        await cluster.namespace(namespace)
    runtime = await make_runtime(POLICY)
    handler = handler_for(runtime)

    for namespace in ("team-private", "kube-system", "default"):
        response = await handler.handle(review(namespace, "quay.io/acme/web:1", "registry.example.com:5000/x/y"))
        assert injected(response) == []
    # The ensurer itself refuses as well, should anything ever ask it.
    result = await runtime.ensurer.ensure(
        namespace="team-private", secrets={"quay-pull": POLICY.rules_by_name["quay"]}, dry_run=False
    )
    assert result.failed == ["quay-pull"]
    await runtime.reconciler.run_pass()

    assert apiserver.writes() == []


async def test_a_namespace_selector_is_evaluated_on_watched_labels(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    runtime = await make_runtime(POLICY, elect=False)
    await cluster.namespace("lab", internal="yes")  # after start: known through the watch or one GET

    response = await handler_for(runtime).handle(review("lab", "registry.example.com:5000/x/y"))

    assert injected(response) == ["internal-pull"]
    copy = apiserver.secret("lab", "internal-pull")
    assert copy is not None
    assert json.loads(decoded(copy)) == {
        "auths": {"registry.example.com:5000": {"username": "int-user", "password": "int-pass", "auth": INTERNAL}}
    }


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize(
    ("secret_type", "data"),
    [
        pytest.param(
            "kubernetes.io/dockercfg",
            {".dockercfg": json.dumps({"quay.io": {"auth": QUAY, "email": "ops@example.com"}})},
            id="legacy-dockercfg",
        ),
        pytest.param(
            "Opaque",
            {"auth.json": json.dumps({"auths": {"quay.io": {"auth": QUAY, "email": "ops@example.com"}}}, indent=2)},
            id="podman-auth-json",
        ),
        pytest.param(
            "Opaque",
            {
                "config.json": json.dumps(
                    {"auths": {"quay.io": {"auth": QUAY, "email": "ops@example.com"}}, "credsStore": "x"}
                )
            },
            id="docker-config-json",
        ),
    ],
)
async def test_every_source_format_becomes_a_dockerconfigjson_copy(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory, secret_type: str, data: dict[str, str]
) -> None:
    await cluster.namespace("ops")
    await cluster.secret("ops", "shared", data, type=secret_type)
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False)

    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))

    assert warnings(response) == []
    copy = apiserver.secret("team-a", "quay-pull")
    assert copy is not None
    assert copy["type"] == "kubernetes.io/dockerconfigjson"
    assert list(copy["data"]) == [".dockerconfigjson"]
    assert decoded(copy) == b'{"auths":{"quay.io":{"email":"ops@example.com","auth":"' + QUAY.encode() + b'"}}}'


GAR_POLICY = load_policy("""
rules:
  - name: artifact-registry
    registries: ["*-docker.pkg.dev"]
    secret: gar-pull
    source:
      credentials:
        registry: europe-docker.pkg.dev
        username: _json_key
        email: ci@example.com
        passwordFrom: {namespace: ops, name: gar-key, key: key.json}
""")


async def test_the_credentials_source_is_byte_compatible_with_kubectl(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    key_file = '{\n  "type": "service_account",\n  "client_email": "ci@p.iam.gserviceaccount.com"\n}\n'
    await cluster.namespace("ops")
    await cluster.secret("ops", "gar-key", {"key.json": key_file}, type="Opaque")
    await cluster.namespace("team-a")
    runtime = await make_runtime(GAR_POLICY, elect=False)

    response = await handler_for(runtime, GAR_POLICY).handle(review("team-a", "europe-docker.pkg.dev/p/app:1"))

    assert injected(response) == ["gar-pull"]
    copy = apiserver.secret("team-a", "gar-pull")
    assert copy is not None
    # kubectl create secret docker-registry gar-pull --docker-server=europe-docker.pkg.dev
    #   --docker-username=_json_key --docker-email=ci@example.com --docker-password="$(cat key.json)"
    # (with the file's trailing newline kept), written out by hand:
    assert decoded(copy) == (
        b'{"auths":{"europe-docker.pkg.dev":{"username":"_json_key",'
        b'"password":"{\\n  \\"type\\": \\"service_account\\",\\n  \\"client_email\\": '
        b'\\"ci@p.iam.gserviceaccount.com\\"\\n}\\n",'
        b'"email":"ci@example.com",'
        b'"auth":"' + base64.b64encode(b"_json_key:" + key_file.encode()) + b'"}}}'
    )
    assert copy["metadata"]["annotations"][SOURCE_ANNOTATION] == "credentials:ops/gar-key/key.json"


async def test_a_missing_source_is_a_warning_and_an_event(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await cluster.namespace("ops")
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False)

    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))

    assert response["response"]["allowed"] is True
    assert injected(response) == ["quay-pull"]
    assert warnings(response) == [
        "pullsecret-injector: Secret quay-pull not provided: source Secret ops/shared not found"
    ]
    await eventually(lambda: apiserver.events("team-a"))
    [event] = apiserver.events("team-a")
    assert event["reason"] == "SourceNotFound"
    assert event["type"] == "Warning"
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Namespace", "name": "team-a", "namespace": "team-a"}
    assert "ops/shared" in event["message"]
    await eventually(lambda: runtime.stats.events["ok"] == 1)


async def test_a_copy_appears_once_its_missing_source_is_created(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    """The admitted Pod names the Secret: fixing the source must make it appear (on any replica)."""
    await cluster.namespace("ops")
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False)
    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))
    assert injected(response) == ["quay-pull"]
    assert apiserver.secret("team-a", "quay-pull") is None

    started = time.monotonic()
    await cluster.secret("ops", "shared", {".dockerconfigjson": json.dumps(SHARED_CONFIG)})

    await eventually(lambda: apiserver.secret("team-a", "quay-pull") is not None, timeout=10)
    assert time.monotonic() - started < 2
    assert decoded(apiserver.secret("team-a", "quay-pull") or {}) == QUAY_ONLY
    await eventually(lambda: not runtime.reconciler.pending)


# --------------------------------------------------------------------------- the background


async def copies_of(runtime: KubeRuntime, cluster: Cluster, namespaces: list[str], image: str) -> Handler:
    handler = handler_for(runtime)
    for namespace in namespaces:
        await cluster.namespace(namespace)
        response = await handler.handle(review(namespace, image))
        assert warnings(response) == []
    return handler


async def test_a_rotated_source_reaches_every_copy_within_seconds(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    runtime = await make_runtime(POLICY)
    await eventually(lambda: runtime.stats.leader)
    namespaces = ["team-a", "team-b", "team-c"]
    await copies_of(runtime, cluster, namespaces, "quay.io/acme/web:1")
    rotated = {**SHARED_CONFIG, "auths": {**SHARED_CONFIG["auths"], "quay.io": {"auth": "cm90YXRlZDpuZXc="}}}

    started = time.monotonic()
    await cluster.update_secret("ops", "shared", {".dockerconfigjson": json.dumps(rotated)})
    expected = b'{"auths":{"quay.io":{"auth":"cm90YXRlZDpuZXc="}}}'
    await eventually(
        lambda: (
            {ns: decoded(s) for ns, s in apiserver.secrets_named("quay-pull").items()}
            == dict.fromkeys(namespaces, expected)
        ),
        timeout=10,
    )
    assert time.monotonic() - started < 10
    assert runtime.stats.reconcile_lag_seconds is not None
    assert runtime.stats.last_sync_timestamp is not None


async def test_a_deleted_copy_is_recreated(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    runtime = await make_runtime(POLICY)
    await eventually(lambda: runtime.stats.leader)
    await copies_of(runtime, cluster, ["team-a"], "quay.io/acme/web:1")
    await eventually(lambda: ("team-a", "quay-pull") in runtime.reconciler.tracked)

    await cluster.delete_secret("team-a", "quay-pull")

    await eventually(lambda: apiserver.secret("team-a", "quay-pull") is not None, timeout=10)
    copy = apiserver.secret("team-a", "quay-pull")
    assert copy is not None
    assert decoded(copy) == QUAY_ONLY


async def test_a_copy_edited_by_hand_is_restored(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    runtime = await make_runtime(POLICY)
    await eventually(lambda: runtime.stats.leader)
    await copies_of(runtime, cluster, ["team-a"], "quay.io/acme/web:1")

    await cluster.update_secret("team-a", "quay-pull", {".dockerconfigjson": '{"auths":{}}', "extra": "x"})

    restored = {".dockerconfigjson": base64.b64encode(QUAY_ONLY).decode()}
    await eventually(lambda: (apiserver.secret("team-a", "quay-pull") or {}).get("data") == restored)


@pytest.mark.parametrize(
    ("change", "cleanup", "kept"),
    [
        pytest.param("relabel", True, False, id="namespace-no-longer-selected"),
        pytest.param("relabel", False, True, id="namespace-no-longer-selected-cleanup-off"),
        pytest.param("remove-rule", True, False, id="rule-removed"),
        pytest.param("remove-rule", False, True, id="rule-removed-cleanup-off"),
    ],
)
async def test_copies_no_rule_allows_any_more_are_cleaned_up(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory, change: str, cleanup: bool, kept: bool
) -> None:
    await shared_source(cluster)
    holder = PolicyHolder(POLICY)
    runtime = await make_runtime(holder.current, cleanup=cleanup)
    holder.listeners.append(runtime.policy_changed)
    await eventually(lambda: runtime.stats.leader)
    await cluster.namespace("lab", internal="yes")
    await cluster.namespace("lab-2", internal="yes")
    handler = handler_for(runtime)
    for namespace in ("lab", "lab-2"):
        assert injected(await handler.handle(review(namespace, "registry.example.com:5000/x/y"))) == ["internal-pull"]
    # Someone else's Secret of the same name: cleanup must never touch it.
    await cluster.namespace("lab-3", internal="yes")
    await cluster.secret("lab-3", "internal-pull", {".dockerconfigjson": '{"auths":{}}'})
    foreign = apiserver.secret("lab-3", "internal-pull")

    if change == "relabel":
        await cluster.label_namespace("lab", internal="no")
        gone = ["lab"]
    else:
        holder.replace(load_policy(POLICY_TEXT.split("  - name: internal")[0]))
        holder._notify(True, [])  # what PolicyHolder.check() does after taking a new policy
        gone = ["lab", "lab-2"]

    if kept:
        await asyncio.sleep(0.5)
        assert sorted(apiserver.secrets_named("internal-pull")) == ["lab", "lab-2", "lab-3"]
    else:
        await eventually(
            lambda: sorted(apiserver.secrets_named("internal-pull")) == sorted({"lab", "lab-2", "lab-3"} - set(gone))
        )
        await eventually(lambda: runtime.stats.secret_writes[("delete", "ok")] == len(gone))
    assert apiserver.secret("lab-3", "internal-pull") == foreign
    if change == "remove-rule" and not kept:
        # The retired name's watch stays until its copies are gone, then it is dropped.
        await eventually(lambda: (None, "internal-pull") not in runtime.secrets.targets())


async def test_a_deleted_namespace_drops_its_copies_from_tracking(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    runtime = await make_runtime(POLICY)
    await eventually(lambda: runtime.stats.leader)
    await copies_of(runtime, cluster, ["team-a"], "quay.io/acme/web:1")
    await eventually(lambda: ("team-a", "quay-pull") in runtime.reconciler.tracked)

    await cluster.delete_namespace("team-a")
    await cluster.delete_secret("team-a", "quay-pull")  # kmock does not cascade; the namespace controller would

    await eventually(lambda: ("team-a", "quay-pull") not in runtime.reconciler.tracked)
    await asyncio.sleep(0.2)
    assert apiserver.secret("team-a", "quay-pull") is None  # not recreated in a namespace that is gone


# --------------------------------------------------------------------------- API trouble


@pytest.mark.parametrize(
    ("trouble", "expected_warning"),
    [
        pytest.param("refused", "unavailable", id="connection-refused"),
        pytest.param("slow", "not confirmed", id="slow"),
        pytest.param("500", "server_error", id="http-500"),
        pytest.param("403", "forbidden", id="http-403"),
        pytest.param("429", "too_many_requests", id="http-429"),
    ],
)
async def test_api_trouble_is_answered_within_the_budget_with_a_warning(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory, trouble: str, expected_warning: str
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    budget = 0.5
    if trouble == "refused":
        runtime = await make_runtime(
            POLICY, host=f"http://127.0.0.1:{closed_port()}", ensure_timeout=budget, sync_timeout=0.2
        )
    else:
        runtime = await make_runtime(POLICY, elect=False, ensure_timeout=budget)
        fault = Fault(delay=5.0) if trouble == "slow" else Fault(status=int(trouble))
        apiserver.faults.append(fault)

    started = time.monotonic()
    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))
    elapsed = time.monotonic() - started

    assert elapsed < budget * 1.25 + 0.1  # the namespace lookup may take its quarter of the budget
    assert response["response"]["allowed"] is True
    assert injected(response) == ["quay-pull"]
    assert any(expected_warning in w for w in warnings(response)), warnings(response)
    assert ("team-a", "quay-pull") in runtime.reconciler.pending


async def test_a_hung_api_with_every_worker_busy_still_answers_within_the_budget(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    """Calls queued behind hung ones are bounded too, not only those on a socket."""
    await shared_source(cluster)
    namespaces = [f"team-{i}" for i in range(6)]
    for namespace in namespaces:
        await cluster.namespace(namespace)
    runtime = await make_runtime(POLICY, elect=False, ensure_timeout=0.4, workers=1)
    apiserver.faults.append(Fault(delay=1.5))
    handler = handler_for(runtime)

    started = time.monotonic()
    responses = await asyncio.gather(*(handler.handle(review(ns, "quay.io/acme/web:1")) for ns in namespaces))

    assert time.monotonic() - started < 0.4 * 1.25 + 0.2
    assert all(injected(r) == ["quay-pull"] and warnings(r) for r in responses)


@pytest.mark.parametrize("trouble", ["500", "slow"])
async def test_the_background_finishes_what_the_admission_could_not(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory, trouble: str
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False, ensure_timeout=0.3)  # not even the leader
    fault = Fault(
        method="POST",
        path=r"/api/v1/namespaces/team-a/secrets",
        **({"delay": 1.0} if trouble == "slow" else {"status": 503}),
    )
    apiserver.faults.append(fault)

    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))
    assert warnings(response)
    apiserver.faults.remove(fault)

    await eventually(lambda: apiserver.secret("team-a", "quay-pull") is not None, timeout=10)
    await eventually(lambda: not runtime.reconciler.pending)
    copy = apiserver.secret("team-a", "quay-pull")
    assert copy is not None
    assert decoded(copy) == QUAY_ONLY


async def test_a_fail_closed_rule_denies_when_its_secret_cannot_be_provided(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await cluster.namespace("ops")
    await cluster.secret("ops", "shared", {".dockerconfigjson": json.dumps({"auths": {"ghcr.io": {"auth": HUB}}})})
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False, ensure_timeout=0.3)
    apiserver.faults.append(Fault(method="POST", status=500))

    response = await handler_for(runtime).handle(review("team-a", "ghcr.io/acme/tool:1"))

    assert response["response"]["allowed"] is False
    assert response["response"]["status"]["code"] == 503


# --------------------------------------------------------------------------- watches and leadership


async def test_secrets_are_only_listed_and_watched_by_name(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    await cluster.secret("team-a", "db-password", {"password": "hunter2"}, type="Opaque")
    runtime = await make_runtime(POLICY)
    await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))

    reads = [
        r for r in apiserver.ours() if r.resource == SECRETS and r.action in (kmock.action.LIST, kmock.action.WATCH)
    ]
    assert reads
    assert {r.params.get("fieldSelector") for r in reads} == {
        "metadata.name=quay-pull",
        "metadata.name=internal-pull",
        "metadata.name=ghcr-pull",
        "metadata.name=shared",
    }
    # The source is read in its own namespace only; the copies' names cluster-wide.
    assert {r.namespace for r in reads if r.params["fieldSelector"] == "metadata.name=shared"} == {"ops"}
    assert runtime.secrets.lookup("team-a", "db-password") == (False, None)
    assert {t for t in runtime.secrets.targets()} == {
        (None, "quay-pull"),
        (None, "internal-pull"),
        (None, "ghcr-pull"),
        ("ops", "shared"),
    }


async def test_only_one_replica_leads_and_another_takes_over(make_runtime: RuntimeFactory) -> None:
    first = await make_runtime(POLICY)
    await eventually(lambda: first.stats.leader)
    second = await make_runtime(POLICY)
    await asyncio.sleep(0.5)
    assert (first.stats.leader, second.stats.leader) == (True, False)

    await make_runtime.stop(first)  # SIGTERM: the Lease is released, no need to wait for it to expire

    await eventually(lambda: second.stats.leader, timeout=2)


# --------------------------------------------------------------------------- wiring into serve


def kubeconfig(path: Path, host: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": host}}],
                "users": [{"name": "webhook", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "webhook"}}],
                "current-context": "emulator",
            }
        )
    )
    return path


def serve_args(tmp_path: Path, *extra: str) -> Settings:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_TEXT)
    args = build_parser().parse_args(
        ["serve", "--dev", "--policy", str(policy), "--namespace", "pullsecret-system", *extra]
    )
    return settings_from_args(args, env={})


async def test_serve_wires_the_kube_side_when_a_cluster_is_configured(
    apiserver: Apiserver, cluster: Cluster, api_host: str, tmp_path: Path
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    args = serve_args(
        tmp_path, "--kubeconfig", str(kubeconfig(tmp_path / "kubeconfig", api_host)), "--ensure-timeout", "1"
    )
    components = build_components(args)
    for start in components.on_start:
        await start()
    tasks = [asyncio.create_task(job()) for job in components.background]
    try:
        response = await components.handler.handle(review("team-a", "quay.io/acme/web:1"))
        assert injected(response) == ["quay-pull"]
        assert apiserver.secret("team-a", "quay-pull") is not None
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in components.metrics.registry.collect()
            for s in metric.samples
        }
        assert samples[("pullsecret_injector_secret_writes_total", (("operation", "create"), ("result", "ok")))] == 1
        await eventually(lambda: any(r.resource == LEASES for r in apiserver.ours()))  # it runs for the Lease
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(
    "extra",
    [pytest.param(["--no-kube"], id="no-kube"), pytest.param([], id="no-cluster-configured")],
)
def test_serve_runs_offline_without_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    if extra:  # --no-kube wins over a kubeconfig
        extra = [*extra, "--kubeconfig", str(kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{closed_port()}"))]
    components = build_components(serve_args(tmp_path, *extra))
    assert components.on_start == []
    assert [job.__qualname__ for job in components.background] == ["PolicyHolder.watch", "ReloadingSSLContext.watch"]


def test_a_broken_kubeconfig_is_a_one_line_user_error(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\ncurrent-context: nowhere\n")
    with pytest.raises(UserError, match="cannot configure the Kubernetes client"):
        build_components(serve_args(tmp_path, "--kubeconfig", str(broken)))


def test_stats_count_report_to_callbacks_and_measure_lag() -> None:
    seen: list[tuple[str, ...]] = []
    stats = Stats(
        on_write=lambda operation, result: seen.append(("write", operation, result)),
        on_error=lambda kind: seen.append(("error", kind)),
        on_sync=lambda at: seen.append(("sync",)),
    )
    stats.write("create", "ok")
    stats.error("timeout")
    stats.reconciled(lag=0.25, clean=False)
    stats.reconciled(lag=None, clean=True)
    assert seen == [("write", "create", "ok"), ("error", "timeout"), ("sync",)]
    assert stats.current_lag() == 0.0
    stats.behind(time.monotonic() - 5)
    assert 4.9 < stats.current_lag() < 6
    snapshot = stats.snapshot()
    assert snapshot["secret_writes"] == {("create", "ok"): 1}
    assert snapshot["reconcile_lag_seconds"] == 0.25
    assert snapshot["last_sync_timestamp"] is not None


# --------------------------------------------------------------------------- paginated lists


async def test_watches_list_in_pages_and_fill_the_whole_cache(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    teams = [f"team-{i}" for i in range(7)]
    for team in teams:
        await cluster.namespace(team, internal="yes")
        await cluster.secret(team, "quay-pull", {".dockerconfigjson": QUAY_ONLY}, type="kubernetes.io/dockerconfigjson")

    runtime = await make_runtime(POLICY, elect=False, list_page_size=2)

    # 8 namespaces and 7 copies, listed two at a time: the later pages were really asked for.
    assert apiserver.continued_pages > 0
    for team in teams:
        assert runtime.namespaces.get(team) is not None
        assert runtime.secrets.lookup(team, "quay-pull")[1] is not None
    assert runtime.namespaces.get("ops") is not None
    lists = [r for r in apiserver.ours() if r.action == kmock.action.LIST]
    assert lists
    assert all(r.params.get("limit") == "2" for r in lists)


async def test_an_expired_continue_token_lists_again_from_the_start(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    teams = [f"team-{i}" for i in range(5)]
    for team in teams:
        await cluster.namespace(team)
    apiserver.expire_continues = 1

    runtime = await make_runtime(POLICY, elect=False, list_page_size=2)

    assert apiserver.expire_continues == 0  # a 410 was answered ...
    assert runtime.synced  # ... and the list started over, with no error backoff
    assert runtime.stats.errors.get("watch", 0) == 0
    assert {team for team in teams if runtime.namespaces.get(team) is not None} == set(teams)


async def test_continue_tokens_that_keep_expiring_end_in_one_full_list(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    for i in range(5):
        await cluster.namespace(f"team-{i}")
    apiserver.expire_continues = 1000  # every continued page expires

    runtime = await make_runtime(POLICY, elect=False, list_page_size=2)

    assert runtime.synced
    assert runtime.namespaces.get("team-4") is not None
    unpaged = [
        r
        for r in apiserver.ours()
        if r.action == kmock.action.LIST and r.resource != SECRETS and "limit" not in r.params
    ]
    assert unpaged  # the fallback: the namespaces listed in one piece


# --------------------------------------------------------------------------- the warm admission path


async def test_the_warm_path_answers_without_suspending(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False)
    await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))
    await eventually(lambda: runtime.secrets.lookup("team-a", "quay-pull")[1] is not None)
    quay = POLICY.policy.rules[0]

    # No task, no thread hop, no timer: the coroutine completes on its first step.
    coroutine = runtime.ensurer.ensure(namespace="team-a", secrets={"quay-pull": quay}, dry_run=False)
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)
    assert (done.value.value.failed, done.value.value.warnings) == ([], [])
    assert runtime.stats.ensures["fast"] == 1


class _Secrets:
    """A SecretCache stand-in that knows everything: objects by (namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}

    def lookup(self, namespace: str, name: str) -> tuple[bool, dict[str, Any] | None]:
        return True, self.objects.get((namespace, name))


def test_the_current_verdict_is_remembered_per_copy_version_and_source_object() -> None:
    from typing import cast

    from webhook.secrets.grants import GrantIndex

    grant_for = GrantIndex().grant_for
    from webhook.secrets.sync import SecretSync

    secrets = _Secrets()
    sync = SecretSync(
        api=cast(Any, None),
        runner=cast(Any, None),
        secrets=cast(Any, secrets),
        namespaces=cast(Any, None),
        stats=Stats(),
    )
    source = {"metadata": {"namespace": "ops", "name": "shared"}, "type": "kubernetes.io/dockerconfigjson"}
    source["data"] = {".dockerconfigjson": base64.b64encode(json.dumps(SHARED_CONFIG).encode()).decode()}
    secrets.objects[("ops", "shared")] = source
    grant = grant_for(POLICY, "team-a", "quay-pull", {})
    assert grant is not None
    assert grant_for(POLICY, "team-b", "quay-pull", {}) is grant  # one Grant per distinct admission answer

    def copy(version: str, **changes: Any) -> dict[str, Any]:
        manifest = sync._base_copy("quay-pull", grant, secrets.objects[("ops", "shared")]).manifest()
        manifest["metadata"].update(namespace="team-a", uid="u-1", resourceVersion=version)
        manifest.update(changes)
        return manifest

    assert sync.current_in_cache("team-a", "quay-pull", grant) is False  # no copy yet
    secrets.objects[("team-a", "quay-pull")] = copy("1")
    assert sync.current_in_cache("team-a", "quay-pull", grant) is True
    assert sync.current_in_cache("team-a", "quay-pull", grant) is True  # remembered
    # Edited by hand: a new resourceVersion, and not current any more.
    secrets.objects[("team-a", "quay-pull")] = copy("2", data={".dockerconfigjson": "e30="})
    assert sync.current_in_cache("team-a", "quay-pull", grant) is False
    # Taken over by someone else (our label gone).
    unmanaged = copy("3")
    unmanaged["metadata"]["labels"] = {}
    secrets.objects[("team-a", "quay-pull")] = unmanaged
    assert sync.current_in_cache("team-a", "quay-pull", grant) is False
    secrets.objects[("team-a", "quay-pull")] = copy("4")
    assert sync.current_in_cache("team-a", "quay-pull", grant) is True
    # The source rotates: a new source object, so the same copy version is no longer current.
    other = {"auths": {"quay.io": {"auth": base64.b64encode(b"quay-user:rotated").decode()}}}
    secrets.objects[("ops", "shared")] = {
        **source,
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(other).encode()).decode()},
    }
    assert sync.current_in_cache("team-a", "quay-pull", grant) is False
    secrets.objects[("team-a", "quay-pull")] = copy("5")
    assert sync.current_in_cache("team-a", "quay-pull", grant) is True
    # A source that no longer parses is "not current" here (the full path reports it).
    secrets.objects[("ops", "shared")] = {**source, "data": {".dockerconfigjson": "bm90IGpzb24="}}
    assert sync.current_in_cache("team-a", "quay-pull", grant) is False
