"""Read-only API reads for ``doctor`` and the one write of ``import --apply``, as raw JSON dicts.

Kept apart from :class:`webhook.kube.client.KubeApi` on purpose: that class is every call
the *server* makes, audited against the chart's RBAC; these are the calls a person makes
from a laptop with their own kubeconfig (Pods, workloads, Events, ServiceAccounts,
ConfigMaps, Endpoints and webhook configurations, none of which the server reads).

Errors never carry what the server sent back (a response body can quote a Secret): an
:class:`InspectError` says what was attempted and the HTTP status or failure kind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import orjson
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

TIMEOUT: Final = 10.0

#: ``kind`` (any case, singular, plural or short name) -> (canonical kind, API group).
WORKLOAD_KINDS: Final = MappingProxyType({
    "pod": "Pod",
    "pods": "Pod",
    "po": "Pod",
    "deployment": "Deployment",
    "deployments": "Deployment",
    "deploy": "Deployment",
    "statefulset": "StatefulSet",
    "statefulsets": "StatefulSet",
    "sts": "StatefulSet",
    "daemonset": "DaemonSet",
    "daemonsets": "DaemonSet",
    "ds": "DaemonSet",
    "replicaset": "ReplicaSet",
    "replicasets": "ReplicaSet",
    "rs": "ReplicaSet",
    "job": "Job",
    "jobs": "Job",
    "cronjob": "CronJob",
    "cronjobs": "CronJob",
    "cj": "CronJob",
})


class InspectError(Exception):
    """A failed read: ``kind`` is ``not_found``, ``forbidden``, ``unauthorized``, ``unavailable`` or ``error``."""

    def __init__(self, kind: str, action: str, status: int | None = None) -> None:
        self.kind = kind
        self.action = action
        self.status = status
        super().__init__(f"{action}: {f'HTTP {status} ' if status else ''}{kind.replace('_', ' ')}")


def _classify(exc: Exception, action: str) -> InspectError:
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        kind = {401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict", 422: "invalid"}.get(
            status, "unavailable" if status == 0 else "error"
        )
        return InspectError(kind, action, status or None)
    if isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3"):
        return InspectError("unavailable", action)
    return InspectError("error", action)


def default_kubeconfig() -> Path | None:
    """``$KUBECONFIG`` (first file), else ``~/.kube/config`` if it exists, else ``None`` (in-cluster)."""
    import os

    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0])
    home = Path.home() / ".kube" / "config"
    return home if home.exists() else None


class ClusterReader:
    """The reads ``doctor`` makes (and ``import --apply``'s create-or-replace), each with a timeout."""

    def __init__(self, *, kubeconfig: Path | None, context: str | None = None) -> None:
        configuration = k8s.Configuration()
        self.default_namespace = "default"
        try:
            if kubeconfig is not None:
                k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=str(kubeconfig), context=context, client_configuration=configuration
                )
                _, active = k8s_config.list_kube_config_contexts(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
                if context is None and isinstance(active, dict):
                    self.default_namespace = (active.get("context") or {}).get("namespace") or "default"
            else:
                k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                if ns_file.exists():
                    self.default_namespace = ns_file.read_text().strip() or "default"
        except (k8s_config.ConfigException, OSError) as exc:
            where = kubeconfig or "(in-cluster)"
            raise InspectError("error", f"load kubeconfig {where}: {type(exc).__name__}") from None
        configuration.retries = False
        self._client = k8s.ApiClient(configuration)
        self._client.user_agent = "pullsecret-injector-doctor"
        self._core = k8s.CoreV1Api(self._client)
        self._apps = k8s.AppsV1Api(self._client)
        self._batch = k8s.BatchV1Api(self._client)
        self._admission = k8s.AdmissionregistrationV1Api(self._client)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    @staticmethod
    def _call(action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            response = fn(*args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs)
            try:
                value = orjson.loads(response.data)
            finally:
                response.release_conn()
        except Exception as exc:
            raise _classify(exc, action) from None
        if not isinstance(value, dict):
            raise InspectError("error", action)
        return value

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(f"get Pod {namespace}/{name}", self._core.read_namespaced_pod, name, namespace)

    def workload(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        readers: dict[str, Callable[..., Any]] = {
            "Pod": self._core.read_namespaced_pod,
            "Deployment": self._apps.read_namespaced_deployment,
            "StatefulSet": self._apps.read_namespaced_stateful_set,
            "DaemonSet": self._apps.read_namespaced_daemon_set,
            "ReplicaSet": self._apps.read_namespaced_replica_set,
            "Job": self._batch.read_namespaced_job,
            "CronJob": self._batch.read_namespaced_cron_job,
        }
        return self._call(f"get {kind} {namespace}/{name}", readers[kind], name, namespace)

    def namespace(self, name: str) -> dict[str, Any]:
        return self._call(f"get Namespace {name}", self._core.read_namespace, name)

    def service_account(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"get ServiceAccount {namespace}/{name}", self._core.read_namespaced_service_account, name, namespace
        )

    def secret(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(f"get Secret {namespace}/{name}", self._core.read_namespaced_secret, name, namespace)

    def pod_events(self, namespace: str, name: str, uid: str | None = None) -> list[dict[str, Any]]:
        """The Events about one Pod (of this ``uid``: not those of an earlier Pod of the same name)."""
        selector = f"involvedObject.kind=Pod,involvedObject.name={name}"
        if uid:
            selector += f",involvedObject.uid={uid}"
        found = self._call(
            f"list Events of Pod {namespace}/{name}",
            self._core.list_namespaced_event,
            namespace,
            field_selector=selector,
        )
        return list(found.get("items") or [])

    def webhook_config(self, name: str) -> dict[str, Any]:
        return self._call(
            f"get MutatingWebhookConfiguration {name}", self._admission.read_mutating_webhook_configuration, name
        )

    def webhook_configs(self, label_selector: str) -> list[dict[str, Any]]:
        found = self._call(
            "list MutatingWebhookConfigurations",
            self._admission.list_mutating_webhook_configuration,
            label_selector=label_selector,
        )
        return list(found.get("items") or [])

    def config_map(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(f"get ConfigMap {namespace}/{name}", self._core.read_namespaced_config_map, name, namespace)

    def config_maps(self, label_selector: str) -> list[dict[str, Any]]:
        found = self._call(
            "list ConfigMaps", self._core.list_config_map_for_all_namespaces, label_selector=label_selector
        )
        return list(found.get("items") or [])

    def endpoints(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(f"get Endpoints {namespace}/{name}", self._core.read_namespaced_endpoints, name, namespace)

    def service(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(f"get Service {namespace}/{name}", self._core.read_namespaced_service, name, namespace)

    def pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        found = self._call(
            f"list Pods in {namespace}", self._core.list_namespaced_pod, namespace, label_selector=label_selector
        )
        return list(found.get("items") or [])

    def create_or_replace_secret(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """``import --apply``: create the Secret, or replace it (same type) keeping its resourceVersion."""
        metadata = body["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        try:
            return "created", self._call(
                f"create Secret {namespace}/{name}", self._core.create_namespaced_secret, namespace, body
            )
        except InspectError as exc:
            if exc.kind != "conflict":
                raise
        current = self.secret(namespace, name)
        replacement = {**body, "metadata": {**metadata, "resourceVersion": current["metadata"]["resourceVersion"]}}
        return "replaced", self._call(
            f"replace Secret {namespace}/{name}", self._core.replace_namespaced_secret, name, namespace, replacement
        )
