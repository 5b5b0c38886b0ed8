"""Acceptance tests: the real webhook process against a real kube-apiserver + controllers.

One ``pullsecret-injector serve`` subprocess (module fixture ``hook``) serves most tests;
the fail-open test runs its own process, which it stops. Every test works in namespaces
of its own, labelled so that only the webhook it means is called for them. Measurements
(latencies, startup, rotation) are printed, recorded as properties and summarised at the
end of the run under "pullsecret-injector e2e measurements".
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import pytest

from tests.builders import auth_entry, b64, deployment_body, pod_body, pull_secrets, wait_for

from .cluster import (
    DOCKERCONFIGJSON,
    Namespaces,
    dockerconfig_secret,
    dry_run_probe,
    injects,
    read_secret,
    source_namespace,
)
from .controlplane import ControlPlane
from .report import Measurements, Note
from .webhook import WebhookProcess, registered_webhook

SYSTEM_NS = "psi-e2e-system"
MAIN_HOOK = "psi-e2e-main"

EXAMPLE_IMAGE = "registry.example.com/team/app:1.0"
QUAY_IMAGE = "quay.io/team/tool:2.0"
ROTATE_IMAGE = "rotate.example.com/team/app:1.0"
GAR_IMAGE = "europe-docker.pkg.dev/my-project/team/app:1.0"
RELOAD_IMAGE = "reload.example.com/team/app:1.0"
UNMATCHED_IMAGE = "ghcr.io/team/app:1.0"
LENIENT_IMAGE = "lenient.example.com/team/app:1.0"
STRICT_IMAGE = "strict.example.com/team/app:1.0"
LABELLED_IMAGE = "labelled.example.com/team/app:1.0"
#: Namespaces opt in to the ``labelled`` rule with this label (a namespaces.selector rule).
OPT_IN_LABEL = "e2e.pullsecret-injector.io/pull-secrets"

MANAGED_BY = "app.kubernetes.io/managed-by"
INJECTED = "pullsecret-injector.io/injected"
SKIP_LABEL = "pullsecret-injector.io/skip"

ROTATION_BUDGET_SECONDS = 10.0


# --------------------------------------------------------------------------- content


EXAMPLE_PASSWORD = "example-pass-1"


def example_auths(password: str = EXAMPLE_PASSWORD) -> dict[str, dict[str, str]]:
    """The source's three registries; a copy for the ``example`` rule must hold only the first."""
    return {
        "registry.example.com": auth_entry("robot", password),
        "quay.io": auth_entry("quay-robot", "quay-pass"),
        "https://index.docker.io/v1/": auth_entry("hub-user", "hub-pass"),
    }


#: A service-account key as GAR wants it for ``_json_key``: multi-line JSON with quotes,
#: backslashes and HTML characters that Go's encoding/json escapes (\u003c, \u0026...).
GAR_KEY_JSON = (
    json.dumps(
        {
            "type": "service_account",
            "project_id": "my-project",
            "private_key_id": "0123456789abcdef",
            "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq<&>hkiG9w0BAQEFAASC\n"
            "-----END PRIVATE KEY-----\n",
            "client_email": "puller@my-project.iam.gserviceaccount.com",
        },
        indent=2,
    )
    + "\n"
)


