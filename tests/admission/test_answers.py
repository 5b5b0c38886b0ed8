"""The remembered answers: a Pod template's answer is reused only when nothing it depends on differs.

The oracle is a handler whose caches are empty (``fresh``): for every Pod below, a handler
that has already answered the base template, and every other variant, answers exactly as a
fresh one does. Each variant changes one field the plan reads, so a fingerprint that forgot
that field would hand out the base template's answer and fail here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings

from tests.builders import pod_body, review
from tests.test_properties import review as generated_review
from tests.test_properties import run_now
from webhook.admission.answers import Fingerprint, pod_fingerprint
from webhook.admission.handler import Handler, Remembered
from webhook.admission.patch import INJECTED_ANNOTATION
from webhook.admission.view import decode_view, pod_view
from webhook.admission.wire import AdmissionReview
from webhook.policy.matching import CompiledPolicy, load_policy

POLICY = load_policy(
    """
rules:
  - {name: hub, registries: [docker.io], secret: hub-pull}
  - {name: quay, registries: [quay.io], namespaces: {include: ["team-*"]}, secret: quay-pull}
  - {name: gar, registries: ["*-docker.pkg.dev"], secret: gar-pull}
"""
)
GENERATED_POLICY = load_policy(
    """
rules:
  - {name: hub, registries: [docker.io], secret: hub}
  - {name: gar, registries: ["*-docker.pkg.dev"], repositories: ["p/*"], secret: gar}
  - {name: ns, registries: [quay.io], namespaces: {include: ["team-*"]}, secret: quay}
  - {name: any, registries: ["*"], secret: fallback}
"""
)
SHARED = Handler(policy=lambda: GENERATED_POLICY)
BASE = pod_body("nginx:1.27", "quay.io/team/app:1", name="web")
Edit = Callable[[dict[str, Any]], None]


def _set(path: tuple[str, ...], value: object) -> Edit:
    def edit(pod: dict[str, Any]) -> None:
        target = pod
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value

    return edit


def _container(index: int, field: str, value: object, kind: str = "containers") -> Edit:
    def edit(pod: dict[str, Any]) -> None:
        pod["spec"][kind][index][field] = value

    return edit


VARIANTS: list[tuple[str, Edit]] = [
    ("same-template", lambda pod: None),
    ("other-image", _container(0, "image", "europe-docker.pkg.dev/p/app:1")),
    ("same-image-other-tag", _container(1, "image", "quay.io/team/app:2")),
    ("other-container-name", _container(0, "name", "renamed")),
    ("invalid-image", _container(0, "image", "UPPER/Case::")),
    ("image-not-a-string", _container(0, "image", 42)),
    ("image-missing", lambda pod: pod["spec"]["containers"][0].pop("image")),
    ("container-not-an-object", _set(("spec", "containers"), ["nginx"])),
    ("no-containers", _set(("spec", "containers"), [])),
    ("init-container", _set(("spec", "initContainers"), [{"name": "i", "image": "gcr-docker.pkg.dev/x:1"}])),
    ("ephemeral-container", _set(("spec", "ephemeralContainers"), [{"name": "e", "image": "busybox"}])),
    ("secret-already-named", _set(("spec", "imagePullSecrets"), [{"name": "hub-pull"}])),
    ("other-secret-named", _set(("spec", "imagePullSecrets"), [{"name": "mine"}])),
    ("empty-pull-secret-list", _set(("spec", "imagePullSecrets"), [])),
    ("null-pull-secrets", _set(("spec", "imagePullSecrets"), None)),
    ("pull-secrets-not-a-list", _set(("spec", "imagePullSecrets"), {"name": "x"})),
    ("no-metadata", lambda pod: pod.pop("metadata")),
    ("no-annotations", lambda pod: pod["metadata"].pop("annotations", None)),
    ("annotations-null", _set(("metadata", "annotations"), None)),
    ("annotation-records-one", _set(("metadata", "annotations", INJECTED_ANNOTATION), "hub-pull")),
    ("annotation-records-other", _set(("metadata", "annotations", INJECTED_ANNOTATION), "older")),
    ("image-volume", _set(("spec", "volumes"), [{"name": "v", "image": {"reference": "quay.io/team/data:1"}}])),
    ("plain-volume", _set(("spec", "volumes"), [{"name": "v", "emptyDir": {}}])),
    ("skip-label", _set(("metadata", "labels"), {"pullsecret-injector.io/skip": "true"})),
    ("no-spec", lambda pod: pod.pop("spec")),
]


#: Edits no plan tells apart from the base: a volume that is no image, a null list (the same
#: patch as an absent one), the skip label (decided before any plan). Same fingerprint, and
#: the first test shows the same answer as a fresh handler's.
SAME_PLAN = {"plain-volume", "null-pull-secrets", "skip-label"}


def _variant(edit: Edit) -> dict[str, Any]:
    pod = copy.deepcopy(BASE)
    pod.setdefault("metadata", {}).setdefault("annotations", {"team": "web"})
    edit(pod)
    return pod


def _fingerprint(pod: dict[str, Any]) -> Fingerprint | None:
    """``pod``'s fingerprint, which both views must agree on: the decoded Pod's and the body's."""
    decoded = pod_view(pod)
    of_decoded = None if decoded is None else pod_fingerprint(decoded)
    body = decode_view(orjson.dumps(review("team-a", obj=pod)))
    # No view of the body (a container that is no object): no view of the decoded Pod either.
    pod_of_body = None if body is None or body.request is None else body.request.object
    assert (pod_of_body is None) == (decoded is None)
    assert of_decoded == (None if pod_of_body is None else pod_fingerprint(pod_of_body))
    return of_decoded


