"""Reading manifests for ``check``: documents, Lists, Pods and the Pod a workload's template makes."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.builders import deployment_body, pod_body
from webhook.admission.manifests import ManifestError, load_documents, pods_of


def test_yaml_streams_and_json_both_load() -> None:
    text = yaml.safe_dump_all([pod_body("nginx"), None, deployment_body("web", "quay.io/acme/web:1")])
    assert [doc["kind"] for doc in load_documents(text, source="a.yaml")] == ["Pod", "Deployment"]
    assert load_documents(json.dumps(pod_body("nginx")), source="a.json")[0]["kind"] == "Pod"


@pytest.mark.parametrize(
    ("text", "message"),
    [("a: [", "a.yaml: not valid YAML or JSON"), ("- a\n- b\n", "a.yaml: document 1 is not a Kubernetes object")],
)
def test_unreadable_files_name_the_file(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        load_documents(text, source="a.yaml")


def test_a_workload_stands_for_the_pod_its_template_makes() -> None:
    [source] = pods_of(deployment_body("web", "quay.io/acme/web:1", labels={"tier": "frontend"}, namespace="team-a"))
    assert (source.origin, source.namespace) == ("Deployment/web", "team-a")
    assert source.pod["metadata"] == {"labels": {"tier": "frontend"}, "generateName": "web-"}
    assert source.pod["spec"]["containers"][0]["image"] == "quay.io/acme/web:1"


def test_lists_are_walked_and_kinds_without_pods_yield_nothing() -> None:
    items = [pod_body("nginx", name="a"), {"kind": "Service"}, deployment_body("api", "quay.io/acme/web:1"), "junk"]
    listing = {"kind": "List", "items": items}
    assert [source.origin for source in pods_of(listing)] == ["Pod/a", "Deployment/api"]
    assert list(pods_of({"kind": "ConfigMap", "metadata": {"name": "x"}})) == []


def test_a_cronjob_template_is_two_levels_down() -> None:
    cronjob = {
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}},
    }
    [source] = pods_of(cronjob)
    assert source.origin == "CronJob/nightly"
    assert source.pod["spec"]["containers"] == [{"name": "c", "image": "x"}]


def test_a_workload_without_a_template_is_an_error() -> None:
    with pytest.raises(ManifestError, match=r"Deployment/web: no Pod template at spec\.template"):
        list(pods_of({"kind": "Deployment", "metadata": {"name": "web"}, "spec": {}}))