def go_json_string(value: str) -> str:
    """A string as Go's json.Marshal writes it (HTML-escaped), written independently of webhook.secrets.dockerconfig."""
    encoded = json.dumps(value, ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028")):
        encoded = encoded.replace(char, escape)
    return encoded.replace("\u2029", "\\u2029")


def kubectl_docker_registry_json(server: str, username: str, password: str) -> bytes:
    """What ``kubectl create secret docker-registry`` stores (DockerConfigJSON, Go field order)."""
    auth = b64(f"{username}:{password}")
    return (
        f'{{"auths":{{{go_json_string(server)}:{{"username":{go_json_string(username)},'
        f'"password":{go_json_string(password)},"auth":"{auth}"}}}}}}'
    ).encode()


def base_policy(
    *, exclude_namespaces: Sequence[str] = (), extra_rules: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The shared webhook's policy; tests that change it restore it afterwards."""
    return {
        "excludeNamespaces": ["kube-system", "kube-public", "kube-node-lease", "e2e-excluded-*", *exclude_namespaces],
        "rules": [
            {
                "name": "example",
                "registries": ["registry.example.com"],
                "namespaces": {"exclude": ["e2e-ruleexcl-*"]},
                "secret": "example-pull",
                "source": {"secret": {"namespace": SYSTEM_NS, "name": "example-credentials"}},
            },
            # name only: no source, nothing is ever created for it
            {"name": "quay", "registries": ["quay.io"], "secret": "quay-pull"},
            {
                "name": "rotate",
                "registries": ["rotate.example.com"],
                "secret": "rotate-pull",
                "source": {"secret": {"namespace": SYSTEM_NS, "name": "rotate-credentials"}},
            },
            {
                "name": "artifact-registry",
                "registries": ["europe-docker.pkg.dev"],
                "repositories": ["my-project/*"],
                "secret": "gar-pull",
                "source": {
                    "credentials": {
                        "registry": "europe-docker.pkg.dev",
                        "username": "_json_key",
                        "passwordFrom": {"namespace": SYSTEM_NS, "name": "gar-key", "key": "key.json"},
                    }
                },
            },
            {
                "name": "labelled",
                "registries": ["labelled.example.com"],
                "namespaces": {"selector": {"matchLabels": {OPT_IN_LABEL: "enabled"}}},
                "secret": "labelled-pull",
                "source": {"secret": {"namespace": SYSTEM_NS, "name": "labelled-credentials"}},
            },
            # sources that do not exist (yet): admitted with a warning / denied
            {
                "name": "lenient",
                "registries": ["lenient.example.com"],
                "secret": "lenient-pull",
                "source": {"secret": {"namespace": SYSTEM_NS, "name": "late-credentials"}},
            },
            {
                "name": "strict",
                "registries": ["strict.example.com"],
                "secret": "strict-pull",
                "source": {"secret": {"namespace": SYSTEM_NS, "name": "missing-credentials"}},
                "failurePolicy": "Fail",
            },
            *extra_rules,
        ],
    }


# --------------------------------------------------------------------------- API helpers


@contextlib.contextmanager
def extra_rule(hook: WebhookProcess, core: Any, name: str, *, auths: Mapping[str, Any] | None = None) -> Iterator[str]:
    """The shared policy plus a rule ``name`` (``<name>.example.com`` -> Secret ``<name>-pull``) for the block.

    Its source is a Secret ``<name>-<random>`` in the system namespace: created first from ``auths``
    when given, else left to the test (a source that appears later). Yields the source's name;
    afterwards the base policy is back and the source deleted.
    """
    source = f"{name}-{uuid.uuid4().hex[:6]}"
    if auths is not None:
        core.create_namespaced_secret(SYSTEM_NS, dockerconfig_secret(source, auths))
    rule = {
        "name": name,
        "registries": [f"{name}.example.com"],
        "secret": f"{name}-pull",
        "source": {"secret": {"namespace": SYSTEM_NS, "name": source}},
    }
    try:
        hook.reload_policy(base_policy(extra_rules=[rule]))
        yield source
    finally:
        hook.reload_policy(base_policy())
        with contextlib.suppress(Exception):
            core.delete_namespaced_secret(source, SYSTEM_NS)


def config_bytes(secret: Any) -> bytes:
    return base64.b64decode(secret.data[".dockerconfigjson"])


def config_json(secret: Any) -> Any:
    return json.loads(config_bytes(secret))


def assert_managed_copy(secret: Any, *, rule: str, source: str) -> None:
    assert secret is not None, "the managed copy should exist"
    assert secret.type == DOCKERCONFIGJSON
    assert secret.metadata.labels == {MANAGED_BY: "pullsecret-injector"}
    annotations = secret.metadata.annotations
    assert annotations["pullsecret-injector.io/rule"] == rule
    assert annotations["pullsecret-injector.io/source"] == source
    assert annotations["pullsecret-injector.io/content-hash"].startswith("sha256:")
    assert set(secret.data) == {".dockerconfigjson"}


def assert_example_copy(secret: Any, password: str = EXAMPLE_PASSWORD) -> None:
    """The ``example`` rule's copy: the source filtered to registry.example.com only."""
    assert_managed_copy(secret, rule="example", source=f"secret:{SYSTEM_NS}/example-credentials")
    assert config_json(secret) == {"auths": {"registry.example.com": auth_entry("robot", password)}}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


# --------------------------------------------------------------------------- reporting


@pytest.fixture(scope="module")
def measurements(request: pytest.FixtureRequest) -> Measurements:
    """Listed at the end of the run; ``note`` (conftest.py) adds to them."""
    return Measurements.register(request, "pullsecret-injector e2e measurements", "psi-e2e-measurements")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def namespaces(namespaces: Namespaces) -> Namespaces:
    """The test's namespaces (conftest.py), labelled for the shared webhook unless a test names another."""
    return namespaces.for_hook(MAIN_HOOK)


@pytest.fixture(scope="module")
def system_namespace(core: Any) -> Iterator[str]:
    """The webhook's own namespace with the source Secrets."""
    sources = [
        dockerconfig_secret("example-credentials", example_auths()),
        dockerconfig_secret("rotate-credentials", {"rotate.example.com": auth_entry("rot", "v1")}),
        {"metadata": {"name": "gar-key"}, "type": "Opaque", "data": {"key.json": b64(GAR_KEY_JSON)}},
        dockerconfig_secret("labelled-credentials", {"labelled.example.com": auth_entry("lab", "pw")}),
    ]
    with source_namespace(core, SYSTEM_NS, sources) as name:
        yield name


def base_webhook(
    control_plane: ControlPlane, api_client: Any, core: Any, name: str, **options: Any
) -> contextlib.AbstractContextManager[WebhookProcess]:
    """A webhook ``name`` with the shared policy (:func:`base_policy`), registered; ``options``: its fields."""
    return registered_webhook(
        control_plane,
        api_client,
        name=name,
        namespace=SYSTEM_NS,
        policy=base_policy(),
        probe=injects(core, EXAMPLE_IMAGE, "example-pull"),
        **options,
    )


@pytest.fixture(scope="module")
def hook(
    control_plane: ControlPlane, api_client: Any, core: Any, system_namespace: str, measurements: Measurements
) -> Iterator[WebhookProcess]:
    """The shared webhook process, registered for namespaces labelled ``HOOK_LABEL=psi-e2e-main``."""
    # a short full resync, as a safety net; watch events are what the tests measure
    with base_webhook(control_plane, api_client, core, MAIN_HOOK, extra_args=("--resync-seconds", "30")) as shared:
        measurements.lines.append(
            f"shared webhook: ready {shared.startup_seconds:.2f}s after spawn; "
            f"apiserver calling it {shared.registration_seconds:.2f}s after registration"
        )
        yield shared


@pytest.fixture
def live_hook(hook: WebhookProcess) -> Iterator[WebhookProcess]:
    """The shared hook, checked to be alive (and its log shown) after the test."""
    mark = hook.log_mark()
    yield hook
    hook.assert_healthy(since=mark)


# --------------------------------------------------------------------------- 1-4: injection


def test_pod_gets_its_secret_and_the_secret_exists_when_create_returns(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces, note: Note
) -> None:
    ns = namespaces.one()
    assert read_secret(core, ns, "example-pull") is None

    pod, first = timed(lambda: core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, name="first")))
    secret = read_secret(core, ns, "example-pull")  # read at once: no waiting, no polling

    assert pull_secrets(pod) == ["example-pull"]
    assert pod.metadata.annotations[INJECTED] == "example-pull"
    assert_example_copy(secret)
    assert "quay.io" not in config_bytes(secret).decode()  # least privilege: filtered to the rule's registry

    warm: list[float] = []
    for i in range(5):
        again, seconds = timed(partial(core.create_namespaced_pod, ns, pod_body(EXAMPLE_IMAGE, name=f"warm-{i}")))
        assert pull_secrets(again) == ["example-pull"]
        warm.append(seconds)
    unchanged = read_secret(core, ns, "example-pull")
    assert unchanged.metadata.resource_version == secret.metadata.resource_version, "a current copy is not rewritten"
    _, unmatched = timed(lambda: core.create_namespaced_pod(ns, pod_body(UNMATCHED_IMAGE, name="other")))
    note(
        "pod-create-latency",
        f"first Pod in a new namespace (copy created on the admission path) {first * 1000:.0f} ms; "
        f"warm Pods median {statistics.median(warm) * 1000:.0f} ms (max {max(warm) * 1000:.0f} ms); "
        f"Pod needing no secret {unmatched * 1000:.0f} ms",
    )


