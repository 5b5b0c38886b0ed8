"""Plain dicts for Kubernetes objects, their keys, and the slim forms the caches keep."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

KubeObject = dict[str, Any]
#: ``(namespace, name)`` of a namespaced object.
Key = tuple[str, str]

#: Called from a watch thread with ``(key, old, new)``; ``new`` is ``None`` on deletion.
ChangeFn = Callable[[Key, KubeObject | None, KubeObject | None], None]
def object_key(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


def namespace_labels(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _slim_secret(obj: KubeObject) -> KubeObject:
    """What we keep of a Secret: identity, our label and annotations, type and data.

    Dropping managedFields and the rest halves the memory of the cache and keeps
    anything we do not need out of the process.
    """
    metadata = obj.get("metadata") or {}
    return {
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "deletionTimestamp")
            if key in metadata
        },
        "type": obj.get("type"),
        "data": obj.get("data") or {},
    }


def _slim_namespace(obj: KubeObject) -> KubeObject:
    metadata = obj.get("metadata") or {}
    return {
        "metadata": {key: metadata[key] for key in ("name", "uid", "resourceVersion", "labels") if key in metadata},
        "status": {"phase": (obj.get("status") or {}).get("phase")},
    }


#: Where to watch Secrets of one name: ``None`` for cluster-wide, else one namespace.
SecretTarget = tuple[str | None, str]

