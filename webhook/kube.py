"""Every call to the Kubernetes API, and the caches the watches keep.

The webhook talks to the API in two ways, and both live here so that there is one place
to audit what it reads and writes:

* :class:`KubeApi`: request/response calls (get, create, patch, delete Secrets; get
  Namespaces; create Events; the Lease). The official client is synchronous, so callers
  run these in a thread pool (:class:`webhook.sync.KubeRuntime` owns it) and never on
  the event loop. Every call carries an explicit ``_request_timeout`` and urllib3 retries
  are off, so a call takes at most the time it is given whatever the API server does
  (hangs, refuses connections, answers 5xx), and failures arrive as one
  :class:`ApiError` with a ``kind`` fit for metrics and messages.
* :class:`ListWatch`: one list-then-watch loop per thread, feeding a :class:`Store`
  under a lock. Secrets are only ever listed and watched *by name* (``fieldSelector
  metadata.name=X``), one watch per name the policy uses: that is what RBAC
  ``resourceNames`` can authorize, so the webhook needs no read access to any other
  Secret. Namespaces are watched as a whole (their labels drive the policy).

Responses are read as raw JSON (``_preload_content=False``) and kept as plain dicts:
deserializing every watched Secret into client model objects would cost more than the
rest of the work, and plain dicts are what :mod:`webhook.dockercfg` compares.

Nothing here formats a response body, an object's data or a client exception text into a
log line or an error: those can hold credentials. Errors say what was attempted and the
HTTP status, nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from webhook.logs import redact

log = logging.getLogger(__name__)

KubeObject = dict[str, Any]
#: ``(namespace, name)`` of a namespaced object.
Key = tuple[str, str]

#: Called from a watch thread with ``(key, old, new)``; ``new`` is ``None`` on deletion.
ChangeFn = Callable[[Key, KubeObject | None, KubeObject | None], None]

_MIN_TIMEOUT: Final = 0.05
USER_AGENT: Final = "pullsecret-injector"
T = TypeVar("T")


# --------------------------------------------------------------------------- settings and stats


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """Knobs of the Kubernetes side; the defaults are the production ones."""

    #: The webhook's own namespace (the Lease lives there).
    namespace: str = "pullsecret-system"
    #: Seconds an admission may spend making Secrets exist.
    ensure_timeout: float = 2.0
    #: Delete managed copies that no rule allows any more.
    cleanup: bool = True
    lease_name: str = "pullsecret-injector"
    #: Who we are in the Lease and in Events (the Pod name).
    identity: str = "pullsecret-injector"
    #: Full reconcile interval, on top of the passes that watch events trigger.
    resync_seconds: float = 300.0
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    #: Bound of each background (non-admission) API call.
    request_timeout: float = 10.0
    #: Server-side ``timeoutSeconds`` of a watch; jittered by up to 20 % like client-go's.
    watch_timeout: float = 300.0
    #: Connect timeout of list/watch calls.
    connect_timeout: float = 5.0
    #: Quiet time collecting watch events before a reconcile pass.
    debounce: float = 0.2
    #: Threads for request/response calls (watches have their own threads).
    workers: int = 16
    #: Writes the reconciler runs at once.
    reconcile_concurrency: int = 8
    #: The same Event (namespace, reason, Secret) is posted at most once per this many seconds.
    event_interval: float = 300.0
    #: How long ``start`` waits for the first list of every watch before serving anyway.
    sync_timeout: float = 15.0
    #: Objects per page when a watch lists (``limit``); 0 lists in one piece.
    list_page_size: int = 500


class Stats:
    """Counters for metrics, as a plain object: :mod:`webhook.metrics` turns them into Prometheus.

    Thread-safe (watch threads count too). Read the attributes, or ``snapshot()`` for a
    consistent copy; or pass callbacks, called after each update (from any thread, so
    they must be thread-safe: prometheus_client's are).

    * ``secret_writes[(operation, result)]``: operation ``create|update|delete``, result
      ``ok``, ``conflict`` (409: another writer won, or the object changed under us),
      ``error`` -> ``on_write(operation, result)``;
    * ``errors[kind]``: API error kinds (``timeout``, ``unavailable``, ``forbidden``,
      ``server_error``, ...), source problems (``SourceNotFound``, ``SourceMalformed``,
      ``NoMatchingCredentials``), ``watch`` -> ``on_error(kind)``;
    * ``ensures[outcome]``: admission-time ensures: ``fast`` (the cache showed the copy
      current: no API call), ``written``, ``unmanaged``, ``failed``, ``timeout``, ``dry_run``;
    * ``events[outcome]``: Kubernetes Events posted (``ok``) or lost (``error``, ``dropped``);
    * ``reconcile_lag_seconds``: from the first change a reconcile pass handled to its end;
      ``current_lag()``: age of the oldest change not yet reconciled, 0 when caught up;
    * ``last_sync_timestamp``: wall-clock end of the last leader pass without errors
      -> ``on_sync(timestamp)``;
    * ``leader``: whether this replica runs the reconciler.
    """

    def __init__(
        self,
        *,
        on_write: Callable[[str, str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_sync: Callable[[float], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._on_write = on_write
        self._on_error = on_error
        self._on_sync = on_sync
        self.secret_writes: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[str] = Counter()
        self.ensures: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.reconcile_lag_seconds: float | None = None
        self.last_sync_timestamp: float | None = None
        self.leader = False
        self._behind_since: float | None = None

    def write(self, operation: str, result: str) -> None:
        with self._lock:
            self.secret_writes[(operation, result)] += 1
        if self._on_write is not None:
            self._on_write(operation, result)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1
        if self._on_error is not None:
            self._on_error(kind)

    def ensure(self, outcome: str) -> None:
        with self._lock:
            self.ensures[outcome] += 1

    def event(self, outcome: str) -> None:
        with self._lock:
            self.events[outcome] += 1

    def behind(self, since: float | None) -> None:
        """The reconciler has changes to apply since ``since`` (monotonic), or none (``None``)."""
        self._behind_since = since

    def current_lag(self) -> float:
        since = self._behind_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def reconciled(self, *, lag: float | None, clean: bool) -> None:
        now = time.time()
        with self._lock:
            if lag is not None:
                self.reconcile_lag_seconds = lag
            if clean:
                self.last_sync_timestamp = now
        if clean and self._on_sync is not None:
            self._on_sync(now)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "secret_writes": dict(self.secret_writes),
                "errors": dict(self.errors),
                "ensures": dict(self.ensures),
                "events": dict(self.events),
                "reconcile_lag_seconds": self.reconcile_lag_seconds,
                "current_lag_seconds": self.current_lag(),
                "last_sync_timestamp": self.last_sync_timestamp,
                "leader": self.leader,
            }


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A failed API call, described without anything the server sent back.

    ``kind`` is one of ``timeout``, ``unavailable`` (connection refused/reset, DNS),
    ``unauthorized``, ``forbidden``, ``not_found``, ``conflict``, ``gone``, ``invalid``,
    ``too_many_requests``, ``server_error``, ``error``.
    """

    def __init__(self, kind: str, *, action: str, status: int | None = None) -> None:
        self.kind = kind
        self.action = action
        self.status = status
        detail = f"HTTP {status}" if status else kind.replace("_", " ")
        super().__init__(f"{action}: {detail}")

    @property
    def transient(self) -> bool:
        """Worth retrying later without any change on our side."""
        return self.kind in ("timeout", "unavailable", "too_many_requests", "server_error", "error")


_STATUS_KINDS: Final = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    410: "gone",
    422: "invalid",
    400: "invalid",
    429: "too_many_requests",
}


