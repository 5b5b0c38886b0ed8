"""Kubernetes objects as plain dicts: keys, labels, and the slim forms the caches keep."""

from __future__ import annotations

from webhook.kube.objects import _slim_namespace, _slim_secret, namespace_labels, object_key


def test_keys_of_namespaced_and_cluster_objects() -> None:
    assert object_key({"metadata": {"namespace": "ops", "name": "shared"}}) == ("ops", "shared")
    assert object_key({"metadata": {"name": "team-a"}}) == ("", "team-a")
    assert object_key({}) == ("", "")


def test_namespace_labels_are_strings_or_nothing() -> None:
    assert namespace_labels({"metadata": {"labels": {"internal": "yes", "n": 1}}}) == {"internal": "yes", "n": "1"}
    assert namespace_labels({"metadata": {"labels": None}}) == {}
    assert namespace_labels({"metadata": {"labels": ["not", "a", "map"]}}) == {}


def test_a_slim_secret_keeps_identity_ownership_type_and_data_only() -> None:
    metadata = {"name": "quay-pull", "namespace": "team-a", "uid": "u", "resourceVersion": "7", "labels": {"a": "b"}}
    full = {
        "metadata": {
            **metadata,
            "managedFields": [{"manager": "kubectl"}],
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "e30="},
        "immutable": False,
    }
    assert _slim_secret(full) == {
        "metadata": metadata,
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "e30="},
    }
    assert _slim_secret({"metadata": {"name": "x"}}) == {"metadata": {"name": "x"}, "type": None, "data": {}}


def test_a_slim_namespace_keeps_labels_and_phase() -> None:
    full = {
        "metadata": {
            "name": "team-a",
            "uid": "u",
            "resourceVersion": "3",
            "labels": {"a": "b"},
            "annotations": {"x": "y"},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Terminating", "conditions": []},
    }
    assert _slim_namespace(full) == {
        "metadata": {"name": "team-a", "uid": "u", "resourceVersion": "3", "labels": {"a": "b"}},
        "status": {"phase": "Terminating"},
    }
