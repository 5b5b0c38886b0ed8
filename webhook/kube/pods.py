"""The Pod calls of fail-open recovery (webhook/recovery/): list the Pending Pods, delete one.

Kept apart from :class:`webhook.kube.client.KubeApi` on purpose: these are the only calls
that touch Pods, made only when ``--recover-fail-open`` is on, and authorized by their own
ClusterRole (charts/pullsecret-injector/templates/recovery-rbac.yaml: ``list`` and
``delete`` on ``pods``, nothing else). How a call is made is
:class:`~webhook.kube.client.RawApi`'s, as for every other wrapper: raw JSON, an explicit
timeout on every call, failures as :class:`ApiError` described without anything the server
sent back.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from webhook.kube.client import RawApi, _paging
from webhook.kube.errors import _classify, _timeout
from webhook.kube.objects import KubeObject


class PodApi(RawApi):
    """Synchronous Pod calls (call from a worker thread), each bounded by its ``timeout``."""

    def list_pending_pods(
        self, *, timeout: float, limit: int | None = None, continue_: str | None = None
    ) -> KubeObject:
        """One page of the Pending Pods of every namespace (``fieldSelector status.phase=Pending``).

        Only Pending Pods can be stuck on a pull; the API server filters, so a large
        cluster's running Pods never cross the wire.
        """
        return self._call(
            "list Pending Pods",
            self._core.list_pod_for_all_namespaces,
            field_selector="status.phase=Pending",
            timeout=timeout,
            **_paging(limit, continue_),
        )

    def delete_pod(self, namespace: str, name: str, *, uid: str, timeout: float) -> bool:
        """Delete the Pod, but only the one we judged (``uid`` precondition); False if it is gone already.

        No resourceVersion precondition: the kubelet updates a backing-off Pod's status all
        the time, and a newer status does not change the verdict.
        """
        body = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid))
        action = f"delete Pod {namespace}/{name}"
        # Untyped on purpose: with ``_preload_content=False`` the client returns the raw
        # urllib3 response, not the model class its annotations name.
        core: Any = self._core
        try:
            response = core.delete_namespaced_pod(
                name, namespace, body=body, _preload_content=False, _request_timeout=_timeout(timeout)
            )
            response.release_conn()
        except Exception as exc:
            error = _classify(exc, action)
            if error.kind in ("not_found", "conflict"):  # gone, or a new Pod of that name
                return False
            raise error from None
        return True


__all__ = ["PodApi"]