def test_deployment_pods_get_the_secret(
    live_hook: WebhookProcess, core: Any, apps: Any, namespaces: Namespaces
) -> None:
    ns = namespaces.one()
    mark = live_hook.log_mark()
    apps.create_namespaced_deployment(ns, deployment_body("web", EXAMPLE_IMAGE, replicas=4, labels={"app": "web"}))

    def all_pods() -> list[Any] | None:
        items: list[Any] = core.list_namespaced_pod(ns, label_selector="app=web").items
        return items if len(items) == 4 else None

    pods = wait_for(all_pods, "the Deployment's four Pods", timeout=30)
    for pod in pods:
        assert pod.metadata.generate_name.startswith("web-"), "created by the ReplicaSet controller"
        assert pod.metadata.owner_references[0].kind == "ReplicaSet"
        assert pull_secrets(pod) == ["example-pull"]
        assert pod.metadata.annotations[INJECTED] == "example-pull"
    assert_example_copy(read_secret(core, ns, "example-pull"))
    created = [line for line in live_hook.logs(mark).splitlines() if f"created Secret {ns}/example-pull" in line]
    assert len(created) == 1, "four Pods at once, one copy written"
    # The template itself is not mutated: only Pods are.
    deployment = apps.read_namespaced_deployment("web", ns)
    assert deployment.spec.template.spec.image_pull_secrets is None


