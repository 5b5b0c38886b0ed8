"""Reading Kubernetes manifests for the offline ``check`` command.

Accepts what people keep in Git: multi-document YAML or JSON, ``List`` objects, Pods, and
the workloads that carry a Pod template. The template is explained as the Pod the
controller will create, which is what the webhook will see at admission time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import yaml

#: Workload kind -> path to its Pod template.
TEMPLATE_PATHS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Deployment": ("spec", "template"),
        "StatefulSet": ("spec", "template"),
        "DaemonSet": ("spec", "template"),
        "ReplicaSet": ("spec", "template"),
        "ReplicationController": ("spec", "template"),
        "Job": ("spec", "template"),
        "CronJob": ("spec", "jobTemplate", "spec", "template"),
        "PodTemplate": ("template",),
    }
)


class ManifestError(ValueError):
    """A manifest file that cannot be read as Kubernetes objects."""


@dataclass(frozen=True, slots=True)
class PodSource:
    """A Pod (or the Pod a workload's template makes), with where it came from."""

    origin: str  # "Deployment/web"
    namespace: str | None
    pod: Mapping[str, Any]


def load_documents(text: str, *, source: str) -> list[dict[str, Any]]:
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML or JSON: {exc}") from None
    objects: list[dict[str, Any]] = []
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ManifestError(f"{source}: document {index + 1} is not a Kubernetes object")
        objects.append(doc)
    return objects


def pods_of(obj: Mapping[str, Any]) -> Iterator[PodSource]:
    """The Pods an object stands for; yields nothing for kinds without Pods."""
    kind = obj.get("kind")
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    name = metadata.get("name") or metadata.get("generateName") or "?"
    namespace = metadata.get("namespace")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List") and isinstance(obj.get("items"), list)):
        for item in obj.get("items") or []:
            if isinstance(item, dict):
                yield from pods_of(item)
        return
    if kind == "Pod":
        yield PodSource(origin=f"Pod/{name}", namespace=namespace, pod=obj)
        return
    path = TEMPLATE_PATHS.get(str(kind))
    if path is None:
        return
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        raise ManifestError(f"{kind}/{name}: no Pod template at {'.'.join(path)}")
    template_meta = node.get("metadata") if isinstance(node.get("metadata"), dict) else {}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**(template_meta or {}), "generateName": f"{name}-"},
        "spec": node.get("spec") or {},
    }
    yield PodSource(origin=f"{kind}/{name}", namespace=namespace, pod=pod)
