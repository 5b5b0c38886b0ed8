"""The wire format: what is checked of a review, and the answer's shape."""

from __future__ import annotations

import base64
import json

import pytest

from tests.builders import review
from webhook.admission.wire import PatchOperation, ReviewError, build_response, decode_patch, parse_review

PATCH: list[PatchOperation] = [{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "quay-pull"}]}]


@pytest.mark.parametrize("version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_both_api_versions_parse_and_are_answered_in_kind(version: str) -> None:
    sent = review("team-a", "quay.io/acme/web:1", api_version=version, uid="u-1")
    parsed = parse_review(json.dumps(sent).encode())
    assert parsed == sent
    answer = build_response(review=parsed, patch=PATCH)
    assert answer["apiVersion"] == version
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "u-1"


def test_only_what_every_answer_needs_is_checked() -> None:
    odd = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u", "object": 7}}
    assert parse_review(json.dumps(odd).encode())["request"]["uid"] == "u"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"apiVersion": "v1", "kind": "AdmissionReview", "request": {"uid": "u"}}', "unsupported apiVersion"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "Pod", "request": {"uid": "u"}}', "kind must be"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}', "request is missing"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}}', "uid"),
    ],
)
def test_unusable_reviews_raise_a_review_error(body: bytes, message: str) -> None:
    with pytest.raises(ReviewError, match=message):
        parse_review(body)


def test_the_patch_is_base64_json_and_reads_back() -> None:
    answer = build_response(review=review("team-a"), patch=PATCH, warnings=["w"])
    response = answer["response"]
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == PATCH
    assert decode_patch(response) == PATCH
    assert response["warnings"] == ["w"]
    assert response["allowed"] is True


def test_an_empty_patch_is_no_patch_at_all() -> None:
    response = build_response(review=review("team-a"), patch=[])["response"]
    assert "patch" not in response
    assert "patchType" not in response
    assert "warnings" not in response
    assert decode_patch(response) == []


def test_a_denial_carries_its_status() -> None:
    response = build_response(review=review("team-a"), allowed=False, code=503, message="no secret")["response"]
    assert response["allowed"] is False
    assert response["status"] == {"code": 503, "message": "no secret"}