def test_dry_run_returns_the_mutated_pod_and_leaves_nothing_behind(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces
) -> None:
    ns = namespaces.one()
    mark = live_hook.log_mark()
    pod = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, name="ghost"), dry_run="All")
    assert pull_secrets(pod) == ["example-pull"]
    assert pod.metadata.annotations[INJECTED] == "example-pull"
    assert read_secret(core, ns, "example-pull") is None
    time.sleep(1.5)  # nothing is handed to the background either
    assert read_secret(core, ns, "example-pull") is None
    assert core.list_namespaced_pod(ns).items == []
    assert f"Secret {ns}/" not in live_hook.logs(mark)


@pytest.mark.parametrize(
    ("service_account_secrets", "expected"),
    [
        pytest.param(["example-pull"], ["example-pull"], id="sa-lists-it"),
        pytest.param(["other-pull", "example-pull"], ["other-pull", "example-pull"], id="sa-lists-it-second"),
        pytest.param(["other-pull"], ["other-pull", "example-pull"], id="sa-lists-another"),
    ],
)
def test_service_account_pull_secrets_are_not_duplicated(
    live_hook: WebhookProcess,
    core: Any,
    namespaces: Namespaces,
    service_account_secrets: list[str],
    expected: list[str],
) -> None:
    ns = namespaces.one()
    core.patch_namespaced_service_account(
        "default", ns, {"imagePullSecrets": [{"name": n} for n in service_account_secrets]}
    )
    pod = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, name="app"))
    assert pull_secrets(pod) == expected
    annotations = pod.metadata.annotations or {}
    if "example-pull" in service_account_secrets:
        assert INJECTED not in annotations, "nothing was added, so no patch at all"
    else:
        assert annotations[INJECTED] == "example-pull"
    # present or added, the Secret the Pod names is there and current
    assert_example_copy(read_secret(core, ns, "example-pull"))
    assert read_secret(core, ns, "other-pull") is None


# --------------------------------------------------------------------------- 5: exclusions


@pytest.mark.parametrize(
    ("prefix", "labels", "expected"),
    [
        pytest.param("e2e-excluded", None, [], id="excludeNamespaces"),
        pytest.param("e2e-ruleexcl", None, ["quay-pull"], id="rule-namespaces-exclude"),
        pytest.param("e2e-ws", {SKIP_LABEL: "true"}, [], id="skip-label"),
    ],
)
def test_nothing_is_injected_where_the_policy_says_no(
    live_hook: WebhookProcess,
    core: Any,
    namespaces: Namespaces,
    prefix: str,
    labels: dict[str, str] | None,
    expected: list[str],
) -> None:
    ns = namespaces.one(prefix)
    pod = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, QUAY_IMAGE, name="app", labels=labels))
    assert pull_secrets(pod) == expected
    time.sleep(0.5)
    assert read_secret(core, ns, "example-pull") is None, "no Secret where no rule admits the namespace"
    assert read_secret(core, ns, "quay-pull") is None, "a rule without source never creates anything"
    if labels:
        # the namespace itself is served: the same Pod without the label is injected
        served = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, QUAY_IMAGE, name="served"))
        assert pull_secrets(served) == ["example-pull", "quay-pull"]


# --------------------------------------------------------------------------- issue 3 on a real API server


def test_credentials_source_is_identical_to_kubectl(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces, control_plane: ControlPlane, note: Note
) -> None:
    ns = namespaces.one()
    pod = core.create_namespaced_pod(ns, pod_body(GAR_IMAGE, name="app"))
    assert pull_secrets(pod) == ["gar-pull"]
    copy = read_secret(core, ns, "gar-pull")
    assert_managed_copy(copy, rule="artifact-registry", source=f"credentials:{SYSTEM_NS}/gar-key/key.json")
    expected = kubectl_docker_registry_json("europe-docker.pkg.dev", "_json_key", GAR_KEY_JSON)
    assert config_bytes(copy) == expected
    assert "\\u003c" in expected.decode(), "the key exercises Go's HTML escaping"
    assert "\\u0026" in expected.decode()

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        note("kubectl", "not installed: compared against the hand-written DockerConfigJSON only")
        return
    subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(control_plane.kubeconfig_path),
            "-n",
            ns,
            "create",
            "secret",
            "docker-registry",
            "kubectl-reference",
            "--docker-server=europe-docker.pkg.dev",
            "--docker-username=_json_key",
            f"--docker-password={GAR_KEY_JSON}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    reference = read_secret(core, ns, "kubectl-reference")
    assert reference.type == copy.type
    assert reference.data == copy.data, "the copy's .dockerconfigjson is byte-for-byte kubectl's"


