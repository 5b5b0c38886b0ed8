"""Pure JSON-patch operations that rewrite a Pod's images, and the record of the originals.

Every image the kubelet pulls for a Pod is here: ``initContainers`` (restartable sidecars
are init containers with ``restartPolicy: Always``, so they come along), ``containers``,
``ephemeralContainers`` and the image volumes of newer Kubernetes
(``spec.volumes[].image.reference``). Forgetting one of them is the classic bug of
image-rewriting webhooks: the Pod half-pulls from the mirror and half from the original.

The originals are kept in one annotation, a JSON object ``{"containers/app": "nginx", ...}``
(keys ``<kind>/<name>``, ``volumes/<name>`` for image volumes), so a human, an audit or a
rollback can see what the manifest said. An entry already recorded is never overwritten: the
first original wins, which keeps the record right across reinvocation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from webhook.admission.patch import CONTAINER_KINDS, annotation_op
from webhook.admission.wire import PatchOperation
from webhook.policy.mirrors import ORIGINAL_IMAGES_ANNOTATION

ImageKind = Literal["initContainers", "containers", "ephemeralContainers", "volumes"]


@dataclass(frozen=True, slots=True)
class PodImage:
    """One image reference in a Pod and the JSON pointer of the string that holds it."""

    kind: ImageKind
    index: int
    name: str
    image: object  # whatever the object holds; callers check it is a string

    @property
    def pointer(self) -> str:
        if self.kind == "volumes":
            return f"/spec/volumes/{self.index}/image/reference"
        return f"/spec/{self.kind}/{self.index}/image"

    @property
    def key(self) -> str:
        """The key of this image in :data:`ORIGINAL_IMAGES_ANNOTATION`."""
        return f"{self.kind}/{self.name}"


def iter_pod_images(spec: Mapping[str, Any]) -> Iterator[PodImage]:
    """Every image in the Pod spec: init, regular and ephemeral containers, then image volumes."""
    for kind in CONTAINER_KINDS:
        containers = spec.get(kind)
        if not isinstance(containers, list):
            continue
        for index, container in enumerate(containers):
            if isinstance(container, dict):
                name = container.get("name")
                yield PodImage(kind, index, name if isinstance(name, str) else "", container.get("image"))
    volumes = spec.get("volumes")
    if isinstance(volumes, list):
        for index, volume in enumerate(volumes):
            source = volume.get("image") if isinstance(volume, dict) else None
            if isinstance(source, dict):
                name = volume.get("name")
                yield PodImage("volumes", index, name if isinstance(name, str) else "", source.get("reference"))


@dataclass(frozen=True, slots=True)
class Replacement:
    """``image`` (as found in the Pod) becomes ``new``."""

    image: PodImage
    new: str


def recorded_originals(pod: Mapping[str, Any]) -> dict[str, str]:
    """The annotation's record, or ``{}`` when absent or not the JSON object we write."""
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    raw = annotations.get(ORIGINAL_IMAGES_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(raw, str):
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def rewrite_ops(
    pod: Mapping[str, Any], replacements: Sequence[Replacement], *, annotate: bool = True
) -> list[PatchOperation]:
    """``replace`` operations for the images, then the annotation (no replacements: no operations).

    ``annotate=False`` is for the ``pods/ephemeralcontainers`` subresource, whose update keeps
    only ``spec.ephemeralContainers`` (the API server drops a metadata change there).
    """
    changes = [r for r in replacements if r.new != r.image.image]
    if not changes:
        return []
    ops: list[PatchOperation] = [{"op": "replace", "path": r.image.pointer, "value": r.new} for r in changes]
    if not annotate:
        return ops
    record = recorded_originals(pod)
    for r in changes:
        if isinstance(r.image.image, str):
            record.setdefault(r.image.key, r.image.image)
    value = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    ops.append(annotation_op(pod, ORIGINAL_IMAGES_ANNOTATION, value))
    return ops


def apply_ops(pod: Mapping[str, Any], ops: Sequence[PatchOperation]) -> dict[str, Any]:
    """The Pod after ``ops`` (those :func:`rewrite_ops` makes), sharing what they do not touch.

    A copy-on-write walk instead of jsonpatch's deep copy: the admission path applies these on
    every rewritten Pod, and only a few strings change. Any other operation shape goes through
    jsonpatch, so the result is always what the API server would get.
    """
    result: dict[str, Any] = dict(pod)
    copied: set[tuple[str, ...]] = {()}
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if op["op"] not in ("add", "replace") or not parts:
            return _jsonpatch(pod, ops)
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            key: Any = int(part) if isinstance(node, list) else part
            if isinstance(node, list) and not (0 <= key < len(node)):
                return _jsonpatch(pod, ops)
            if isinstance(node, dict) and key not in node:
                return _jsonpatch(pod, ops)
            child = node[key]
            prefix = tuple(parts[: depth + 1])
            if prefix not in copied:
                child = list(child) if isinstance(child, list) else dict(child) if isinstance(child, dict) else child
                node[key] = child
                copied.add(prefix)
            node = child
        last = parts[-1]
        if not isinstance(node, dict) or (op["op"] == "replace" and last not in node):
            return _jsonpatch(pod, ops)
        node[last] = op["value"]
    return result


def _jsonpatch(pod: Mapping[str, Any], ops: Sequence[PatchOperation]) -> dict[str, Any]:
    import jsonpatch

    patched: dict[str, Any] = jsonpatch.apply_patch(dict(pod), list(ops), in_place=False)
    return patched
