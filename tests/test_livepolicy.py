"""What the live policy decides for one ConfigMap version (webhook.kube.livepolicy): table-tested.

``decide`` is the whole judgement (schema, then permissions) without I/O: the authorizer is
given as a function of the request attributes. The watch, the status writes and the Events
run against the real API server in tests/e2e/test_policy_live_e2e.py.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from tests.builders import QUAY_POLICY
from webhook.config import ControlSettings, KubeSettings
from webhook.kube.client import build_api_client
from webhook.kube.control import ControlApi
from webhook.kube.livepolicy import LivePolicy
from webhook.observability.stats import Stats
from webhook.policy import status as st

GOOD = QUAY_POLICY


def live(allowed: bool) -> LivePolicy:
    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"  # never called: decide() asks the reviewer only
    return LivePolicy(
        api=ControlApi(build_api_client(configuration=configuration, pool_size=1)),
        configmap="psi-policy",
        settings=ControlSettings(),
        kube=KubeSettings(namespace="psi"),
        stats=Stats(),
        reviewer=lambda attrs: (allowed, ""),
    )


def configmap(data: dict[str, str]) -> dict[str, object]:
    return {"metadata": {"name": "psi-policy", "namespace": "psi", "resourceVersion": "7"}, "data": data}


@pytest.mark.parametrize(
    ("data", "allowed", "state", "first_error"),
    [
        pytest.param({"policy.yaml": GOOD}, True, "Accepted", None, id="good-and-permitted"),
        pytest.param({"policy.yaml": GOOD}, False, "Rejected", "missing permission", id="not-permitted"),
        pytest.param({"policy.yaml": "rules: [{name: x}]"}, True, "Rejected", "rules", id="invalid"),
        pytest.param({"policy.yaml": "rules: ["}, True, "Rejected", "", id="not-yaml"),
        pytest.param({"other.yaml": GOOD}, True, "Rejected", "has no key policy.yaml", id="no-key"),
        pytest.param({"policy.yaml": "rules: []\n"}, False, "Accepted", None, id="nothing-to-permit"),
    ],
)
def test_decide(data: dict[str, str], allowed: bool, state: str, first_error: str | None) -> None:
    policy, status, text = live(allowed).decide(configmap(data))
    assert status.state == state
    assert status.resource_version == "7"
    if state == "Accepted":
        assert policy is not None
        assert status.version == st.digest(data["policy.yaml"]) == status.serving
        assert text == data["policy.yaml"]
    else:
        assert policy is None
        assert status.errors
        assert first_error is not None
        assert first_error in status.errors[0]


def test_a_credential_pasted_into_a_broken_policy_never_reaches_the_status() -> None:
    """A YAML error quotes the offending line; the annotation and the Event must not carry it."""
    canary = "hunter2-canary-7f3a"
    text = f'rules:\n  - name: x\n    password: "{canary}\n'
    _, status, _ = live(True).decide(configmap({"policy.yaml": text}))
    assert status.state == "Rejected"
    said = [*status.errors, *status.annotations().values(), *status.event()]
    assert not [line for line in said if canary in line]
    assert any("not valid YAML" in line for line in status.errors)