def test_an_unmanaged_secret_is_referenced_but_never_touched(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces
) -> None:
    ns = namespaces.one()
    mine = core.create_namespaced_secret(
        ns,
        dockerconfig_secret(
            "example-pull", {"registry.example.com": auth_entry("hand-made", "mine")}, labels={"owner": "team"}
        ),
    )
    pod, _, headers = core.create_namespaced_pod_with_http_info(ns, pod_body(EXAMPLE_IMAGE, name="app"))
    assert pull_secrets(pod) == ["example-pull"]
    warning = headers.get("Warning") or ""
    assert "not managed by pullsecret-injector" in warning, f"expected an admission warning, got {warning!r}"
    time.sleep(1.0)  # give the background every chance to (wrongly) touch it
    after = read_secret(core, ns, "example-pull")
    assert after.metadata.resource_version == mine.metadata.resource_version
    assert after.metadata.labels == {"owner": "team"}
    assert after.data == mine.data


@pytest.mark.parametrize("drift", ["deleted", "edited"])
def test_a_drifted_copy_is_restored(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces, drift: str, note: Note
) -> None:
    ns = namespaces.one()
    core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, name="app"))
    original = read_secret(core, ns, "example-pull")
    assert_example_copy(original)
    t0 = time.monotonic()
    if drift == "deleted":
        core.delete_namespaced_secret("example-pull", ns)
    else:
        core.patch_namespaced_secret(
            "example-pull", ns, {"data": {".dockerconfigjson": b64('{"auths":{}}'), "extra": b64("x")}}
        )

    def restored() -> Any | None:
        secret = read_secret(core, ns, "example-pull")
        if secret is None or secret.metadata.resource_version == original.metadata.resource_version:
            return None
        return secret if secret.data == original.data else None

    secret = wait_for(restored, f"the {drift} copy to be restored", timeout=15)
    elapsed = time.monotonic() - t0
    assert_example_copy(secret)
    if drift == "deleted":
        assert secret.metadata.uid != original.metadata.uid, "recreated"
    note(f"copy-{drift}-restored", f"{elapsed:.2f} s")


def test_a_managed_secret_of_the_wrong_type_is_replaced(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces
) -> None:
    """``type`` is immutable: a managed Opaque leftover is deleted and recreated before the Pod is answered."""
    ns = namespaces.one()
    stale = core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "example-pull", "labels": {MANAGED_BY: "pullsecret-injector"}},
            "type": "Opaque",
            "data": {"leftover": b64("x")},
        },
    )
    pod = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, name="app"))
    assert pull_secrets(pod) == ["example-pull"]
    copy = read_secret(core, ns, "example-pull")
    assert copy.metadata.uid != stale.metadata.uid
    assert_example_copy(copy)


def test_a_namespace_selector_rule_follows_the_namespace_labels(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces, note: Note
) -> None:
    opted_in = namespaces.one(labels={OPT_IN_LABEL: "enabled"})
    other = namespaces.one()
    pod = core.create_namespaced_pod(opted_in, pod_body(LABELLED_IMAGE, name="app"))
    assert pull_secrets(pod) == ["labelled-pull"]
    copy = read_secret(core, opted_in, "labelled-pull")
    assert_managed_copy(copy, rule="labelled", source=f"secret:{SYSTEM_NS}/labelled-credentials")
    assert config_json(copy) == {"auths": {"labelled.example.com": auth_entry("lab", "pw")}}
    pod = core.create_namespaced_pod(other, pod_body(LABELLED_IMAGE, name="app"))
    assert pull_secrets(pod) == []
    assert read_secret(core, other, "labelled-pull") is None

    # opting out: the copy no rule allows any more goes, new Pods get nothing
    core.patch_namespace(opted_in, {"metadata": {"labels": {OPT_IN_LABEL: None}}})
    t0 = time.monotonic()
    wait_for(lambda: read_secret(core, opted_in, "labelled-pull") is None, "the opted-out copy to go", timeout=15)
    note("selector-opt-out-cleanup", f"copy deleted {time.monotonic() - t0:.2f} s after the label was removed")
    pod = core.create_namespaced_pod(opted_in, pod_body(LABELLED_IMAGE, name="after-opt-out"))
    assert pull_secrets(pod) == []

    # opting in later: once the webhook has seen the label, Pods get the Secret again
    core.patch_namespace(other, {"metadata": {"labels": {OPT_IN_LABEL: "enabled"}}})
    wait_for(dry_run_probe(core, other, LABELLED_IMAGE, "labelled-pull"), "the new label to be seen", timeout=10)
    pod = core.create_namespaced_pod(other, pod_body(LABELLED_IMAGE, name="after-opt-in"))
    assert pull_secrets(pod) == ["labelled-pull"]
    assert read_secret(core, other, "labelled-pull") is not None


