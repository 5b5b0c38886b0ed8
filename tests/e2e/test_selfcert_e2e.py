"""Self-managed certificates on the real API server: create once, race, patch the caBundle, rotate.

The manager runs with the admin identity here (the chart e2e proves the chart's RBAC);
what these tests show is the protocol with a real API server: resourceVersion conflicts
on PUT, a JSON patch on the MutatingWebhookConfiguration, and the order of a CA rotation.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from webhook.kube.client import KubeApi, build_api_client, load_configuration
from webhook.tls.pki import load_certificates, verify_chain
from webhook.tls.selfcert import CertState, SelfCertManager

from .controlplane import ControlPlane

SERVICE = "pullsecret-injector"


@pytest.fixture
def kube_api(control_plane: ControlPlane) -> KubeApi:
    configuration = load_configuration(kubeconfig=Path(control_plane.kubeconfig_path))
    return KubeApi(build_api_client(configuration=configuration, pool_size=4))


@pytest.fixture
def webhook_config(api_client: Any) -> Iterator[str]:
    """A MutatingWebhookConfiguration with two entries and no caBundle, as the chart installs it."""
    admission: Any = client.AdmissionregistrationV1Api(api_client)
    name = f"selfcert-{uuid.uuid4().hex[:8]}"
    entry = {
        "clientConfig": {"service": {"name": SERVICE, "namespace": "x", "path": "/mutate", "port": 443}},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "sideEffects": "NoneOnDryRun",
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Ignore",
        # Select nothing: this configuration must never be called by other tests' Pods.
        "objectSelector": {"matchLabels": {"selfcert-e2e": name}},
    }
    body = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{**entry, "name": "a.pullsecret-injector.io"}, {**entry, "name": "b.pullsecret-injector.io"}],
    }
    admission.create_mutating_webhook_configuration(body)
    try:
        yield name
    finally:
        admission.delete_mutating_webhook_configuration(name)


def manager(api: KubeApi, namespace: str, config: str, now: datetime | None = None) -> SelfCertManager:
    clock = (lambda: now) if now is not None else (lambda: datetime.now(UTC))
    return SelfCertManager(
        api=api, namespace=namespace, secret_name="webhook-tls", service=SERVICE, webhook_config=config, clock=clock
    )


def ca_bundles(api: KubeApi, config: str) -> list[bytes]:
    found = api.get_webhook_config(config, timeout=5)
    assert found is not None
    return [base64.b64decode(w["clientConfig"]["caBundle"]) for w in found["webhooks"]]


def test_first_start_creates_the_secret_and_fills_every_caBundle(
    kube_api: KubeApi, namespace: str, webhook_config: str
) -> None:
    state = manager(kube_api, namespace, webhook_config).ensure()
    secret = kube_api.get_secret(namespace, "webhook-tls", timeout=5)
    assert secret is not None
    assert CertState.from_secret(secret) == state
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pullsecret-injector"
    bundles = ca_bundles(kube_api, webhook_config)
    assert bundles == [state.ca_bundle, state.ca_bundle]
    verify_chain(state.cert, bundles[0], dns_name=f"{SERVICE}.{namespace}.svc")
    # A restart changes nothing: same Secret, no new patch.
    version = secret["metadata"]["resourceVersion"]
    assert manager(kube_api, namespace, webhook_config).ensure() == state
    again = kube_api.get_secret(namespace, "webhook-tls", timeout=5)
    assert again is not None
    assert again["metadata"]["resourceVersion"] == version


def test_replicas_racing_at_start_agree_on_one_certificate(
    kube_api: KubeApi, namespace: str, webhook_config: str
) -> None:
    results: list[CertState] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def replica() -> None:
        try:
            barrier.wait()
            results.append(manager(kube_api, namespace, webhook_config).ensure())
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len({(r.cert, r.ca_bundle) for r in results}) == 1, "replicas ended up with different certificates"
    assert ca_bundles(kube_api, webhook_config)[0] == results[0].ca_bundle


def test_ca_rotation_publishes_the_new_ca_before_serving_from_it(
    kube_api: KubeApi, namespace: str, webhook_config: str
) -> None:
    start = manager(kube_api, namespace, webhook_config).ensure()
    old_ca = load_certificates(start.ca_bundle)[0]
    late = datetime.now(UTC) + timedelta(days=365 * 7 + 30)  # under a third of the 10-year CA left
    rotated = manager(kube_api, namespace, webhook_config, now=late).ensure()
    cas = load_certificates(rotated.ca_bundle)
    assert len(cas) == 2
    assert cas[1] == old_ca
    assert cas[0] != old_ca
    # One pass did both steps, in order: the bundle the API server holds has the new CA,
    # and the serving certificate now comes from it.
    assert ca_bundles(kube_api, webhook_config) == [rotated.ca_bundle, rotated.ca_bundle]
    assert load_certificates(rotated.cert)[0].issuer == cas[0].subject
    verify_chain(rotated.cert, rotated.ca_bundle, now=late)
    # A client that still holds only the old bundle keeps trusting the previous certificate.
    verify_chain(start.cert, start.ca_bundle)


def test_a_missing_webhook_configuration_is_not_created(kube_api: KubeApi, namespace: str) -> None:
    state = manager(kube_api, namespace, "does-not-exist").ensure()
    assert state.cert
    assert kube_api.get_webhook_config("does-not-exist", timeout=5) is None
