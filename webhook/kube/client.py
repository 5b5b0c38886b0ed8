"""Every call to the Kubernetes API, and the caches the watches keep.

The webhook talks to the API in two ways, and both live here so that there is one place
to audit what it reads and writes:

* :class:`KubeApi`: request/response calls (get, create, patch, delete Secrets; get
  Namespaces; create Events; the Lease). The official client is synchronous, so callers
  run these in a thread pool (:class:`webhook.runtime.KubeRuntime` owns it) and never on
  the event loop. Every call carries an explicit ``_request_timeout`` and urllib3 retries
  are off, so a call takes at most the time it is given whatever the API server does
  (hangs, refuses connections, answers 5xx), and failures arrive as a subclass of
  :class:`~webhook.kube.errors.ApiError` (``ApiConflict``, ``ApiTimeout``...) whose
  ``kind`` is fit for metrics and messages. How one call is made (raw, bounded,
  classified) is :class:`RawApi`'s, which the other wrappers (``ControlApi``, ``PodApi``)
  extend too: they differ in what they may call, never in how.
* :class:`ListWatch`: one list-then-watch loop per thread, feeding a :class:`Store`
  under a lock. Secrets are only ever listed and watched *by name* (``fieldSelector
  metadata.name=X``), one watch per name the policy uses: that is what RBAC
  ``resourceNames`` can authorize, so the webhook needs no read access to any other
  Secret. Namespaces are watched as a whole (their labels drive the policy).

Responses are read as raw JSON (``_preload_content=False``) and kept as plain dicts:
deserializing every watched Secret into client model objects would cost more than the
rest of the work, and plain dicts are what :mod:`webhook.secrets.desired` compares.

Nothing here formats a response body, an object's data or a client exception text into a
log line or an error: those can hold credentials. Errors say what was attempted and the
HTTP status, nothing more.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from webhook.kube.errors import ApiError, ApiNotFound, _classify, _timeout
from webhook.kube.objects import KubeObject

USER_AGENT: Final = "pullsecret-injector"


# --------------------------------------------------------------------------- the client


def load_configuration(*, kubeconfig: Path | None) -> k8s.Configuration:
    """Client configuration from a kubeconfig file, or the in-cluster service account."""
    configuration = k8s.Configuration()
    if kubeconfig is not None:
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def build_api_client(*, configuration: k8s.Configuration, pool_size: int) -> k8s.ApiClient:
    """An ``ApiClient`` whose calls take exactly the time they are given.

    urllib3 retries are switched off: with its default (3 retries on connection and read
    errors) a GET given 2 s could take 8. Retrying is our decision, made with the budget
    in view. ``pool_size`` keeps that many connections alive (watches each hold one).
    """
    configuration.retries = False
    configuration.connection_pool_maxsize = pool_size
    api_client = k8s.ApiClient(configuration)
    api_client.user_agent = USER_AGENT  # who wrote it, in the API server's audit log
    return api_client


def _json(response: Any) -> KubeObject:
    try:
        data = response.data
    finally:
        response.release_conn()
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ApiError(action="decode response")
    return value


def _paging(limit: int | None, continue_: str | None) -> dict[str, Any]:
    paging: dict[str, Any] = {}
    if limit:
        paging["limit"] = limit
    if continue_:
        paging["_continue"] = continue_
    return paging


def _watching(resource_version: str, server_timeout: int, timeout: tuple[float, float]) -> dict[str, Any]:
    """The arguments of a raw watch from ``resource_version`` (empty: from now), with bookmarks."""
    kwargs: dict[str, Any] = {
        "watch": True,
        "allow_watch_bookmarks": True,
        "timeout_seconds": server_timeout,
        "_preload_content": False,
        "_request_timeout": timeout,
    }
    if resource_version:
        kwargs["resource_version"] = resource_version
    return kwargs


class RawApi:
    """What every API wrapper of the webhook shares: raw-JSON calls, each bounded, failing as ``ApiError``.

    :class:`KubeApi`, :class:`~webhook.kube.control.ControlApi` and
    :class:`~webhook.kube.pods.PodApi` are kept apart because they are authorized apart
    (different RBAC, made by different parts); how a call is made is one rule for all of
    them, so it is written once here: the response read raw and released, an explicit
    ``_request_timeout`` on every call, and a failure classified without anything the
    server sent back.
    """

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._client = api_client
        self._core = k8s.CoreV1Api(api_client)

    def close(self) -> None:
        """Close the idle pooled connections (calls in flight finish on theirs)."""
        self._client.close()  # type: ignore[no-untyped-call]

    @staticmethod
    def _call(action: str, fn: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any) -> KubeObject:
        try:
            return _json(fn(*args, _preload_content=False, _request_timeout=_timeout(timeout), **kwargs))
        except Exception as exc:
            raise _classify(exc, action) from None

    def _get(self, action: str, fn: Callable[..., Any], *args: Any, timeout: float) -> KubeObject | None:
        try:
            return self._call(action, fn, *args, timeout=timeout)
        except ApiNotFound:
            return None

    # One namespaced object: the action names it the same way for every kind
    # ("get Secret ns/name", "create Lease ns/name", "update ConfigMap ns/name").

    def _read(
        self, kind: str, fn: Callable[..., Any], namespace: str, name: str, *, timeout: float
    ) -> KubeObject | None:
        return self._get(f"get {kind} {namespace}/{name}", fn, name, namespace, timeout=timeout)

    @staticmethod
    def _create(kind: str, fn: Callable[..., Any], namespace: str, body: KubeObject, *, timeout: float) -> KubeObject:
        name = body["metadata"]["name"]
        return RawApi._call(f"create {kind} {namespace}/{name}", fn, namespace, body, timeout=timeout)

    @staticmethod
    def _write(
        verb: str, kind: str, fn: Callable[..., Any], namespace: str, name: str, body: KubeObject, *, timeout: float
    ) -> KubeObject:
        """A patch (``verb`` "update") or a PUT ("replace") of ``namespace/name``."""
        return RawApi._call(f"{verb} {kind} {namespace}/{name}", fn, name, namespace, body, timeout=timeout)

    @staticmethod
    def _watch(
        action: str,
        fn: Callable[..., Any],
        *args: Any,
        resource_version: str,
        server_timeout: int,
        timeout: tuple[float, float],
        **kwargs: Any,
    ) -> Any:
        """An open watch response (urllib3): the caller reads the stream, so it is not decoded here."""
        try:
            return fn(*args, **_watching(resource_version, server_timeout, timeout), **kwargs)
        except Exception as exc:
            raise _classify(exc, action) from None

    def create_event(self, namespace: str, body: KubeObject, *, timeout: float) -> None:
        self._call(f"create Event in {namespace}", self._core.create_namespaced_event, namespace, body, timeout=timeout)


class KubeApi(RawApi):
    """Synchronous raw-JSON API calls, each bounded by an explicit timeout (seconds).

    Call from a worker thread. Every method raises :class:`ApiError` on failure, except
    the ``get_*`` methods, which return ``None`` for 404.
    """

    def __init__(self, api_client: k8s.ApiClient) -> None:
        super().__init__(api_client)
        self._coordination = k8s.CoordinationV1Api(api_client)
        self._admission = k8s.AdmissionregistrationV1Api(api_client)

    # Secrets ----------------------------------------------------------------

    def get_secret(self, namespace: str, name: str, *, timeout: float) -> KubeObject | None:
        return self._read("Secret", self._core.read_namespaced_secret, namespace, name, timeout=timeout)

    def create_secret(self, namespace: str, body: KubeObject, *, timeout: float) -> KubeObject:
        return self._create("Secret", self._core.create_namespaced_secret, namespace, body, timeout=timeout)

    def patch_secret(self, namespace: str, name: str, patch: KubeObject, *, timeout: float) -> KubeObject:
        return self._write(
            "update", "Secret", self._core.patch_namespaced_secret, namespace, name, patch, timeout=timeout
        )

    def delete_secret(
        self, namespace: str, name: str, *, uid: str | None, resource_version: str | None, timeout: float
    ) -> None:
        """Delete, but only the object we looked at (uid and resourceVersion preconditions)."""
        preconditions = (
            k8s.V1Preconditions(uid=uid, resource_version=resource_version) if uid or resource_version else None
        )
        body = k8s.V1DeleteOptions(preconditions=preconditions)
        with contextlib.suppress(ApiNotFound):  # already gone: what we wanted
            self._call(
                f"delete Secret {namespace}/{name}",
                self._core.delete_namespaced_secret,
                name,
                namespace,
                body=body,
                timeout=timeout,
            )

    def list_secrets(
        self,
        name: str,
        namespace: str | None,
        *,
        timeout: float,
        limit: int | None = None,
        continue_: str | None = None,
    ) -> KubeObject:
        """Secrets named ``name`` in one namespace or cluster-wide: a list RBAC ``resourceNames`` allows.

        With ``limit``, one page of at most that many objects; the next page is asked for
        with the ``metadata.continue`` token of this one (a 410 ``gone`` when it expired).
        """
        where = f"in {namespace}" if namespace else "cluster-wide"
        fn, args = self._secrets_in(namespace)
        return self._call(
            f"list Secrets {name} {where}",
            fn,
            *args,
            field_selector=f"metadata.name={name}",
            timeout=timeout,
            **_paging(limit, continue_),
        )

    def watch_secrets(
        self,
        name: str,
        namespace: str | None,
        *,
        resource_version: str,
        server_timeout: int,
        timeout: tuple[float, float],
    ) -> Any:
        """An open watch response (urllib3) for the Secrets named ``name``."""
        fn, args = self._secrets_in(namespace)
        return self._watch(
            f"watch Secrets {name}",
            fn,
            *args,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version,
            server_timeout=server_timeout,
            timeout=timeout,
        )

    def _secrets_in(self, namespace: str | None) -> tuple[Callable[..., Any], tuple[str, ...]]:
        """The list call for Secrets of one namespace, or of all (``None``), and its positional arguments."""
        if namespace is None:
            return self._core.list_secret_for_all_namespaces, ()
        return self._core.list_namespaced_secret, (namespace,)

    # Namespaces ---------------------------------------------------------------

    def get_namespace(self, name: str, *, timeout: float) -> KubeObject | None:
        return self._get(f"get Namespace {name}", self._core.read_namespace, name, timeout=timeout)

    def list_namespaces(self, *, timeout: float, limit: int | None = None, continue_: str | None = None) -> KubeObject:
        """All Namespaces, or one page of them (see :meth:`list_secrets`)."""
        return self._call("list Namespaces", self._core.list_namespace, timeout=timeout, **_paging(limit, continue_))

    def watch_namespaces(self, *, resource_version: str, server_timeout: int, timeout: tuple[float, float]) -> Any:
        return self._watch(
            "watch Namespaces",
            self._core.list_namespace,
            resource_version=resource_version,
            server_timeout=server_timeout,
            timeout=timeout,
        )

    # The Lease ------------------------------------------------------------------

    def get_lease(self, namespace: str, name: str, *, timeout: float) -> KubeObject | None:
        return self._read("Lease", self._coordination.read_namespaced_lease, namespace, name, timeout=timeout)

    def create_lease(self, namespace: str, body: KubeObject, *, timeout: float) -> KubeObject:
        return self._create("Lease", self._coordination.create_namespaced_lease, namespace, body, timeout=timeout)

    def patch_lease(self, namespace: str, name: str, patch: KubeObject, *, timeout: float) -> KubeObject:
        return self._write(
            "update", "Lease", self._coordination.patch_namespaced_lease, namespace, name, patch, timeout=timeout
        )

    # Self-managed certificates (webhook.tls.selfcert) --------------------------------

    def replace_secret(self, namespace: str, name: str, body: KubeObject, *, timeout: float) -> KubeObject:
        """PUT: with ``metadata.resourceVersion`` set, a concurrent change answers 409."""
        return self._write(
            "replace", "Secret", self._core.replace_namespaced_secret, namespace, name, body, timeout=timeout
        )

    def get_webhook_config(self, name: str, *, timeout: float) -> KubeObject | None:
        return self._get(
            f"get MutatingWebhookConfiguration {name}",
            self._admission.read_mutating_webhook_configuration,
            name,
            timeout=timeout,
        )

    def patch_webhook_config(self, name: str, patch: list[KubeObject], *, timeout: float) -> KubeObject:
        """A JSON patch (a list): the client sends lists as application/json-patch+json."""
        return self._call(
            f"patch MutatingWebhookConfiguration {name}",
            self._admission.patch_mutating_webhook_configuration,
            name,
            patch,
            timeout=timeout,
        )