async def _answers(handler: Handler, request: AdmissionReview) -> list[object]:
    """What ``handler`` answers, from the body's view (if it answers at once) and from the whole review."""
    complete = await handler.handle(request)
    view = decode_view(orjson.dumps(request))
    now = None if view is None else handler.answer_now(view)
    if isinstance(now, Remembered):
        return [complete, await handler.finish(now)]
    return [complete, *([] if now is None else [now])]


async def _fresh_answer(request: AdmissionReview, policy: CompiledPolicy = POLICY) -> object:
    return await Handler(policy=lambda: policy).handle(request)


@pytest.mark.parametrize("namespace", ["team-a", "other"], ids=["quay-admitted", "quay-not-admitted"])
async def test_a_warmed_handler_answers_every_variant_as_a_fresh_one(namespace: str) -> None:
    warmed = Handler(policy=lambda: POLICY)
    # Every variant, twice, after the base template: each is answered from the cache the second time.
    for _round in range(2):
        for _name, edit in VARIANTS:
            request = review(namespace, obj=_variant(edit))
            fresh = await _fresh_answer(request)
            assert all(answer == fresh for answer in await _answers(warmed, request)), _name
    assert 0 < len(warmed.answers) < 2 * len(VARIANTS)


@pytest.mark.parametrize(
    ("name", "edit"), [v for v in VARIANTS if v[0] != "same-template"], ids=[v[0] for v in VARIANTS[1:]]
)
def test_each_field_the_plan_reads_changes_the_fingerprint_or_opts_out(name: str, edit: Edit) -> None:
    base, variant = _fingerprint(_variant(lambda pod: None)), _fingerprint(_variant(edit))
    assert base is not None
    assert (variant == base) == (name in SAME_PLAN)


async def test_the_same_template_in_namespaces_admitting_other_rules_gets_their_answers() -> None:
    handler = Handler(policy=lambda: POLICY)
    admitted, other = review("team-a", obj=_variant(lambda pod: None)), review("other", obj=_variant(lambda pod: None))
    first, second = await handler.handle(admitted), await handler.handle(other)
    assert first != second
    assert first == await _fresh_answer(admitted)
    assert second == await _fresh_answer(other)


async def test_a_new_policy_empties_the_caches_and_answers_by_the_new_rules() -> None:
    policies = [POLICY]
    handler = Handler(policy=lambda: policies[-1])
    request = review("team-a", obj=_variant(lambda pod: None))
    await handler.handle(request)
    assert len(handler.answers) == 1
    policies.append(load_policy("rules: [{name: hub, registries: [docker.io], secret: renamed-pull}]"))
    answer = await handler.handle(request)
    assert answer == await _fresh_answer(request, policies[-1])
    assert len(handler.answers) == 1  # the old policy's entry is gone, not kept beside the new one


@settings(max_examples=1500, deadline=None)
@given(generated_review())
def test_generated_reviews_are_answered_as_by_a_fresh_handler(sent: AdmissionReview) -> None:
    """The property suite's generated Pods, through one long-lived handler whose caches fill up."""
    fresh = run_now(_fresh_answer(sent, GENERATED_POLICY))
    assert all(answer == fresh for answer in run_now(_answers(SHARED, sent)))