def test_a_missing_source_admits_with_a_warning_or_denies_a_fail_closed_rule(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces
) -> None:
    from kubernetes.client.exceptions import ApiException

    ns = namespaces.one()
    pod, _, headers = core.create_namespaced_pod_with_http_info(ns, pod_body(LENIENT_IMAGE, name="lenient"))
    assert pull_secrets(pod) == ["lenient-pull"], "failurePolicy Ignore: admitted, the name injected"
    warning = headers.get("Warning") or ""
    assert f"source Secret {SYSTEM_NS}/late-credentials not found" in warning, warning
    assert read_secret(core, ns, "lenient-pull") is None

    def source_not_found_event() -> Any:
        events = core.list_namespaced_event(ns).items
        return [e for e in events if e.reason == "SourceNotFound" and e.type == "Warning"]

    (event,) = wait_for(source_not_found_event, "a SourceNotFound Event in the namespace", timeout=10)
    assert f"{SYSTEM_NS}/late-credentials" in event.message

    with pytest.raises(ApiException) as denied:
        core.create_namespaced_pod(ns, pod_body(STRICT_IMAGE, name="strict"))
    body = json.loads(denied.value.body or "{}")
    assert denied.value.status == 503, body
    assert "strict-pull could not be provided" in body["message"]
    assert "fails closed" in body["message"]
    assert [p.metadata.name for p in core.list_namespaced_pod(ns).items] == ["lenient"]
    assert read_secret(core, ns, "strict-pull") is None


def test_a_copy_appears_once_its_missing_source_is_created(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces, note: Note
) -> None:
    """A Pod admitted while its source was missing names a Secret: it must appear once the source does.

    Until then the Pod cannot pull (ImagePullBackOff): creating the source must fix it, as it does for
    a copy that exists (rotation) or was deleted (drift).
    """
    ns = namespaces.one()
    with extra_rule(live_hook, core, "late") as source:
        pod = core.create_namespaced_pod(ns, pod_body("late.example.com/team/app:1.0", name="early"))
        assert pull_secrets(pod) == ["late-pull"]
        assert read_secret(core, ns, "late-pull") is None
        core.create_namespaced_secret(
            SYSTEM_NS, dockerconfig_secret(source, {"late.example.com": auth_entry("late", "pw")})
        )
        t0 = time.monotonic()
        copy = wait_for(
            lambda: read_secret(core, ns, "late-pull"),
            "the copy the admitted Pod names",
            timeout=ROTATION_BUDGET_SECONDS,
        )
        note("late-source", f"copy created {time.monotonic() - t0:.2f} s after the source appeared")
        assert config_json(copy) == {"auths": {"late.example.com": auth_entry("late", "pw")}}


@pytest.mark.parametrize("version", ["v1beta1", "v1"])
def test_both_admission_review_versions_are_answered(
    live_hook: WebhookProcess, api_client: Any, core: Any, namespaces: Namespaces, version: str
) -> None:
    """A second configuration for the same process, sending only ``version`` reviews."""
    name = f"psi-e2e-{version}"
    ns = namespaces.one(hook=name)
    with live_hook.configuration(api_client, name, admission_review_versions=[version]):
        wait_for(dry_run_probe(core, ns, EXAMPLE_IMAGE, "example-pull"), f"the {version} webhook", timeout=30)
        pod = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, QUAY_IMAGE, name="app"))
        assert pull_secrets(pod) == ["example-pull", "quay-pull"]
        assert pod.metadata.annotations[INJECTED] == "example-pull,quay-pull"
        assert_example_copy(read_secret(core, ns, "example-pull"))


# --------------------------------------------------------------------------- 6: rotation


