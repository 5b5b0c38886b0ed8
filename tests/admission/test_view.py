"""The review's view: the hot path's few fields, never a view of a body the full decode refuses.

The oracle for "refuses" is orjson itself (``parse_review``'s decoder): whatever body it
cannot decode must have no view, or the hot path would answer what the complete path
answers with a 400. And where there is a view, it must say of the Pod exactly what the
view of the decoded Pod says (one fingerprint for both paths), and the answer taken from
it must be the complete path's.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.builders import GOLDEN, golden_cases, pod_body, review
from webhook.admission.handler import Handler
from webhook.admission.view import ContainerView, decode_view, pod_view
from webhook.admission.wire import AdmissionReview, ReviewError, parse_review
from webhook.policy.matching import load_policy

BODY = orjson.dumps(review("team-a", "nginx:1.27", "quay.io/team/app:1"))


def test_a_review_is_viewed_with_the_fields_the_hot_path_reads() -> None:
    view = decode_view(BODY)
    assert view is not None
    assert view.request is not None
    assert view.request.object is not None
    assert view.request.object.spec is not None
    assert (view.apiVersion, view.kind, view.request.uid, view.request.operation) == (
        "admission.k8s.io/v1",
        "AdmissionReview",
        "0000-1111",
        "CREATE",
    )
    assert view.request.object.spec.containers == [
        ContainerView(name="c0", image="nginx:1.27"),
        ContainerView(name="c1", image="quay.io/team/app:1"),
    ]


def _with(text: bytes) -> bytes:
    """BODY with ``text`` as the value of a field no view reads (where the full decode still looks)."""
    return BODY[:-1] + b',"extra":' + text + b"}"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[1, 2]", id="not-an-object-but-json"),
        pytest.param(BODY[:-1], id="truncated"),
        pytest.param(BODY + b" x", id="trailing-garbage"),
        pytest.param(_with(b"[1,,2]"), id="malformed-where-nothing-is-read"),
        pytest.param(_with(b'"\xff\xfe"'), id="invalid-utf8-where-nothing-is-read"),
        pytest.param(_with(b'"\xed\xa0\x80"'), id="encoded-surrogate-where-nothing-is-read"),
        pytest.param(_with(b'"\\ud800"'), id="lone-surrogate-escape"),
        pytest.param(_with(b"NaN"), id="nan"),
        pytest.param(_with(b'"a\x01b"'), id="control-character-in-a-string"),
        pytest.param(_with(b"[" * 5000 + b"]" * 5000), id="nested-deeper-than-any-decoder-goes"),
    ],
)
def test_no_view_of_a_body_the_full_decode_refuses(body: bytes) -> None:
    with pytest.raises(ReviewError):
        parse_review(body)
    assert decode_view(body) is None


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        pytest.param({"request": "nope"}, "request", id="request-not-an-object"),
        pytest.param({"request": {"uid": "u", "object": []}}, "object", id="object-not-an-object"),
        pytest.param({"request": {"object": {"spec": {"containers": ["nginx"]}}}}, "containers", id="container-string"),
        pytest.param({"request": {"object": {"spec": {"volumes": {}}}}}, "volumes", id="volumes-not-a-list"),
        pytest.param({"request": {"object": {"metadata": "x"}}}, "metadata", id="metadata-not-an-object"),
    ],
)
def test_shapes_no_view_stands_for_have_none_and_are_left_to_the_full_decode(
    edit: dict[str, object], field: str
) -> None:
    body = orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", **edit})
    orjson.loads(body)  # JSON all right: the complete path decides (a 400 or an answer with a warning)
    assert decode_view(body) is None, field


def test_non_ascii_utf8_is_viewed() -> None:
    body = _with('"caf\u00e9 \u2603"'.encode())
    assert decode_view(body) == decode_view(BODY)


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_a_damaged_body_has_a_view_only_if_the_full_decode_takes_it(data: st.DataObject) -> None:
    """Bytes replaced, removed or inserted anywhere in a real review: never a view orjson would refuse."""
    body = bytearray(BODY)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body) - 1))
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        byte = data.draw(st.sampled_from([*b'{}[],:"\\ 0aeE.-+nulltrue', 0x01, 0x80, 0xC3, 0xFF]))
        if action == "replace":
            body[at] = byte
        elif action == "delete":
            del body[at]
        else:
            body.insert(at, byte)
    damaged = bytes(body)
    if decode_view(damaged) is not None:
        orjson.loads(damaged)


CASES = golden_cases(mirrors=False)


@pytest.mark.parametrize("name", CASES)
async def test_golden_reviews_viewed_both_ways_alike_and_answered_alike(name: str) -> None:
    case = GOLDEN / name
    body = (case / "request.json").read_bytes()
    sent: AdmissionReview = orjson.loads(body)
    view = decode_view(body)
    assert view is not None
    assert view.request is not None
    pod = sent["request"].get("object")
    assert view.request.object == (None if pod is None else pod_view(pod))
    policy = load_policy(_policy_file(case).read_text())
    handler = Handler(policy=lambda: policy)
    complete = await handler.handle(sent)
    now = handler.answer_now(view)  # remembered now, if the Pod is of a kind that is remembered
    assert now is None or now == complete


def _policy_file(case: Path) -> Path:
    return case / "policy.yaml" if (case / "policy.yaml").is_file() else GOLDEN / "policy.yaml"


async def test_the_hot_path_answers_from_the_view_once_the_complete_path_remembered_the_template() -> None:
    policy = load_policy("rules: [{name: hub, registries: [docker.io], secret: hub-pull}]")
    handler = Handler(policy=lambda: policy)
    first = review("team-a", obj=pod_body("nginx:1.27"), uid="first")
    view = decode_view(orjson.dumps(first))
    assert view is not None
    assert handler.answer_now(view) is None
    complete = await handler.handle(first)
    second = decode_view(orjson.dumps(review("team-a", obj=pod_body("nginx:1.27"), uid="second")))
    assert second is not None
    answer = handler.answer_now(second)
    assert isinstance(answer, dict)  # no ensurer: nothing to wait for
    assert answer["response"]["uid"] == "second"
    assert answer["response"].get("patch") == complete["response"].get("patch")
