"""Every setting of the webhook, with its default, in one place.

One frozen dataclass per concern; the CLI (flags and ``PSI_*`` environment variables) fills
them, and the server and the runtime take them whole. The chart's defaults are checked
against these by ``tests/test_config.py``.
"""

from __future__ import annotations

from dataclasses import dataclass


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