def test_a_rotated_source_reaches_every_copy_within_10s(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces, note: Note
) -> None:
    spaces = namespaces.make(count=3)
    for ns in spaces:
        core.create_namespaced_pod(ns, pod_body(ROTATE_IMAGE, name="app"))
        assert config_json(read_secret(core, ns, "rotate-pull")) == {
            "auths": {"rotate.example.com": auth_entry("rot", "v1")}
        }
    rotated = {"rotate.example.com": auth_entry("rot", "v2-" + uuid.uuid4().hex)}
    want = json.dumps({"auths": rotated})

    core.patch_namespaced_secret("rotate-credentials", SYSTEM_NS, {"data": {".dockerconfigjson": b64(want)}})
    t0 = time.monotonic()
    seen: dict[str, float] = {}

    def all_rotated() -> bool:
        for ns in spaces:
            if ns not in seen:
                secret = read_secret(core, ns, "rotate-pull")
                if secret is not None and config_json(secret) == {"auths": rotated}:
                    seen[ns] = time.monotonic() - t0
        return len(seen) == len(spaces)

    wait_for(all_rotated, "the rotated credentials in every copy", timeout=30, interval=0.05)
    latency = max(seen.values())
    note("rotation-latency", f"{latency:.2f} s for {len(spaces)} copies (budget {ROTATION_BUDGET_SECONDS:g} s)")
    assert latency <= ROTATION_BUDGET_SECONDS
    for ns in spaces:
        assert_managed_copy(
            read_secret(core, ns, "rotate-pull"), rule="rotate", source=f"secret:{SYSTEM_NS}/rotate-credentials"
        )
    # and a new Pod gets the rotated copy as it stands
    core.create_namespaced_pod(spaces[0], pod_body(ROTATE_IMAGE, name="after"))
    assert config_json(read_secret(core, spaces[0], "rotate-pull")) == {"auths": rotated}


# --------------------------------------------------------------------------- policy changes


def test_copies_no_rule_allows_any_more_are_deleted(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces, note: Note
) -> None:
    dropped, unmanaged, kept = namespaces.make(count=3)
    core.create_namespaced_pod(dropped, pod_body(EXAMPLE_IMAGE, name="app"))
    core.create_namespaced_pod(kept, pod_body(EXAMPLE_IMAGE, name="app"))
    mine = core.create_namespaced_secret(
        unmanaged, dockerconfig_secret("example-pull", {"registry.example.com": auth_entry("hand-made", "mine")})
    )
    assert_example_copy(read_secret(core, dropped, "example-pull"))
    kept_copy = read_secret(core, kept, "example-pull")
    assert_example_copy(kept_copy)

    try:
        reload_seconds = live_hook.reload_policy(base_policy(exclude_namespaces=[dropped, unmanaged]))
        t0 = time.monotonic()
        wait_for(
            lambda: read_secret(core, dropped, "example-pull") is None,
            "the copy in the newly excluded namespace to be deleted",
            timeout=20,
        )
        note("cleanup", f"policy picked up in {reload_seconds:.2f} s, copy deleted {time.monotonic() - t0:.2f} s later")
        time.sleep(0.5)
        survivor = read_secret(core, unmanaged, "example-pull")
        assert survivor is not None, "an unmanaged Secret is never deleted"
        assert survivor.metadata.resource_version == mine.metadata.resource_version
        still = read_secret(core, kept, "example-pull")
        assert still.metadata.resource_version == kept_copy.metadata.resource_version, "other copies stay"
        # and the excluded namespace gets nothing any more
        pod = core.create_namespaced_pod(dropped, pod_body(EXAMPLE_IMAGE, name="after"))
        assert pull_secrets(pod) == []
    finally:
        live_hook.reload_policy(base_policy())


def test_copies_of_a_removed_rule_are_deleted(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces, note: Note
) -> None:
    ns = namespaces.one()
    with extra_rule(live_hook, core, "temp", auths={"temp.example.com": auth_entry("t", "pw")}) as source:
        pod = core.create_namespaced_pod(ns, pod_body("temp.example.com/team/app:1.0", EXAMPLE_IMAGE, name="app"))
        assert pull_secrets(pod) == ["temp-pull", "example-pull"]
        assert_managed_copy(read_secret(core, ns, "temp-pull"), rule="temp", source=f"secret:{SYSTEM_NS}/{source}")
        example = read_secret(core, ns, "example-pull")

        reload_seconds = live_hook.reload_policy(base_policy())
        t0 = time.monotonic()
        wait_for(
            lambda: read_secret(core, ns, "temp-pull") is None, "the removed rule's copy to be deleted", timeout=15
        )
        note(
            "cleanup-rule-removed",
            f"policy picked up in {reload_seconds:.2f} s, copy deleted {time.monotonic() - t0:.2f} s later",
        )
        after = read_secret(core, ns, "example-pull")
        assert after.metadata.resource_version == example.metadata.resource_version, "other copies stay"


