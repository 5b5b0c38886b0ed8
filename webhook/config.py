"""Every setting of the webhook, with its default, in one place.

One frozen dataclass per concern; the CLI (flags and ``PSI_*`` environment variables) fills
them, and the server and the runtime take them whole. The chart's defaults are checked
against these by ``tests/test_config.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    #: Retries of a failed list or watch: capped at 5 s, so a watch resumes within a few seconds
    #: of the end of an API server outage (each retry is one list per watch).
    watch_backoff: BackoffSettings = field(default_factory=lambda: BackoffSettings(initial=0.5, maximum=5.0))
    #: Retries of a reconcile pass that failed (copies handed off by admissions, API errors).
    reconcile_backoff: BackoffSettings = field(default_factory=lambda: BackoffSettings(initial=1.0, maximum=30.0))
    #: Sizes of the Kubernetes side's bounded caches.
    cache_limits: CacheLimits = field(default_factory=lambda: CacheLimits())


@dataclass(frozen=True, slots=True)
class BackoffSettings:
    """Delays of one retry loop: exponential from ``initial`` to ``maximum``, each jittered.

    Every retrying loop (the list-watch, the reconciler) takes one of these and a
    :class:`webhook.backoff.Backoff` built from it, so the delays are named settings rather
    than constants spread over the loops. ``jitter`` is the relative spread (0.2: each delay
    drawn from 80-120 % of its nominal value), so replicas that failed together do not retry
    together.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    #: A loop that has been healthy this long starts again from ``initial`` at its next failure
    #: (for the list-watch: seconds a watch stream has been open after a successful list).
    healthy_after: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {self.initial} and {self.maximum}")
        if self.factor < 1 or not 0 <= self.jitter < 1 or self.healthy_after < 0:
            raise ValueError("backoff needs factor >= 1, 0 <= jitter < 1 and healthy_after >= 0")



@dataclass(frozen=True, slots=True)
class CacheLimits:
    """Entries each bounded cache (:class:`webhook.lru.LRU`) keeps; every limit in one place.

    Sized so that a cluster of 10,000 namespaces fits with room to spare (the RSS benchmark
    measures that case); past a limit the least recently used entry is forgotten, and
    rebuilding it costs one cold admission, not a cache emptied at once.
    """

    #: Policy decisions per (namespace, selector label values): the admit scan over every
    #: scoped rule costs 180 us with 1,000 rules, a hit 0.1 us.
    namespaces: int = 65536
    #: Ranked rule candidates per registry host (few distinct hosts in any cluster).
    registries: int = 4096
    #: Container plans per (namespace decisions, kind, name, image): Pods of one template
    #: cost a lookup per container instead of parsing and matching each image.
    container_plans: int = 16384
    #: Grants per (Secret name, admitted rules): one object per distinct answer, so the
    #: desired copy memoized on its identity is built once, not per admission.
    grants: int = 4096
    #: Desired copies built from a source's content (decoding and re-encoding the
    #: credentials is the expensive part of the warm ensure path).
    desired_copies: int = 1024
    #: Copies found current, per (namespace, name), by resourceVersion.
    verdicts: int = 65536
    #: Namespaces whose label lookup failed a moment ago (held off, not asked again at once).
    failed_lookups: int = 1024
    #: Events posted recently, per (namespace, reason, object): the dedupe window's memory.
    recent_events: int = 4096
    #: Copies whose last reconcile failed, with how (to log a change of failure once).
    failures: int = 65536
