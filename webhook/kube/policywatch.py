"""One ConfigMap, by name, through the API: get, then watch, in a thread.

The policy used to come from the file the kubelet mounts, which it refreshes only after
its sync period plus its cache TTL (a minute or two; never, in a test harness with no
kubelet): an edit applied with ``kubectl apply`` was not seen for that long and Pods
admitted meanwhile missed the new rule. A watch delivers the edit in milliseconds. The
same watch keeps the ownership ledger (:mod:`webhook.kube.ledger`) in view on every replica.

Built on :class:`~webhook.kube.informer.ListWatch` (list, watch from its resourceVersion,
relist on 410, capped backoff): the list selects the one name, which is what RBAC
``resourceNames`` can authorize, so the webhook reads no other ConfigMap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from webhook.config import KubeSettings
from webhook.kube.control import ControlApi
from webhook.kube.informer import ListWatch, _watch_timeouts
from webhook.kube.objects import Key, KubeObject
from webhook.kube.store import Mark, Store
from webhook.observability.stats import Stats

log = logging.getLogger(__name__)


def slim_configmap(obj: KubeObject) -> KubeObject:
    """Identity, annotations and data: the rest (managedFields above all) is not needed."""
    metadata = obj.get("metadata") or {}
    return {
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "labels", "annotations")
            if key in metadata
        },
        "data": dict(obj.get("data") or {}),
    }


class ConfigMapWatch:
    """The live state of ConfigMap ``namespace/name``; ``on_change(obj or None)`` from the watch thread."""

    def __init__(
        self,
        *,
        api: ControlApi,
        namespace: str,
        name: str,
        settings: KubeSettings,
        stats: Stats,
        on_change: Callable[[KubeObject | None], None] | None = None,
    ) -> None:
        self.namespace, self.name = namespace, name
        self._on_change = on_change

        def changed(key: Key, before: KubeObject | None, after: KubeObject | None) -> None:
            if self._on_change is not None:
                self._on_change(after)

        self.store = Store(on_change=changed, slim=slim_configmap, only_name=name)

        def lister(limit: int | None, continue_: str | None) -> KubeObject:
            return api.list_configmaps(namespace, name, timeout=settings.request_timeout)

        def watcher(resource_version: str) -> Any:
            server, timeouts = _watch_timeouts(settings)
            return api.watch_configmaps(
                namespace, name, resource_version=resource_version, server_timeout=server, timeout=timeouts
            )

        self._watch = ListWatch(
            name=f"ConfigMap {namespace}/{name}",
            lister=lister,
            watcher=watcher,
            store=self.store,
            stats=stats,
            page_size=None,
        )

    def start(self) -> None:
        self._watch.start()

    def stop(self) -> ListWatch:
        self._watch.stop()
        return self._watch

    @property
    def synced(self) -> bool:
        return self.store.synced.is_set()

    def current(self) -> KubeObject | None:
        return self.store.get((self.namespace, self.name))

    def mark(self) -> Mark:
        """Before a write: see :meth:`put`."""
        return self.store.mark()

    def put(self, obj: KubeObject, *, since: Mark) -> None:
        """Write-through of what we just wrote, ahead of its watch event, unless the watch saw more ``since``."""
        self.store.put(obj, since=since)


__all__ = ["ConfigMapWatch", "slim_configmap"]
