"""Golden AdmissionReviews: request in, policy, expected response, as files under tests/golden.

Each folder holds ``request.json`` (a full AdmissionReview), an optional ``policy.yaml``
(else the shared one) and ``response.json``: the expected AdmissionReview answer with its
patch shown decoded (``patch`` is a JSON list here, base64 on the wire). Every patch is
applied with jsonpatch to the request's object, and the result is fed back to prove the
patch is idempotent.

To regenerate after an intended change: ``UPDATE_GOLDEN=1 pytest tests/admission/test_golden.py``,
then review the diff of the files by eye.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from tests.builders import GOLDEN
from webhook.admission.handler import Handler
from webhook.admission.patch import INJECTED_ANNOTATION
from webhook.admission.wire import AdmissionReview, parse_review
from webhook.policy.matching import load_policy

# The mirror-* cases rewrite images as well; tests/test_golden_mirrors.py runs them with checks of their own.
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "request.json").is_file() and not p.name.startswith("mirror-"))


def _handler_for(case: Path) -> Handler:
    policy_file = case / "policy.yaml" if (case / "policy.yaml").is_file() else GOLDEN / "policy.yaml"
    policy = load_policy(policy_file.read_text())
    return Handler(policy=lambda: policy)


def _readable(response: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(response)
    inner = result["response"]
    if "patch" in inner:
        inner["patch"] = json.loads(base64.b64decode(inner["patch"]))
    return result


def test_there_are_at_least_15_cases() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize("name", CASES)
async def test_golden_case(name: str) -> None:
    case = GOLDEN / name
    review = parse_review((case / "request.json").read_bytes())
    handler = _handler_for(case)
    actual = _readable(dict(await handler.handle(review)))
    expected_file = case / "response.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_file.write_text(json.dumps(actual, indent=2) + "\n")
    expected = json.loads(expected_file.read_text())
    assert actual == expected

    # The answer is about this request, in its own apiVersion.
    assert actual["apiVersion"] == review["apiVersion"]
    assert actual["response"]["uid"] == review["request"]["uid"]

    pod = review["request"].get("object")
    ops = actual["response"].get("patch", [])
    if not ops:
        assert "patchType" not in actual["response"]
        return
    assert actual["response"]["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(pod, ops)
    names = [entry["name"] for entry in patched["spec"]["imagePullSecrets"]]
    assert len(names) == len(set(names)), "a secret is listed twice"
    recorded = patched["metadata"]["annotations"][INJECTED_ANNOTATION].split(",")
    assert set(recorded) <= set(names)
    # Everything else in the Pod is untouched.
    untouched = copy.deepcopy(patched)
    untouched["spec"]["imagePullSecrets"] = (pod or {})["spec"].get("imagePullSecrets")
    if untouched["spec"]["imagePullSecrets"] is None and "imagePullSecrets" not in (pod or {})["spec"]:
        del untouched["spec"]["imagePullSecrets"]
    del untouched["metadata"]["annotations"][INJECTED_ANNOTATION]
    if not untouched["metadata"]["annotations"] and "annotations" not in (pod or {})["metadata"]:
        del untouched["metadata"]["annotations"]
    assert untouched == pod

    # Applying our own output again changes nothing (reinvocationPolicy: IfNeeded).
    again: AdmissionReview = copy.deepcopy(review)
    again["request"]["object"] = patched
    second = await handler.handle(again)
    assert "patch" not in second["response"]
