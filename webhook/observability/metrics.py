"""Prometheus metrics: what the webhook did, how fast, and whether its sync is healthy.

Each process builds one :class:`Metrics` on its own ``CollectorRegistry`` (tests build
many). Label values are bounded, known words (outcomes, rule names from the policy, HTTP
codes, kinds of error), never anything from a request or a Secret, so no credential can
end up in a label and cardinality stays small.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app

from webhook.admission.handler import AdmissionOutcome
from webhook.admission.wire import AdmissionReview
from webhook.observability.stats import Stats

PREFIX = "pullsecret_injector"
# Admission latency is tens of microseconds offline and milliseconds when a Secret is written.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """All the process's metrics, plus the small hooks the other modules call."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.admission_requests = Counter(
            f"{PREFIX}_admission_requests", "Admission reviews answered, by outcome.", ["outcome"], registry=r
        )
        self.admission_duration = Histogram(
            f"{PREFIX}_admission_duration_seconds",
            "Time to answer one admission review (handler only).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_errors = Counter(
            f"{PREFIX}_http_errors", "Requests refused by the transport, by HTTP status.", ["code"], registry=r
        )
        self.injections = Counter(f"{PREFIX}_injections", "Pull secrets added to Pods, by rule.", ["rule"], registry=r)
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
        # Bound once: a labels() lookup per admission is measurable on the hot path.
        self._outcomes = {
            outcome: self.admission_requests.labels(outcome)
            for outcome in ("mutated", "unchanged", "skipped", "ignored", "denied", "error")
        }
        self._injections: dict[str, Any] = {}
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

    def observe_admission(self, review: AdmissionReview, outcome: AdmissionOutcome, seconds: float) -> None:
        """``Handler(observe=...)``: count the outcome, its latency, and each injected secret by rule."""
        del review
        counter = self._outcomes.get(outcome.result)
        (counter if counter is not None else self.admission_requests.labels(outcome.result)).inc()
        self.admission_duration.observe(seconds)
        plan = outcome.plan
        if plan is not None and outcome.result == "mutated":
            for name in plan.added:
                rule = plan.secrets.get(name)
                if rule is not None:
                    child = self._injections.get(rule.name)
                    if child is None:
                        child = self._injections[rule.name] = self.injections.labels(rule.name)
                    child.inc()

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
