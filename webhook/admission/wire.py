"""The AdmissionReview wire format: plain types and pure builders, no I/O.

Reviews are handled as plain dicts decoded by orjson (validating a whole Pod with
pydantic on every admission would cost more than the rest of the work together); the
TypedDicts document the shape for readers and for mypy. :func:`parse_review` checks only
what the handler relies on, and raises :class:`ReviewError` (an HTTP 400, the caller's
fault) as opposed to a denied Pod, which is a normal ``allowed: false`` answer.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict

import orjson

from webhook.admission.view import ReviewView

SUPPORTED_API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    group: str
    version: str
    resource: str


class AdmissionRequest(TypedDict):
    uid: str
    kind: GroupVersionKind
    resource: GroupVersionResource
    subResource: NotRequired[str]
    name: NotRequired[str]
    namespace: NotRequired[str]
    operation: Operation
    userInfo: NotRequired[dict[str, Any]]
    object: NotRequired[dict[str, Any] | None]
    oldObject: NotRequired[dict[str, Any] | None]
    dryRun: NotRequired[bool]
    options: NotRequired[dict[str, Any] | None]


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


class Status(TypedDict, total=False):
    code: int
    message: str
    reason: str


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[Status]
    patch: NotRequired[str]
    patchType: NotRequired[Literal["JSONPatch"]]
    warnings: NotRequired[list[str]]


class AdmissionReviewResponse(TypedDict):
    apiVersion: str
    kind: Literal["AdmissionReview"]
    response: AdmissionResponse


class PatchOperation(TypedDict):
    op: Literal["add", "replace", "remove"]
    path: str
    value: NotRequired[Any]


class ReviewError(ValueError):
    """The request body is not a usable AdmissionReview (answered with HTTP 400)."""


def parse_review(body: bytes) -> AdmissionReview:
    """Decode and minimally check an AdmissionReview.

    Only the fields every answer needs are checked here (apiVersion, kind, request.uid);
    the handler copes with anything else being odd, since a webhook that rejects a review
    for a field it does not use would block Pods for no reason.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReviewError(f"body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise ReviewError("body is not a JSON object")
    api_version = data.get("apiVersion")
    if api_version not in SUPPORTED_API_VERSIONS:
        raise ReviewError(
            f"unsupported apiVersion {api_version!r}; expected one of {', '.join(SUPPORTED_API_VERSIONS)}"
        )
    if data.get("kind") != "AdmissionReview":
        raise ReviewError(f"kind must be AdmissionReview, not {data.get('kind')!r}")
    request = data.get("request")
    if not isinstance(request, dict):
        raise ReviewError("request is missing or not an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("request.uid is missing")
    return data  # type: ignore[return-value]


def build_response(
    *,
    review: AdmissionReview | ReviewView,
    allowed: bool = True,
    patch: Sequence[PatchOperation] | None = None,
    warnings: Sequence[str] = (),
    message: str | None = None,
    code: int | None = None,
    encoded_patch: str | None = None,
) -> AdmissionReviewResponse:
    """The answer to ``review``: same apiVersion, same uid, the patch base64-encoded.

    An empty patch is sent as no patch at all: the API server then has nothing to apply
    and, with ``reinvocationPolicy: IfNeeded``, no reason to call other webhooks again.
    ``encoded_patch`` is a patch already encoded by :func:`encode_patch` (a remembered answer's).
    ``review`` is the decoded review or, on the hot path, its checked view (``webhook/admission/view.py``).
    """
    api_version, uid = identity(review)
    response: AdmissionResponse = {"uid": uid, "allowed": allowed}
    if patch:
        encoded_patch = encode_patch(patch)
    if encoded_patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = encoded_patch
    if warnings:
        response["warnings"] = list(warnings)
    if message is not None or code is not None:
        status: Status = {}
        if code is not None:
            status["code"] = code
        if message is not None:
            status["message"] = message
        response["status"] = status
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


def identity(review: AdmissionReview | ReviewView) -> tuple[str, str]:
    """``(apiVersion, uid)`` of a decoded review or of a view the hot path has checked."""
    if isinstance(review, ReviewView):
        assert review.request is not None
        api_version: str = review.apiVersion
        uid: str = review.request.uid
        return api_version, uid
    return review["apiVersion"], review["request"]["uid"]


def encode_patch(patch: Sequence[PatchOperation]) -> str:
    """``patch`` as an AdmissionResponse carries it: JSON, base64-encoded."""
    return base64.b64encode(orjson.dumps(list(patch))).decode("ascii")


def decode_patch(response: Mapping[str, Any]) -> list[PatchOperation]:
    """The JSON patch carried by an AdmissionResponse (empty when there is none)."""
    encoded = response.get("patch")
    if not encoded:
        return []
    ops: list[PatchOperation] = orjson.loads(base64.b64decode(encoded))
    return ops
