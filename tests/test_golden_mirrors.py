"""Golden AdmissionReviews for the mirrors: ``tests/golden/mirror-*``, same layout as ``test_golden.py``.

Each patch is applied with jsonpatch to the request's object, and then: only image fields,
``imagePullSecrets`` and our two annotations changed; every rewritten image is recorded with
its original; the rules' secrets for the rewritten images are there; and the patched Pod fed
back (reinvocation) gets no patch at all. The ``check`` cases probe loopback ports nobody
listens on, with the real probe (connection refused at once).

Regenerate after an intended change: ``UPDATE_GOLDEN=1 pytest tests/test_golden_mirrors.py``.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import jsonpatch
import pytest

from tests.builders import GOLDEN, golden_answer, golden_cases, reinvocation
from webhook.admission.handler import Handler
from webhook.admission.mirroring import MirrorChecker
from webhook.admission.patch import INJECTED_ANNOTATION
from webhook.admission.rewrite import iter_pod_images, recorded_originals
from webhook.policy.images import parse_image
from webhook.policy.matching import load_policy
from webhook.policy.mirrors import ORIGINAL_IMAGES_ANNOTATION
from webhook.registry.probe import ManifestProbe

CASES = golden_cases(mirrors=True)


@pytest.fixture
async def probe() -> AsyncIterator[ManifestProbe]:
    probe = ManifestProbe(timeout=0.5)
    try:
        yield probe
    finally:
        await probe.aclose()


def _images(pod: dict[str, Any]) -> dict[str, object]:
    return {f"{i.kind}/{i.name}": i.image for i in iter_pod_images(pod.get("spec") or {})}


def test_there_are_mirror_cases() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("name", CASES)
async def test_golden_mirror_case(name: str, probe: ManifestProbe) -> None:
    policy = load_policy((GOLDEN / name / "policy.yaml").read_text())
    handler = Handler(policy=lambda: policy, mirror_checker=MirrorChecker(probe=probe, budget=1.0))
    review, actual = await golden_answer(name, handler)

    pod = review["request"].get("object")
    assert isinstance(pod, dict)
    ops = actual["response"].get("patch", [])
    if not ops:
        assert "patchType" not in actual["response"]
        return
    patched = jsonpatch.apply_patch(pod, ops)
    before, after = _images(pod), _images(patched)
    assert before.keys() == after.keys()
    changed = {key for key in before if before[key] != after[key]}
    subresource = review["request"].get("subResource")
    if subresource is None:
        record = recorded_originals(patched)
        for key in changed:
            assert record[key] == before[key], f"{key}: original not recorded"
        # The rules' secrets for the rewritten images are on the Pod.
        names = [entry["name"] for entry in patched["spec"].get("imagePullSecrets") or []]
        assert len(names) == len(set(names))
        for key in changed:
            image = after[key]
            assert isinstance(image, str)
            rule = policy.decide(parse_image(image), review["request"]["namespace"], None).rule
            if rule is not None:
                assert rule.secret in names, f"{key}: {image} needs {rule.secret}"
    else:
        assert {op["path"].split("/")[2] for op in ops} == {"ephemeralContainers"}
    # Everything else is untouched.
    untouched = copy.deepcopy(patched)
    for kind, container_list in (pod.get("spec") or {}).items():
        if kind in ("initContainers", "containers", "ephemeralContainers"):
            for original, now in zip(container_list, untouched["spec"][kind], strict=True):
                now["image"] = original["image"]
    for original, now in zip(pod["spec"].get("volumes") or [], untouched["spec"].get("volumes") or [], strict=True):
        if "image" in original:
            now["image"]["reference"] = original["image"]["reference"]
    untouched["spec"].pop("imagePullSecrets", None)
    annotations = untouched.get("metadata", {}).get("annotations") or {}
    for key in (INJECTED_ANNOTATION, ORIGINAL_IMAGES_ANNOTATION):
        annotations.pop(key, None)
    expected_rest = copy.deepcopy(pod)
    expected_rest["spec"].pop("imagePullSecrets", None)
    rest_annotations = expected_rest.get("metadata", {}).get("annotations") or {}
    for key in (INJECTED_ANNOTATION, ORIGINAL_IMAGES_ANNOTATION):
        rest_annotations.pop(key, None)
    if not annotations:
        untouched.get("metadata", {}).pop("annotations", None)
        expected_rest.get("metadata", {}).pop("annotations", None)
    assert untouched == expected_rest

    # Reinvocation: our own output changes nothing.
    again = reinvocation(review, patched)
    if subresource is not None:
        again["request"]["oldObject"] = copy.deepcopy(patched)
    second = await handler.handle(again)
    assert "patch" not in second["response"]
