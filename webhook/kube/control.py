"""The API calls of the control surface: the policy ConfigMap, the ledger, access reviews.

Kept apart from :class:`~webhook.kube.client.KubeApi` (Secrets, Namespaces, Events, the
Lease) because these calls are about the webhook itself, not about the copies it makes:
reading and annotating the policy ConfigMap a platform team edits, keeping the ownership
ledger (a ConfigMap the webhook owns in its namespace) and asking the authorizer what the
webhook may do before it accepts a policy. Same rules as ``KubeApi``: synchronous, called
from a worker thread, every call bounded by an explicit timeout, failures as
:class:`ApiError` describing the attempt and the HTTP status only.

ConfigMaps are listed and watched *by name* (``fieldSelector metadata.name=X``), so RBAC
``resourceNames`` can authorize them: the webhook reads no other ConfigMap.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from webhook.kube.client import RawApi
from webhook.kube.objects import KubeObject


class ControlApi(RawApi):
    """ConfigMaps by name, and (Self)SubjectAccessReviews, as raw JSON."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        super().__init__(api_client)
        self._authorization = k8s.AuthorizationV1Api(api_client)

    # ConfigMaps ---------------------------------------------------------------------

    def get_configmap(self, namespace: str, name: str, *, timeout: float) -> KubeObject | None:
        return self._read("ConfigMap", self._core.read_namespaced_config_map, namespace, name, timeout=timeout)

    def list_configmaps(self, namespace: str, name: str, *, timeout: float) -> KubeObject:
        """The ConfigMap ``name`` as a list of at most one (what a by-name watch starts from)."""
        return self._call(
            f"list ConfigMaps {name} in {namespace}",
            self._core.list_namespaced_config_map,
            namespace,
            field_selector=f"metadata.name={name}",
            timeout=timeout,
        )

    def watch_configmaps(
        self, namespace: str, name: str, *, resource_version: str, server_timeout: int, timeout: tuple[float, float]
    ) -> Any:
        """An open watch response (urllib3) for the ConfigMap ``name``."""
        return self._watch(
            f"watch ConfigMaps {name} in {namespace}",
            self._core.list_namespaced_config_map,
            namespace,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version,
            server_timeout=server_timeout,
            timeout=timeout,
        )

    def create_configmap(self, namespace: str, body: KubeObject, *, timeout: float) -> KubeObject:
        return self._create("ConfigMap", self._core.create_namespaced_config_map, namespace, body, timeout=timeout)

    def patch_configmap(self, namespace: str, name: str, patch: KubeObject, *, timeout: float) -> KubeObject:
        """A merge patch; with ``metadata.resourceVersion`` in it a concurrent change answers 409."""
        return self._write(
            "update", "ConfigMap", self._core.patch_namespaced_config_map, namespace, name, patch, timeout=timeout
        )

    # Access reviews -------------------------------------------------------------------

    def review_access(
        self, attributes: dict[str, str], *, user: str | None, groups: list[str], timeout: float
    ) -> tuple[bool, str]:
        """``(allowed, reason)`` for ``attributes``: of the caller (``user`` None), else of ``user``.

        A SelfSubjectAccessReview asks about the credentials of this very client (the
        webhook's ServiceAccount in a Pod); a SubjectAccessReview (``validate --cluster
        --as``) asks about someone else, which only an admin may.
        """
        if user is None:
            body: KubeObject = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
            answer = self._call(
                "create SelfSubjectAccessReview",
                self._authorization.create_self_subject_access_review,
                body,
                timeout=timeout,
            )
        else:
            body = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": groups, "resourceAttributes": attributes},
            }
            answer = self._call(
                "create SubjectAccessReview",
                self._authorization.create_subject_access_review,
                body,
                timeout=timeout,
            )
        status = answer.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or status.get("evaluationError") or "")
