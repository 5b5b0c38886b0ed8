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

import copy
from pathlib import Path

import jsonpatch
import pytest

from tests.builders import GOLDEN, golden_answer, golden_cases, reinvocation
from webhook.admission.handler import Handler
from webhook.admission.patch import INJECTED_ANNOTATION
from webhook.policy.matching import load_policy

# The mirror-* cases rewrite images as well; tests/test_golden_mirrors.py runs them with checks of their own.
CASES = golden_cases(mirrors=False)


def _handler_for(case: Path) -> Handler:
    policy_file = case / "policy.yaml" if (case / "policy.yaml").is_file() else GOLDEN / "policy.yaml"
    policy = load_policy(policy_file.read_text())
    return Handler(policy=lambda: policy)


def test_there_are_at_least_15_cases() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize("name", CASES)
async def test_golden_case(name: str) -> None:
    handler = _handler_for(GOLDEN / name)
    review, actual = await golden_answer(name, handler)
    assert actual["apiVersion"] == review["apiVersion"], "in the request's own apiVersion"

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
    second = await handler.handle(reinvocation(review, patched))
    assert "patch" not in second["response"]
