"""The JSON patch: adds only missing names, records them, applies cleanly and is idempotent."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from tests.builders import pod_body
from webhook.admission.patch import (
    INJECTED_ANNOTATION,
    SKIP_LABEL,
    annotation_op,
    build_patch,
    escape_pointer,
    existing_pull_secrets,
    is_skipped,
)


def with_pull_secrets(value: Any, **metadata: Any) -> dict[str, Any]:
    built = pod_body("quay.io/acme/web:1")
    built["metadata"].update(metadata)
    built["spec"]["imagePullSecrets"] = value
    return built


@pytest.mark.parametrize(
    "existing",
    [pytest.param(None, id="null"), pytest.param([], id="empty"), pytest.param([{"name": "sa-pull"}], id="from-sa")],
)
def test_the_patch_applies_and_keeps_what_was_there(existing: list[dict[str, str]] | None) -> None:
    original = with_pull_secrets(existing)
    ops, added = build_patch(pod=original, secrets=["quay-pull", "hub-pull"])
    patched = jsonpatch.apply_patch(original, ops)
    assert added == ["quay-pull", "hub-pull"]
    assert patched["spec"]["imagePullSecrets"] == [*(existing or []), {"name": "quay-pull"}, {"name": "hub-pull"}]
    assert patched["metadata"]["annotations"] == {INJECTED_ANNOTATION: "quay-pull,hub-pull"}


def test_an_absent_list_is_created_in_one_operation() -> None:
    original = pod_body("quay.io/acme/web:1")
    ops, _ = build_patch(pod=original, secrets=["quay-pull"])
    assert ops[0] == {"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "quay-pull"}]}


def test_names_already_present_or_repeated_are_not_added_again() -> None:
    original = with_pull_secrets([{"name": "quay-pull"}])
    ops, added = build_patch(pod=original, secrets=["quay-pull", "hub-pull", "hub-pull"])
    assert added == ["hub-pull"]
    assert [op["value"] for op in ops if op["path"].startswith("/spec")] == [{"name": "hub-pull"}]


def test_applying_our_own_output_again_adds_nothing() -> None:
    original = pod_body("quay.io/acme/web:1")
    ops, _ = build_patch(pod=original, secrets=["quay-pull"])
    assert build_patch(pod=jsonpatch.apply_patch(original, ops), secrets=["quay-pull"]) == ([], [])


def test_the_annotation_keeps_names_recorded_earlier() -> None:
    original = with_pull_secrets([{"name": "hub-pull"}], annotations={INJECTED_ANNOTATION: "hub-pull", "team": "a"})
    ops, _ = build_patch(pod=original, secrets=["quay-pull"])
    patched = jsonpatch.apply_patch(original, ops)
    assert patched["metadata"]["annotations"] == {INJECTED_ANNOTATION: "hub-pull,quay-pull", "team": "a"}
    assert ops[-1]["path"] == "/metadata/annotations/pullsecret-injector.io~1injected"


def test_a_pod_without_metadata_gets_it() -> None:
    original: dict[str, Any] = {"spec": {"containers": []}}
    ops, _ = build_patch(pod=original, secrets=["quay-pull"])
    assert jsonpatch.apply_patch(original, ops)["metadata"] == {"annotations": {INJECTED_ANNOTATION: "quay-pull"}}


@pytest.mark.parametrize("value", [pytest.param("quay-pull", id="a-string"), pytest.param({"name": "x"}, id="a-map")])
def test_a_pull_secret_field_of_another_shape_is_never_overwritten(value: object) -> None:
    assert build_patch(pod=with_pull_secrets(value), secrets=["quay-pull"]) == ([], [])


def test_existing_pull_secrets_skips_entries_without_a_name() -> None:
    spec = {"imagePullSecrets": [{"name": "a"}, {}, "b", {"name": 3}, {"name": "c"}]}
    assert existing_pull_secrets(spec) == ["a", "c"]
    assert existing_pull_secrets({"imagePullSecrets": None}) == []


def test_escape_pointer_follows_rfc_6901() -> None:
    assert escape_pointer("a/b~c") == "a~1b~0c"


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param(None, {"x/y": "1"}, id="no-metadata"),
        pytest.param({"name": "p"}, {"x/y": "1"}, id="no-annotations"),
        pytest.param({"name": "p", "annotations": None}, {"x/y": "1"}, id="null-annotations"),
        pytest.param({"name": "p", "annotations": {"a": "b"}}, {"a": "b", "x/y": "1"}, id="others-kept"),
        pytest.param({"name": "p", "annotations": {"x/y": "0"}}, {"x/y": "1"}, id="replaced"),
    ],
)
def test_annotation_op_sets_the_annotation_whatever_the_metadata_holds(
    metadata: dict[str, Any] | None, expected: dict[str, str]
) -> None:
    pod: dict[str, Any] = {"spec": {}} if metadata is None else {"metadata": metadata, "spec": {}}
    patched = jsonpatch.apply_patch(pod, [annotation_op(pod, "x/y", "1")])
    assert patched["metadata"]["annotations"] == expected


@pytest.mark.parametrize(
    ("labels", "skipped"),
    [({SKIP_LABEL: "true"}, True), ({SKIP_LABEL: "false"}, False), ({SKIP_LABEL: "True"}, False), (None, False)],
)
def test_only_the_skip_label_set_to_true_skips(labels: dict[str, str] | None, skipped: bool) -> None:
    assert is_skipped(pod_body("quay.io/x", labels=labels)) is skipped
