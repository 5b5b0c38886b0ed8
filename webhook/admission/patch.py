"""Pure Pod inspection and JSON-patch building.

The patch is what the API server applies to the Pod, after the ServiceAccount admission
plugin has already copied the ServiceAccount's pull secrets in; so it never repeats a
name that is there, and applying our own output again adds nothing (the API server may
call us a second time under ``reinvocationPolicy: IfNeeded``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from webhook.admission.wire import PatchOperation

INJECTED_ANNOTATION = "pullsecret-injector.io/injected"
SKIP_LABEL = "pullsecret-injector.io/skip"

ContainerKind = Literal["initContainers", "containers", "ephemeralContainers"]
CONTAINER_KINDS: tuple[ContainerKind, ...] = ("initContainers", "containers", "ephemeralContainers")


def iter_container_images(pod_spec: Mapping[str, Any]) -> Iterator[tuple[ContainerKind, str, object]]:
    """Every container's ``(kind, name, image)``, init, regular and ephemeral, in spec order.

    Plain tuples (this is the admission hot path); ``image`` is whatever the object holds,
    the caller validates it.
    """
    for kind in CONTAINER_KINDS:
        containers = pod_spec.get(kind)
        if not isinstance(containers, list):
            continue
        for container in containers:
            if isinstance(container, dict):
                name = container.get("name")
                yield kind, name if isinstance(name, str) else "", container.get("image")


def escape_pointer(token: str) -> str:
    """RFC 6901: ``~`` is ``~0`` and ``/`` is ``~1`` inside one path token."""
    return token.replace("~", "~0").replace("/", "~1")


def existing_pull_secrets(pod_spec: Mapping[str, Any]) -> list[str]:
    entries = pod_spec.get("imagePullSecrets")
    if not isinstance(entries, list):
        return []
    return [e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]


def build_patch(*, pod: Mapping[str, Any], secrets: Sequence[str]) -> tuple[list[PatchOperation], list[str]]:
    """Operations that add ``secrets`` to the Pod's ``imagePullSecrets``.

    Returns the operations and the names actually added. Names already present are left
    alone; nothing to add means no operations at all (not even the annotation), so the
    patch is idempotent.
    """
    spec = pod.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    if spec.get("imagePullSecrets") is not None and not isinstance(spec["imagePullSecrets"], list):
        # Not a shape the API server produces; never overwrite what we cannot merge with.
        return [], []
    present = set(existing_pull_secrets(spec))
    added: list[str] = []
    for name in secrets:
        if name not in present and name not in added:
            added.append(name)
    if not added:
        return [], []

    ops: list[PatchOperation] = []
    if isinstance(spec.get("imagePullSecrets"), list):
        ops.extend({"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": n}} for n in added)
    else:
        # Absent or null: create the list ("add" replaces a null member).
        ops.append({"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": n} for n in added]})

    recorded = _recorded(pod)
    value = ",".join([*recorded, *(n for n in added if n not in recorded)])
    ops.append(annotation_op(pod, INJECTED_ANNOTATION, value))
    return ops, added


def annotation_op(pod: Mapping[str, Any], key: str, value: str) -> PatchOperation:
    """The operation that sets the Pod's annotation ``key`` to ``value``, whatever its metadata holds.

    A JSON patch cannot add below a parent that is missing (or null), so the parent is
    added whole, holding only this annotation; an annotation already there is replaced
    (``add`` on an object member replaces it). Every annotation the webhook records goes
    through here, so none of them can get the missing-parent case wrong.
    """
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(metadata, dict):
        return {"op": "add", "path": "/metadata", "value": {"annotations": {key: value}}}
    if not isinstance(annotations, dict):
        return {"op": "add", "path": "/metadata/annotations", "value": {key: value}}
    return {"op": "add", "path": f"/metadata/annotations/{escape_pointer(key)}", "value": value}


def _recorded(pod: Mapping[str, Any]) -> list[str]:
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict):
        return []
    value = annotations.get(INJECTED_ANNOTATION)
    if not isinstance(value, str):
        return []
    return [n for n in value.split(",") if n]


def is_skipped(pod: Mapping[str, Any]) -> bool:
    metadata = pod.get("metadata")
    return labels_skip(metadata.get("labels") if isinstance(metadata, dict) else None)


def labels_skip(labels: object) -> bool:
    """The Pod's labels (decoded or viewed) opt it out."""
    return isinstance(labels, dict) and labels.get(SKIP_LABEL) == "true"
