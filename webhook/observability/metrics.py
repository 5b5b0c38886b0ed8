"""Prometheus metrics: what the webhook did, how fast, and whether its sync is healthy.

Each process builds one :class:`Metrics` on its own ``CollectorRegistry`` (tests build
many). Label values are bounded, known words (outcomes, rule names from the policy, HTTP
codes, kinds of error), never anything from a request or a Secret, so no credential can
end up in a label and cardinality stays small.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, make_asgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from webhook.admission.handler import AdmissionOutcome
from webhook.observability.stats import Stats

PREFIX = "pullsecret_injector"
# Admission latency is tens of microseconds offline and milliseconds when a Secret is written.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Every outcome an admission can have, exported from the start (at 0) so that rates exist.
OUTCOMES = ("mutated", "unchanged", "skipped", "ignored", "denied", "error")


class AdmissionCollector(Collector):
    """The per-admission metrics: plain counts, turned into metric families at scrape time.

    ``prometheus_client``'s ``Counter.inc`` and ``Histogram.observe`` take a lock and walk
    the buckets in Python: about 8 us for the three metrics of one admission, as much as
    deciding a remembered Pod template, on every Pod of the cluster. Admissions are counted
    on the event loop, and ``/metrics`` is served by the same loop (``make_asgi_app`` renders
    in the request's coroutine), so plain integers are never read half-written and the
    histogram's buckets, count and sum always agree. What is exported is exactly what the
    library's own types would export (``_total``, ``_bucket``/``_count``/``_sum``).
    """

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        #: Observations per bucket (not cumulative), the last one past the largest bound.
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds = 0.0
        self.injections: dict[str, int] = {}

    def observe(self, result: str, seconds: float, injected: tuple[str, ...]) -> None:
        self.outcomes[result] = self.outcomes.get(result, 0) + 1
        # A value equal to a bound belongs to that bound's bucket (le = less or equal).
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.seconds += seconds
        for rule in injected:
            self.injections[rule] = self.injections.get(rule, 0) + 1

    def count(self, result: str) -> None:
        """An answer the handler did not give (the transport's fail-open ``error``): no latency."""
        self.outcomes[result] = self.outcomes.get(result, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            f"{PREFIX}_admission_requests", "Admission reviews answered, by outcome.", labels=["outcome"]
        )
        for outcome, value in self.outcomes.items():
            requests.add_metric([outcome], value)
        yield requests
        cumulative, total = [], 0
        for bound, value in zip((*map(floatToGoString, LATENCY_BUCKETS), "+Inf"), self.buckets, strict=True):
            total += value
            cumulative.append((bound, float(total)))
        yield HistogramMetricFamily(
            f"{PREFIX}_admission_duration_seconds",
            "Time to answer one admission review (handler only).",
            buckets=cumulative,
            sum_value=self.seconds,
        )
        injections = CounterMetricFamily(
            f"{PREFIX}_injections", "Pull secrets added to Pods, by rule.", labels=["rule"]
        )
        for rule, value in self.injections.items():
            injections.add_metric([rule], value)
        yield injections


class Metrics:
    """All the process's metrics, plus the small hooks the other modules call."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.admissions = AdmissionCollector()
        r.register(self.admissions)
        self.http_errors = Counter(
            f"{PREFIX}_http_errors", "Requests refused by the transport, by HTTP status.", ["code"], registry=r
        )
        self.secret_writes = Counter(
            f"{PREFIX}_secret_writes",
            "Writes of managed Secrets, by operation (create, update, delete) and result.",
            ["operation", "result"],
            registry=r,
        )
        self.secret_errors = Counter(
            f"{PREFIX}_secret_errors",
            "Failures while providing Secrets, by kind (timeout, forbidden, server, conflict, source, ...).",
            ["kind"],
            registry=r,
        )
        self.secret_ensures = Counter(
            f"{PREFIX}_secret_ensures",
            "Admission-time checks that a Pod's managed Secret exists and is current, by outcome "
            "(fast: shown current by the cache, written, unmanaged, failed, timeout, dry_run).",
            ["outcome"],
            registry=r,
        )
        self.events = Counter(
            f"{PREFIX}_events",
            "Kubernetes Events, by result (ok: posted; error, dropped: lost).",
            ["result"],
            registry=r,
        )
        self.policy_reloads = Counter(
            f"{PREFIX}_policy_reloads",
            "Policy reload attempts, by result (accepted, rejected).",
            ["result"],
            registry=r,
        )
        self.policy_rules = Gauge(f"{PREFIX}_policy_rules", "Rules in the policy being served.", registry=r)
        self.reconciler_lag = Gauge(
            f"{PREFIX}_reconciler_lag_seconds",
            "Age of the oldest change the reconciler has not applied yet (0 when caught up).",
            registry=r,
        )
        self.last_sync = Gauge(
            f"{PREFIX}_last_successful_sync_timestamp_seconds",
            "Unix time of the last reconcile pass that finished without error.",
            registry=r,
        )
        self.since_last_sync = Gauge(
            f"{PREFIX}_seconds_since_last_successful_sync",
            "Seconds since the last reconcile pass that finished without error (-1 before the first).",
            registry=r,
        )
        self._last_sync_at: float | None = None
        self.since_last_sync.set_function(self._seconds_since_sync)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the server is ready to serve admissions.", registry=r)
        for result in ("accepted", "rejected"):
            self.policy_reloads.labels(result)

    def kube_stats(self) -> Stats:
        """The Kubernetes side's :class:`Stats`, every counter of it feeding these metrics."""
        stats = Stats(
            on_write=self.observe_secret_write,
            on_error=self.observe_secret_error,
            on_sync=self.observe_sync,
            on_ensure=self.observe_secret_ensure,
            on_event=self.observe_event,
        )
        self.reconciler_lag.set_function(stats.current_lag)
        return stats

    # ---------------------------------------------------------------- hooks

    def observe_admission(self, outcome: AdmissionOutcome, seconds: float) -> None:
        """``Handler(observe=...)``: count the outcome, its latency, and each injected secret by rule."""
        self.admissions.observe(outcome.result, seconds, outcome.injected if outcome.result == "mutated" else ())

    def observe_internal_error(self, reason: str) -> None:
        """The transport answered ``allowed`` because the handler failed or overran (``reason``)."""
        del reason
        self.admissions.count("error")

    def observe_http_error(self, code: int) -> None:
        self.http_errors.labels(str(code)).inc()

    def observe_policy_reload(self, accepted: bool, errors: list[str]) -> None:
        del errors
        self.policy_reloads.labels("accepted" if accepted else "rejected").inc()

    def observe_secret_write(self, operation: str, result: str) -> None:
        self.secret_writes.labels(operation, result).inc()

    def observe_secret_error(self, kind: str) -> None:
        self.secret_errors.labels(kind).inc()

    def observe_secret_ensure(self, outcome: str) -> None:
        self.secret_ensures.labels(outcome).inc()

    def observe_event(self, result: str) -> None:
        self.events.labels(result).inc()

    def observe_sync(self, at: float | None = None) -> None:
        self._last_sync_at = time.time() if at is None else at
        self.last_sync.set(self._last_sync_at)

    def _seconds_since_sync(self) -> float:
        return -1.0 if self._last_sync_at is None else max(0.0, time.time() - self._last_sync_at)

    def asgi_app(self) -> Callable[..., object]:
        return make_asgi_app(registry=self.registry)