def _classify(exc: BaseException, action: str) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        if status == 0:  # the client's own wrapper for TLS errors and the like
            return ApiError("unavailable", action=action)
        kind = _STATUS_KINDS.get(status, "server_error" if status >= 500 else "error")
        return ApiError(kind, action=action, status=status)
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionError):
        # Checked first: urllib3 makes NewConnectionError a ConnectTimeoutError, for history's sake.
        return ApiError("unavailable", action=action)
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return ApiError("timeout", action=action)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return ApiError("unavailable", action=action)
    return ApiError("error", action=action)


def _timeout(seconds: float) -> float:
    return max(_MIN_TIMEOUT, seconds)


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
        raise ApiError("error", action="decode response")
    return value


def _paging(limit: int | None, continue_: str | None) -> dict[str, Any]:
    paging: dict[str, Any] = {}
    if limit:
        paging["limit"] = limit
    if continue_:
        paging["_continue"] = continue_
    return paging


class KubeApi:
    """Synchronous raw-JSON API calls, each bounded by an explicit timeout (seconds).

    Call from a worker thread. Every method raises :class:`ApiError` on failure, except
    the ``get_*`` methods, which return ``None`` for 404.
    """

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._client = api_client
        self._core = k8s.CoreV1Api(api_client)
        self._coordination = k8s.CoordinationV1Api(api_client)
        self._admission = k8s.AdmissionregistrationV1Api(api_client)

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
        except ApiError as exc:
            if exc.kind == "not_found":
                return None
            raise

    # Secrets ----------------------------------------------------------------

    def get_secret(self, namespace: str, name: str, *, timeout: float) -> KubeObject | None:
        return self._get(
            f"get Secret {namespace}/{name}", self._core.read_namespaced_secret, name, namespace, timeout=timeout
        )

    def create_secret(self, namespace: str, body: KubeObject, *, timeout: float) -> KubeObject:
        name = body["metadata"]["name"]
        return self._call(
            f"create Secret {namespace}/{name}", self._core.create_namespaced_secret, namespace, body, timeout=timeout
        )

    def patch_secret(self, namespace: str, name: str, patch: KubeObject, *, timeout: float) -> KubeObject:
        return self._call(
            f"update Secret {namespace}/{name}",
            self._core.patch_namespaced_secret,
            name,
            namespace,
            patch,
            timeout=timeout,
        )

    def delete_secret(
        self, namespace: str, name: str, *, uid: str | None, resource_version: str | None, timeout: float
    ) -> None:
        """Delete, but only the object we looked at (uid and resourceVersion preconditions)."""
        preconditions = (
            k8s.V1Preconditions(uid=uid, resource_version=resource_version) if uid or resource_version else None
        )
        body = k8s.V1DeleteOptions(preconditions=preconditions)
        try:
            self._call(
                f"delete Secret {namespace}/{name}",
                self._core.delete_namespaced_secret,
                name,
                namespace,
                body=body,
                timeout=timeout,
            )
        except ApiError as exc:
            if exc.kind != "not_found":
                raise

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
        selector = f"metadata.name={name}"
        where = f"in {namespace}" if namespace else "cluster-wide"
        paging = _paging(limit, continue_)
        if namespace is None:
            return self._call(
                f"list Secrets {name} {where}",
                self._core.list_secret_for_all_namespaces,
                field_selector=selector,
                timeout=timeout,
                **paging,
            )
        return self._call(
            f"list Secrets {name} {where}",
            self._core.list_namespaced_secret,
            namespace,
            field_selector=selector,
            timeout=timeout,
            **paging,
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
        kwargs: dict[str, Any] = {
            "field_selector": f"metadata.name={name}",
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": server_timeout,
            "_preload_content": False,
            "_request_timeout": timeout,
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            if namespace is None:
                return self._core.list_secret_for_all_namespaces(**kwargs)
            return self._core.list_namespaced_secret(namespace, **kwargs)
        except Exception as exc:
            raise _classify(exc, f"watch Secrets {name}") from None

    # Namespaces ---------------------------------------------------------------

    def get_namespace(self, name: str, *, timeout: float) -> KubeObject | None:
        return self._get(f"get Namespace {name}", self._core.read_namespace, name, timeout=timeout)

    def list_namespaces(self, *, timeout: float, limit: int | None = None, continue_: str | None = None) -> KubeObject:
        """All Namespaces, or one page of them (see :meth:`list_secrets`)."""
        return self._call("list Namespaces", self._core.list_namespace, timeout=timeout, **_paging(limit, continue_))

    def watch_namespaces(self, *, resource_version: str, server_timeout: int, timeout: tuple[float, float]) -> Any:
        kwargs: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": server_timeout,
            "_preload_content": False,
            "_request_timeout": timeout,
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            return self._core.list_namespace(**kwargs)
        except Exception as exc:
            raise _classify(exc, "watch Namespaces") from None

    # Events and the Lease ------------------------------------------------------

    def create_event(self, namespace: str, body: KubeObject, *, timeout: float) -> None:
        self._call(f"create Event in {namespace}", self._core.create_namespaced_event, namespace, body, timeout=timeout)

    def get_lease(self, namespace: str, name: str, *, timeout: float) -> KubeObject | None:
        return self._get(
            f"get Lease {namespace}/{name}", self._coordination.read_namespaced_lease, name, namespace, timeout=timeout
        )

    def create_lease(self, namespace: str, body: KubeObject, *, timeout: float) -> KubeObject:
        name = body["metadata"]["name"]
        return self._call(
            f"create Lease {namespace}/{name}",
            self._coordination.create_namespaced_lease,
            namespace,
            body,
            timeout=timeout,
        )

    def patch_lease(self, namespace: str, name: str, patch: KubeObject, *, timeout: float) -> KubeObject:
        return self._call(
            f"update Lease {namespace}/{name}",
            self._coordination.patch_namespaced_lease,
            name,
            namespace,
            patch,
            timeout=timeout,
        )

    # Self-managed certificates (webhook.selfcert) --------------------------------

    def replace_secret(self, namespace: str, name: str, body: KubeObject, *, timeout: float) -> KubeObject:
        """PUT: with ``metadata.resourceVersion`` set, a concurrent change answers 409."""
        return self._call(
            f"replace Secret {namespace}/{name}",
            self._core.replace_namespaced_secret,
            name,
            namespace,
            body,
            timeout=timeout,
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


# --------------------------------------------------------------------------- running calls


class Runner:
    """Runs blocking API calls in a bounded thread pool, off the event loop, each within a timeout.

    ``fn`` receives the timeout to pass to the client, and the wait for it is bounded by
    the same timeout (plus a little grace) on the asyncio side: the socket timeout cannot
    cover the time a call waits for a free worker, nor a server trickling bytes. Bounded
    pool on purpose: when the API server hangs, at most ``workers`` threads wait on it,
    each no longer than its own timeout.
    """

    GRACE: Final = 0.25

    def __init__(self, workers: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube-api")

    async def __call__(self, fn: Callable[[float], T], *, timeout: float, action: str) -> T:
        if timeout <= 0:
            raise ApiError("timeout", action=action)
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, timeout)
        try:
            return await asyncio.wait_for(future, timeout + self.GRACE)
        except TimeoutError:
            raise ApiError("timeout", action=action) from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class EventRecorder:
    """Posts core/v1 Events on a namespace when a Secret could not be provided there.

    Fire and forget: ``warn`` never blocks and never fails (the API may be the very thing
    that is down); a bounded queue drains in the background, and the same (namespace,
    reason, Secret) is posted at most once per ``event_interval``, so a crash-looping
    Deployment does not turn into an Event storm.
    """

    def __init__(self, *, api: KubeApi, runner: Runner, settings: KubeSettings, stats: Stats) -> None:
        self._api = api
        self._runner = runner
        self._settings = settings
        self._stats = stats
        self._queue: asyncio.Queue[KubeObject] = asyncio.Queue(maxsize=256)
        self._last: dict[tuple[str, str, str], float] = {}

    def warn(self, *, namespace: str, secret: str, reason: str, message: str) -> None:
        self._post(namespace=namespace, name=secret, reason=reason, message=message, involved=None)

    def warn_configmap(self, *, namespace: str, name: str, reason: str, message: str) -> None:
        """An Event on a ConfigMap (the policy's, when a new version is rejected)."""
        involved = {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "namespace": namespace}
        self._post(namespace=namespace, name=f"configmap/{name}", reason=reason, message=message, involved=involved)

    def _post(self, *, namespace: str, name: str, reason: str, message: str, involved: dict[str, str] | None) -> None:
        now = time.monotonic()
        key = (namespace, reason, name)
        last = self._last.get(key)
        if last is not None and now - last < self._settings.event_interval:
            return
        if len(self._last) > 4096:
            self._last = {k: t for k, t in self._last.items() if now - t < self._settings.event_interval}
        self._last[key] = now
        try:
            self._queue.put_nowait(
                self._event(namespace=namespace, reason=reason, message=redact(message), involved=involved)
            )
        except asyncio.QueueFull:
            self._stats.event("dropped")

    def _event(self, *, namespace: str, reason: str, message: str, involved: dict[str, str] | None) -> KubeObject:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": "pullsecret-injector.", "namespace": namespace},
            # A Namespace is cluster-scoped, but a core/v1 Event must live in the namespace
            # of its involvedObject: naming the namespace there too puts the Event where
            # `kubectl get events -n <namespace>` shows it.
            "involvedObject": involved
            or {"apiVersion": "v1", "kind": "Namespace", "name": namespace, "namespace": namespace},
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": "pullsecret-injector"},
            "reportingComponent": "pullsecret-injector",
            "reportingInstance": self._settings.identity[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    async def run(self) -> None:
        """Drain the queue until cancelled."""
        api = self._api
        while True:
            event = await self._queue.get()
            namespace = event["metadata"]["namespace"]
            try:
                await self._runner(
                    lambda timeout: api.create_event(namespace, event, timeout=timeout),  # noqa: B023
                    timeout=self._settings.request_timeout,
                    action=f"create Event in {namespace}",
                )
            except ApiError as exc:
                self._stats.event("error")
                log.info("event in %s not recorded (%s)", namespace, exc.kind)
            except Exception:
                self._stats.event("error")
                log.exception("event in %s not recorded", namespace)
            else:
                self._stats.event("ok")


# --------------------------------------------------------------------------- stores and watches


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


class Store:
    """Objects by key under a lock, filled by one :class:`ListWatch`; tells ``on_change``."""

    def __init__(
        self,
        *,
        on_change: ChangeFn | None = None,
        slim: Callable[[KubeObject], KubeObject] = dict,
        only_name: str | None = None,
    ) -> None:
        self._objects: dict[Key, KubeObject] = {}
        self._lock = threading.Lock()
        self._on_change = on_change
        self._slim = slim
        # The field selector, enforced on our side as well: an emulator or a proxy that
        # ignores it must not fill the cache with Secrets we never asked for.
        self._only_name = only_name
        self.synced = threading.Event()

    def _wanted(self, key: Key) -> bool:
        return self._only_name is None or key[1] == self._only_name

    def get(self, key: Key) -> KubeObject | None:
        with self._lock:
            return self._objects.get(key)

    def items(self) -> list[tuple[Key, KubeObject]]:
        with self._lock:
            return list(self._objects.items())

    def replace(self, objects: Iterable[KubeObject]) -> None:
        """A fresh list: the new truth, with the differences reported as changes."""
        fresh: dict[Key, KubeObject] = {}
        self.slim_into(fresh, objects)
        self.install(fresh)

    def slim_into(self, fresh: dict[Key, KubeObject], objects: Iterable[Any]) -> None:
        """Add the slim form of the wanted ``objects`` (one page of a list) to ``fresh``.

        Only the slim objects are kept: the page as decoded can be freed right after.
        """
        slim, wanted = self._slim, self._wanted
        for obj in objects:
            if isinstance(obj, dict) and wanted(key := object_key(obj)):
                fresh[key] = slim(obj)

    def install(self, fresh: dict[Key, KubeObject]) -> None:
        """Make ``fresh`` (filled by :meth:`slim_into`) the new truth; the differences are changes."""
        with self._lock:
            old = self._objects
            self._objects = fresh
        for key in old.keys() | fresh.keys():
            before, after = old.get(key), fresh.get(key)
            if before != after:
                self._notify(key, before, after)
        self.synced.set()

    def apply(self, event_type: str, obj: KubeObject) -> None:
        key = object_key(obj)
        if not self._wanted(key):
            return
        with self._lock:
            before = self._objects.get(key)
            if event_type == "DELETED":
                after = None
                self._objects.pop(key, None)
            else:
                after = self._slim(obj)
                self._objects[key] = after
        if before != after:
            self._notify(key, before, after)

    def put(self, obj: KubeObject) -> None:
        """Write-through of an object we just wrote or read, ahead of its watch event."""
        self.apply("MODIFIED", obj)

    def forget(self, key: Key) -> None:
        self.apply("DELETED", {"metadata": {"namespace": key[0], "name": key[1]}})

    def _notify(self, key: Key, before: KubeObject | None, after: KubeObject | None) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(key, before, after)
        except Exception:
            log.exception("change handler failed")


def _iter_lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(amt=65536, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


#: Objects per page of a list (``limit``); client-go's reflector asks for 500 as well.
LIST_PAGE_SIZE: Final = 500

#: ``lister(limit, continue_token)``: one page of the list (``limit`` ``None``: all of it at once).
Lister = Callable[[int | None, str | None], KubeObject]


class ListWatch:
    """List, then watch from the list's resourceVersion, in a daemon thread, forever.

    The list is read in pages of ``page_size`` objects (``limit``/``continue``), each page
    slimmed into the store's new contents and dropped before the next is read: 10,000
    objects decoded in one piece would leave the process tens of MB larger for good (the
    allocator does not give back memory freed between the objects that stay). A
    ``continue`` token that expires mid-list (410 Gone: the list took longer than the API
    server keeps its snapshot) starts the list again from the first page; after
    ``PAGED_RESTARTS`` such restarts the list is read in one piece, as client-go's pager
    falls back to a full list.

    A watch that ends (server timeout, read timeout on a quiet stream) is resumed from the
    last resourceVersion seen; a 410 Gone or any error goes back to a fresh list, after a
    capped, jittered backoff. ``stop()`` closes the open response from the outside so the
    thread ends at once rather than at its next read timeout.
    """

    PAGED_RESTARTS: Final = 2

    def __init__(
        self,
        *,
        name: str,
        lister: Lister,
        watcher: Callable[[str], Any],
        store: Store,
        stats: Stats,
        backoff: tuple[float, float] = (0.5, 30.0),
        page_size: int | None = LIST_PAGE_SIZE,
    ) -> None:
        self.name = name
        self._lister = lister
        self._page_size = page_size
        #: Pages read and continue-token expiries (410) seen, for tests and logs.
        self.pages = 0
        self.expired_continues = 0
        self._watcher = watcher
        self.store = store
        self._stats = stats
        self._backoff = backoff
        self._stop = threading.Event()
        self._response: Any = None
        self._response_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"watch {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread: the flag, plus a shutdown of the open stream to wake its blocked read."""
        self._stop.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:
                log.debug("interrupting the watch %s failed", self.name)

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                self._list_and_watch()
                delay = self._backoff[0]
            except Exception as exc:
                if self._stop.is_set():
                    break
                error = _classify(exc, f"watch {self.name}")
                self._stats.error("watch")
                log.warning("%s failed (%s), listing again in %.1fs", error.action, error.kind, delay)
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._backoff[1])

    def _list(self) -> str | None:
        """Fill the store from a fresh list, page by page; the list's resourceVersion (``None``: stopped)."""
        restarts = 0
        while True:
            limit = self._page_size if restarts < self.PAGED_RESTARTS else None
            fresh: dict[Key, KubeObject] = {}
            token: str | None = None
            resource_version = ""
            try:
                while True:
                    page = self._lister(limit, token)
                    self.pages += 1
                    self.store.slim_into(fresh, page.get("items") or ())
                    metadata = page.get("metadata") or {}
                    resource_version = str(metadata.get("resourceVersion") or "")
                    token = str(metadata.get("continue") or "") or None
                    del page, metadata  # nothing of the decoded page outlives its slim objects
                    if token is None or limit is None:
                        break
                    if self._stop.is_set():
                        return None
            except ApiError as exc:
                if exc.kind != "gone" or token is None:
                    raise
                # The continue token expired: the pages read so far are of an older snapshot.
                self.expired_continues += 1
                restarts += 1
                log.debug("%s: list continue token expired, listing again from the start", self.name)
                continue
            count = len(fresh)
            self.store.install(fresh)
            log.debug("%s: listed %d object(s)", self.name, count)
            return resource_version

    def _list_and_watch(self) -> None:
        listed = self._list()
        if listed is None:
            return
        resource_version = listed
        while not self._stop.is_set():
            response = self._watcher(resource_version)
            with self._response_lock:
                self._response = response
            if self._stop.is_set():
                response.close()
                return
            try:
                for line in _iter_lines(response):
                    event = orjson.loads(line)
                    kind = event.get("type")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        code = obj.get("code")
                        if code == 410:
                            log.debug("%s: resourceVersion too old, listing again", self.name)
                            return
                        raise ApiError("server_error" if (code or 0) >= 500 else "error", action=self.name, status=code)
                    version = (obj.get("metadata") or {}).get("resourceVersion")
                    if version:
                        resource_version = str(version)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self.store.apply(kind, obj)
            except urllib3.exceptions.ReadTimeoutError:
                pass  # a quiet stream: resume from where we are
            except urllib3.exceptions.ProtocolError:
                if self._stop.is_set():
                    return
                raise
            finally:
                with self._response_lock:
                    self._response = None
                # Close, never hand back to the pool: after a shutdown from ``stop`` the
                # socket is only half closed, and the server would keep streaming to it.
                response.close()


@dataclass
class WatchSet:
    """The running watches by target; ``sync`` starts new targets and stops dropped ones."""

    watches: dict[Any, ListWatch] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop_all(self) -> list[ListWatch]:
        with self.lock:
            stopped = list(self.watches.values())
            self.watches.clear()
        for watch in stopped:
            watch.stop()
        return stopped


def _watch_timeouts(settings: KubeSettings) -> tuple[int, tuple[float, float]]:
    server = int(settings.watch_timeout * random.uniform(1.0, 1.2))
    return server, (settings.connect_timeout, server + 30.0)


#: Where to watch Secrets of one name: ``None`` for cluster-wide, else one namespace.
SecretTarget = tuple[str | None, str]


class SecretCache:
    """Secrets by ``(namespace, name)``, fed by one by-name watch per :data:`SecretTarget`.

    A lookup says not only what is there but whether the cache *knows*: only a target
    whose first list has completed can answer "absent" without an API call.
    """

    def __init__(self, *, api: KubeApi, settings: KubeSettings, stats: Stats, on_change: ChangeFn | None) -> None:
        self._api = api
        self._settings = settings
        self._stats = stats
        self._on_change = on_change
        self._watches = WatchSet()

    def _target_for(self, namespace: str, name: str) -> ListWatch | None:
        watches = self._watches.watches
        return watches.get((None, name)) or watches.get((namespace, name))

    def lookup(self, namespace: str, name: str) -> tuple[bool, KubeObject | None]:
        """``(known, secret)``: ``known`` is False when no synced watch covers the Secret."""
        watch = self._target_for(namespace, name)
        if watch is None or not watch.store.synced.is_set():
            return False, None
        return True, watch.store.get((namespace, name))

    def put(self, obj: KubeObject) -> None:
        namespace, name = object_key(obj)
        watch = self._target_for(namespace, name)
        if watch is not None:
            watch.store.put(obj)

    def forget(self, namespace: str, name: str) -> None:
        watch = self._target_for(namespace, name)
        if watch is not None:
            watch.store.forget((namespace, name))

    def named(self, name: str) -> list[tuple[Key, KubeObject]]:
        """Every cached Secret called ``name`` (the copies, from the cluster-wide watch)."""
        watch = self._watches.watches.get((None, name))
        return watch.store.items() if watch is not None else []

    def targets(self) -> set[SecretTarget]:
        return set(self._watches.watches)

    def synced(self) -> bool:
        return all(watch.store.synced.is_set() for watch in list(self._watches.watches.values()))

    def sync_targets(self, wanted: set[SecretTarget]) -> None:
        """Start watches for new targets and stop those no longer wanted."""
        # A cluster-wide watch of a name covers that name in every namespace.
        cluster_names = {name for namespace, name in wanted if namespace is None}
        wanted = {(ns, name) for ns, name in wanted if ns is None or name not in cluster_names}
        started: list[ListWatch] = []
        stopped: list[ListWatch] = []
        with self._watches.lock:
            for target in set(self._watches.watches) - wanted:
                stopped.append(self._watches.watches.pop(target))
            for target in wanted - set(self._watches.watches):
                watch = self._new_watch(target)
                self._watches.watches[target] = watch
                started.append(watch)
        for watch in stopped:
            watch.stop()
        for watch in started:
            watch.start()

    def _new_watch(self, target: SecretTarget) -> ListWatch:
        namespace, name = target
        api, settings = self._api, self._settings

        def lister(limit: int | None, continue_: str | None) -> KubeObject:
            return api.list_secrets(name, namespace, timeout=settings.request_timeout, limit=limit, continue_=continue_)

        def watcher(resource_version: str) -> Any:
            server, timeouts = _watch_timeouts(settings)
            return api.watch_secrets(
                name, namespace, resource_version=resource_version, server_timeout=server, timeout=timeouts
            )

        store = Store(on_change=self._on_change, slim=_slim_secret, only_name=name)
        where = f"in {namespace}" if namespace else "cluster-wide"
        return ListWatch(
            name=f"Secrets {name} {where}",
            lister=lister,
            watcher=watcher,
            store=store,
            stats=self._stats,
            page_size=settings.list_page_size or None,
        )

    def stop(self) -> list[ListWatch]:
        return self._watches.stop_all()


class NamespaceCache:
    """Namespace labels from a cluster-wide Namespace watch; implements ``NamespaceLabels``.

    (After a failed GET the labels of that namespace stay unknown for ``RETRY_AFTER``
    seconds without asking again.)

    A namespace the cache does not know yet (created a moment ago, or the watch is not
    synced) costs one GET bounded by ``timeout``; the answer is cached. When even that
    fails the labels are unknown (``None``) and selector rules simply do not apply: the
    safe direction, since a namespace no rule admits must never receive a Secret.
    """

    RETRY_AFTER: Final = 2.0

    def __init__(
        self, *, api: KubeApi, runner: Runner, settings: KubeSettings, stats: Stats, on_change: ChangeFn | None
    ) -> None:
        self._api = api
        self._runner = runner
        self._settings = settings
        self._stats = stats
        self.store = Store(on_change=on_change, slim=_slim_namespace)
        self._watch: ListWatch | None = None
        self._failed: dict[str, float] = {}

    @property
    def synced(self) -> bool:
        return self.store.synced.is_set()

    def get(self, name: str) -> KubeObject | None:
        return self.store.get(("", name))

    async def labels(self, namespace: str) -> Mapping[str, str] | None:
        obj = self.get(namespace)
        if obj is None:
            if time.monotonic() < self._failed.get(namespace, 0.0):
                return None  # just failed: the API is struggling, do not make every admission wait on it
            try:
                obj = await self.fetch(namespace, timeout=self._settings.ensure_timeout / 4)
            except ApiError as exc:
                self._stats.error(exc.kind)
                if len(self._failed) > 1024:
                    self._failed.clear()
                self._failed[namespace] = time.monotonic() + self.RETRY_AFTER
                log.info("namespace %s: labels unknown (%s)", namespace, exc.kind)
                return None
        return None if obj is None else namespace_labels(obj)

    async def fetch(self, namespace: str, *, timeout: float) -> KubeObject | None:
        """One bounded GET of a namespace the watch has not shown us (yet); ``None`` if it does not exist."""
        api = self._api
        obj = await self._runner(
            lambda t: api.get_namespace(namespace, timeout=t), timeout=timeout, action=f"get Namespace {namespace}"
        )
        if obj is not None:
            self._failed.pop(namespace, None)
            self.store.put(obj)
        return obj

    def start(self) -> None:
        api, settings = self._api, self._settings

        def lister(limit: int | None, continue_: str | None) -> KubeObject:
            return api.list_namespaces(timeout=settings.request_timeout, limit=limit, continue_=continue_)

        def watcher(resource_version: str) -> Any:
            server, timeouts = _watch_timeouts(settings)
            return api.watch_namespaces(resource_version=resource_version, server_timeout=server, timeout=timeouts)

        self._watch = ListWatch(
            name="Namespaces",
            lister=lister,
            watcher=watcher,
            store=self.store,
            stats=self._stats,
            page_size=settings.list_page_size or None,
        )
        self._watch.start()

    def stop(self) -> list[ListWatch]:
        if self._watch is None:
            return []
        self._watch.stop()
        return [self._watch]


__all__ = [
    "LIST_PAGE_SIZE",
    "ApiError",
    "EventRecorder",
    "KubeApi",
    "KubeObject",
    "KubeSettings",
    "ListWatch",
    "Lister",
    "NamespaceCache",
    "Runner",
    "SecretCache",
    "SecretTarget",
    "Stats",
    "Store",
    "build_api_client",
    "load_configuration",
    "namespace_labels",
    "object_key",
]