def test_a_policy_change_updates_existing_copies(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces, note: Note
) -> None:
    """Widening a rule's registries widens the existing copies (and narrowing narrows them)."""
    ns = namespaces.one()
    core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, name="app"))
    assert_example_copy(read_secret(core, ns, "example-pull"))
    widened = base_policy()
    widened["rules"][0]["registries"] = ["registry.example.com", "quay.io"]
    want = {k: v for k, v in example_auths().items() if k in ("registry.example.com", "quay.io")}
    try:
        live_hook.reload_policy(widened)
        t0 = time.monotonic()
        wait_for(
            lambda: config_json(read_secret(core, ns, "example-pull")) == {"auths": want},
            "the copy to carry the quay.io credentials too",
            timeout=15,
        )
        note("policy-change-propagation", f"copy rewritten {time.monotonic() - t0:.2f} s after the reload")
    finally:
        live_hook.reload_policy(base_policy())
    wait_for(
        lambda: (
            config_json(read_secret(core, ns, "example-pull"))
            == {"auths": {k: want[k] for k in want if k != "quay.io"}}
        ),
        "the copy to be narrowed again",
        timeout=15,
    )
    assert_example_copy(read_secret(core, ns, "example-pull"))


def test_an_invalid_policy_keeps_the_last_good_one_and_a_valid_change_is_picked_up(
    live_hook: WebhookProcess, core: Any, namespaces: Namespaces, note: Note
) -> None:
    first, second = namespaces.make(count=2)
    invalid = {
        "yaml-syntax": "rules: [ {name: broken\n",
        "schema": "rules:\n  - name: no-registries\n    secret: x\n    unknownKey: 1\n",
    }
    try:
        for ns, (kind, text) in zip((first, second), invalid.items(), strict=True):
            live_hook.reload_policy(text, expect="new policy rejected")
            assert live_hook.ready(), f"{kind}: still ready"
            pod = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, RELOAD_IMAGE, name=f"after-{kind}"))
            assert pull_secrets(pod) == ["example-pull"], f"{kind}: the last good policy still serves"
            assert_example_copy(read_secret(core, ns, "example-pull"))

        reload_rule = {"name": "reload", "registries": ["reload.example.com"], "secret": "reload-pull"}
        changed = base_policy(extra_rules=[reload_rule])
        seconds = live_hook.reload_policy(changed)
        pod = core.create_namespaced_pod(first, pod_body(EXAMPLE_IMAGE, RELOAD_IMAGE, name="after-change"))
        assert pull_secrets(pod) == ["example-pull", "reload-pull"]
        note("policy-reload", f"valid change effective {seconds:.2f} s after the file was replaced")
    finally:
        live_hook.reload_policy(base_policy())
    pod = core.create_namespaced_pod(first, pod_body(RELOAD_IMAGE, name="after-restore"))
    assert pull_secrets(pod) == []


# --------------------------------------------------------------------------- 8: fail open (last: stops its webhook)


def test_pods_are_still_created_when_the_webhook_is_down(
    control_plane: ControlPlane,
    api_client: Any,
    core: Any,
    system_namespace: str,
    namespaces: Namespaces,
    note: Note,
) -> None:
    from kubernetes.client.exceptions import ApiException

    name = "psi-e2e-failopen"
    ns = namespaces.one(hook=name)
    with base_webhook(control_plane, api_client, core, name) as hook:
        pod = core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, name="before"))
        assert pull_secrets(pod) == ["example-pull"], "the webhook is in the path before it is stopped"

        code = hook.stop()
        assert code == 0, f"SIGTERM is a clean shutdown, exit code {code}:\n{hook.log_tail()}"
        assert not hook.ready()

        try:
            pod, seconds = timed(lambda: core.create_namespaced_pod(ns, pod_body(EXAMPLE_IMAGE, name="after")))
        except ApiException as err:
            pytest.fail(f"NOT FAIL-OPEN: with the webhook down the apiserver refused the Pod: {err}")
        assert pod.metadata.uid, "created although the webhook is down"
        assert pull_secrets(pod) == [], "nobody injected anything"
        assert INJECTED not in (pod.metadata.annotations or {})
        note(
            "FAIL-OPEN",
            f"webhook process stopped (exit {code}, {hook.stop_seconds:.2f} s after SIGTERM); Pod {ns}/after "
            f"was still created in {seconds * 1000:.0f} ms, without imagePullSecrets (failurePolicy Ignore)",
        )
        note("failopen-webhook-startup", f"ready {hook.startup_seconds:.2f} s after spawn")
