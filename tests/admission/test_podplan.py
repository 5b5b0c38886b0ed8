"""Planning one Pod: a rule per container, the Secrets it needs, warnings for bad images, the patch."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from tests.builders import pod_body
from webhook.admission.podplan import MAX_WARNING_LENGTH, plan_pod, short
from webhook.policy.matching import load_policy

POLICY = load_policy("""
rules:
  - name: quay
    registries: [quay.io]
    secret: quay-pull
  - name: hub
    registries: [docker.io]
    secret: hub-pull
  - name: labelled
    registries: [ghcr.io]
    namespaces: {selector: {matchLabels: {ghcr: "yes"}}}
    secret: ghcr-pull
""")


def plan(
    built: dict[str, Any], *, namespace: str = "team-a", labels: dict[str, str] | None = None, explain: bool = False
) -> Any:
    return plan_pod(pod=built, namespace=namespace, policy=POLICY, namespace_labels=labels, explain=explain)


def test_every_container_kind_is_planned_and_secrets_come_once_in_first_use_order() -> None:
    built = pod_body("nginx", "quay.io/acme/web:1", "quay.io/acme/sidecar:2")
    built["spec"]["initContainers"] = [{"name": "init", "image": "quay.io/acme/init:1"}]
    result = plan(built)
    assert [(c.kind, c.name) for c in result.containers] == [
        ("initContainers", "init"),
        ("containers", "c0"),
        ("containers", "c1"),
        ("containers", "c2"),
    ]
    assert list(result.secrets) == ["quay-pull", "hub-pull"]
    assert result.added == ["quay-pull", "hub-pull"]
    assert result.warnings == []
    patched = jsonpatch.apply_patch(built, result.patch)
    assert patched["spec"]["imagePullSecrets"] == [{"name": "quay-pull"}, {"name": "hub-pull"}]


def test_bad_images_get_a_warning_and_the_rest_of_the_pod_its_secrets() -> None:
    built = pod_body("quay.io/acme/web:1", "Not A Valid Image")
    built["spec"]["containers"].append({"name": "no-image"})
    result = plan(built)
    assert result.added == ["quay-pull"]
    assert result.warnings == [
        "container 'c1': invalid image 'Not A Valid Image', no pull secret",
        "container 'no-image': image missing, no pull secret",
    ]
    assert [c.rule for c in result.containers[1:]] == [None, None]


def test_a_namespace_selector_is_decided_on_the_labels_given() -> None:
    built = pod_body("ghcr.io/acme/tool:1")
    assert plan(built, labels={"ghcr": "yes"}).added == ["ghcr-pull"]
    assert plan(built, labels={"ghcr": "no"}).added == []
    assert plan(built, labels=None).added == []


def test_the_cached_and_the_explaining_paths_agree() -> None:
    built = pod_body("nginx", "quay.io/acme/web:1", "registry.example.com/x")
    fast = [plan(built) for _ in range(2)]  # the second one from the namespace's memo
    explained = plan(built, explain=True)
    for result in (*fast, explained):
        assert [(c.image, c.rule.name if c.rule else None) for c in result.containers] == [
            ("nginx", "hub"),
            ("quay.io/acme/web:1", "quay"),
            ("registry.example.com/x", None),
        ]
        assert result.patch == explained.patch


def test_a_pod_without_a_spec_plans_nothing() -> None:
    result = plan({"metadata": {"name": "p"}})
    assert (result.containers, result.secrets, result.patch) == ([], {}, [])


@pytest.mark.parametrize("length", [MAX_WARNING_LENGTH - 1, MAX_WARNING_LENGTH, MAX_WARNING_LENGTH + 1, 500])
def test_short_caps_warnings_at_the_limit(length: int) -> None:
    text = "x" * length
    capped = short(text)
    assert len(capped) == min(length, MAX_WARNING_LENGTH)
    assert capped == text or capped.endswith("...")
