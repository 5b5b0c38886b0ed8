"""Whole answers remembered per Pod template: the admission hot path's one cache.

Almost every Pod a cluster creates comes from a template (a ReplicaSet, a Job, a
StatefulSet), so the same containers reach the webhook again and again in namespaces
that admit the same rules. Planning such a Pod (parsing images, matching, building and
encoding the patch) costs about as much as the rest of the request together, and its
result depends on a handful of fields only. :func:`pod_fingerprint` extracts exactly those
fields; with the namespace's :class:`~webhook.policy.matching.NamespaceDecisions` they
key a :class:`PlannedAnswer`, so a repeated template costs one walk over its containers
and one dict lookup.

Pure: no I/O, nothing about a request but the Pod. What does depend on the cluster at
admission time (the Secrets being present, dry runs) is not part of an answer; the
handler still ensures the managed Secrets of every admission.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from msgspec import UNSET

from webhook.admission.patch import INJECTED_ANNOTATION
from webhook.admission.podplan import PodPlan, short
from webhook.admission.view import PodView
from webhook.admission.wire import encode_patch
from webhook.bounded import BoundedCache
from webhook.policy.matching import NamespaceDecisions
from webhook.policy.model import Rule

#: What :func:`plan_pod`, :func:`build_patch` and the image-volume check read of a Pod.
Fingerprint = tuple[Hashable, ...]
AnswerKey = tuple[NamespaceDecisions, Fingerprint]
AnswerCache = BoundedCache[AnswerKey, "PlannedAnswer"]

WARNING_PREFIX = "pullsecret-injector: "


@dataclass(frozen=True, slots=True)
class PlannedAnswer:
    """A Pod's answer before the cluster is involved: the patch, encoded, and what it means."""

    result: Literal["mutated", "unchanged"]
    #: The JSON patch, base64-encoded as the AdmissionResponse carries it (``None``: no patch).
    patch: str | None
    #: Warnings for the user, prefixed and shortened.
    warnings: tuple[str, ...] = ()
    #: Secrets with a source: made to exist in the namespace at every admission.
    managed: Mapping[str, Rule] = field(default_factory=dict)
    #: Names of the rules whose secrets the patch adds (the injections metric).
    injected: tuple[str, ...] = ()


def planned_answer(plan: PodPlan, warnings: tuple[str, ...] = ()) -> PlannedAnswer:
    """``plan`` as an answer; ``warnings`` (already prefixed) go before the plan's own."""
    return PlannedAnswer(
        result="mutated" if plan.patch else "unchanged",
        patch=encode_patch(plan.patch) if plan.patch else None,
        warnings=(*warnings, *(short(WARNING_PREFIX + w) for w in plan.warnings)),
        managed={name: rule for name, rule in plan.secrets.items() if rule.source is not None},
        injected=tuple(plan.secrets[name].name for name in plan.added if name in plan.secrets),
    )


def pod_fingerprint(pod: PodView) -> Fingerprint | None:
    """Every field of ``pod`` its plan depends on, or ``None`` for a Pod not worth remembering.

    That is: each container's name and image, by kind and in order; which pull secrets the
    Pod already names (absent and an empty list make different patches); and whether the
    annotations exist and what our annotation already records. Anything unusual (a name or
    image that is not a string, image volumes, which have their own path, metadata or
    annotations of the wrong type) is ``None``: such Pods are planned every time, exactly as
    before this cache existed; containers, volumes or pull secrets that are not objects
    have no view at all (:mod:`webhook.admission.view`). One function for both paths: the
    transport's view of the body and the view of a decoded Pod (:func:`~webhook.admission.view.pod_view`)
    give the same key for the same Pod. Exact ``type() is`` checks, not ``isinstance``: the
    cheaper test, and the views hold nothing but plain dicts, lists and strings.
    """
    spec = pod.spec
    metadata = pod.metadata
    if spec is None or metadata is None:
        return None
    parts: list[Hashable] = []
    for containers in (spec.initContainers, spec.containers, spec.ephemeralContainers):
        if containers is None:
            parts.append(None)
            continue
        names_and_images: list[object] = []
        for container in containers:
            names_and_images.append(container.name)
            names_and_images.append(container.image)
        for value in names_and_images:
            if type(value) is not str:
                return None
        parts.append(tuple(names_and_images))
    if spec.volumes is not None:
        for volume in spec.volumes:
            if volume.image is not UNSET:
                return None
    pulls = spec.imagePullSecrets
    if pulls is None:
        parts.append(None)
    else:
        parts.append(("list", *(entry.name for entry in pulls if type(entry.name) is str)))
    annotations = metadata.annotations
    if annotations is None:
        parts.append(("no-annotations",))
    elif type(annotations) is dict:
        recorded = annotations.get(INJECTED_ANNOTATION)
        parts.append(("recorded", recorded if type(recorded) is str else None))
    else:
        return None
    return tuple(parts)


__all__ = ["AnswerCache", "AnswerKey", "Fingerprint", "PlannedAnswer", "planned_answer", "pod_fingerprint"]
