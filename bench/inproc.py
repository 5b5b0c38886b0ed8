"""In-process timings of the admission handler, without HTTP.

Two numbers per scenario (containers x rules), both per review:

* ``handle``: ``await Handler.handle(review)`` on a decoded review, the work the issue's
  target is about (decide, build the patch, build the response);
* ``bytes``: body bytes in, response bytes out, as ``webhook.app`` goes about it (the view and
  ``answer_now``, else ``parse_review`` + ``handle``; then ``orjson.dumps``), i.e. everything the
  server does per review except HTTP and TLS.

Steady state: the reviews rotate over a few warm namespaces (the caches are warm, as they
are after the first Pods of a namespace). ``cold_namespace`` is the other case: every
review comes from a namespace the policy has not seen yet. The handler has a
Namespace-label source (a dict, as the watch-fed cache will be), so rules with selectors
are evaluated. Coroutines are driven without an event loop: the handler never suspends
here, so the loop's own overhead is not counted.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Coroutine, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import orjson

from bench.reviews import NAMESPACE_LABELS, make_policy, make_review, review_bodies
from webhook.admission.handler import Handler, Remembered
from webhook.admission.view import decode_view
from webhook.admission.wire import AdmissionReview, decode_patch, parse_review
from webhook.policy.matching import CompiledPolicy

T = TypeVar("T")

WARM_NAMESPACES = 8


class DictNamespaces:
    """Namespace labels from a dict (what the watch-fed cache answers, minus the watch)."""

    def __init__(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        self._labels = labels

    async def labels(self, namespace: str) -> Mapping[str, str] | None:
        return self._labels.get(namespace)

    def labels_now(self, namespace: str) -> Mapping[str, str] | None:
        return self._labels.get(namespace)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()
    raise RuntimeError("the handler suspended; run_sync only drives coroutines that complete at once")


@dataclass(frozen=True, slots=True)
class Timing:
    """Per-review latency in microseconds."""

    iterations: int
    median_us: float
    p99_us: float
    mean_us: float
    min_us: float


def summarize(samples_ns: list[int]) -> Timing:
    ordered = sorted(samples_ns)
    n = len(ordered)
    p99 = ordered[min(n - 1, max(0, round(0.99 * n) - 1))]
    return Timing(
        iterations=n,
        median_us=round(statistics.median(ordered) / 1000, 2),
        p99_us=round(p99 / 1000, 2),
        mean_us=round(statistics.fmean(ordered) / 1000, 2),
        min_us=round(ordered[0] / 1000, 2),
    )


def _namespaces(count: int, prefix: str = "team-a") -> dict[str, dict[str, str]]:
    return {
        f"{prefix}-{i}" if i else prefix: {**NAMESPACE_LABELS, "kubernetes.io/metadata.name": f"{prefix}-{i}"}
        for i in range(count)
    }


def _handler(policy: CompiledPolicy, labels: Mapping[str, Mapping[str, str]]) -> Handler:
    return Handler(policy=lambda: policy, namespaces=DictNamespaces(labels))


def check_answer(response: Mapping[str, Any]) -> list[str]:
    """The secrets the benchmark review gets (sanity check: the same for every policy size)."""
    ops = decode_patch(response["response"])
    names: list[str] = []
    for op in ops:
        if op["path"] == "/spec/imagePullSecrets":
            names.extend(item["name"] for item in op["value"])
    return names


def time_handle(containers: int, policy: CompiledPolicy, iterations: int) -> Timing:
    labels = _namespaces(WARM_NAMESPACES)
    handler = _handler(policy, labels)
    reviews: list[AdmissionReview] = [
        parse_review(orjson.dumps(make_review(containers, namespace=ns, uid=f"u-{i}"))) for i, ns in enumerate(labels)
    ]
    for review in reviews * 4:  # warm every cache, as a running server has
        run_sync(handler.handle(review))
    samples: list[int] = []
    clock = time.perf_counter_ns
    count = len(reviews)
    gc.collect()
    for i in range(iterations):
        review = reviews[i % count]
        start = clock()
        run_sync(handler.handle(review))
        samples.append(clock() - start)
    return summarize(samples)


def time_bytes(containers: int, policy: CompiledPolicy, iterations: int) -> Timing:
    labels = _namespaces(WARM_NAMESPACES)
    handler = _handler(policy, labels)
    bodies = [orjson.dumps(make_review(containers, namespace=ns, uid=f"u-{i}")) for i, ns in enumerate(labels)]
    for body in bodies * 4:
        _answer_bytes(handler, body)
    samples: list[int] = []
    clock = time.perf_counter_ns
    count = len(bodies)
    gc.collect()
    for i in range(iterations):
        body = bodies[i % count]
        start = clock()
        _answer_bytes(handler, body)
        samples.append(clock() - start)
    return summarize(samples)


def _answer_bytes(handler: Handler, body: bytes) -> bytes:
    """The answer to ``body`` the way ``webhook.app.MutateEndpoint`` gets it, without HTTP."""
    view = decode_view(body)
    now = None if view is None else handler.answer_now(view)
    if isinstance(now, Remembered):
        response = run_sync(handler.finish(now))
    elif now is None:
        response = run_sync(handler.handle(parse_review(body)))
    else:
        response = now
    return orjson.dumps(response)


def time_cold_namespace(containers: int, policy: CompiledPolicy, iterations: int) -> Timing:
    """Every review from a namespace not seen before (the per-namespace caches miss)."""
    labels = _namespaces(iterations + 1, prefix=f"cold-{containers}c-{len(policy.policy.rules)}r")
    handler = _handler(policy, labels)
    reviews = [
        parse_review(orjson.dumps(make_review(containers, namespace=ns, uid=f"c-{i}"))) for i, ns in enumerate(labels)
    ]
    run_sync(handler.handle(reviews[-1]))  # image and host caches warm, namespaces cold
    samples: list[int] = []
    clock = time.perf_counter_ns
    gc.collect()
    for review in reviews[:iterations]:
        start = clock()
        run_sync(handler.handle(review))
        samples.append(clock() - start)
    return summarize(samples)


@dataclass(frozen=True, slots=True)
class Scenario:
    containers: int
    rules: int
    body_bytes: int
    secrets: list[str]
    handle: Timing
    bytes_to_bytes: Timing
    cold_namespace: Timing

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(
    *,
    containers: tuple[int, ...] = (1, 3, 10),
    rules: tuple[int, ...] = (1, 100, 1000),
    iterations: int = 20000,
    cold_iterations: int = 300,
) -> list[Scenario]:
    """Every (containers, rules) scenario; checks the answer is the same for every policy size."""
    results: list[Scenario] = []
    for rule_count in rules:
        policy = make_policy(rule_count)
        for n in containers:
            review = parse_review(review_bodies(n, 1)[0])
            secrets = check_answer(run_sync(_handler(policy, _namespaces(1)).handle(review)))
            results.append(
                Scenario(
                    containers=n,
                    rules=rule_count,
                    body_bytes=len(review_bodies(n, 1)[0]),
                    secrets=secrets,
                    handle=time_handle(n, policy, iterations),
                    bytes_to_bytes=time_bytes(n, policy, iterations),
                    cold_namespace=time_cold_namespace(n, policy, cold_iterations),
                )
            )
    return results


if __name__ == "__main__":  # pragma: no cover - manual use
    for scenario in run(iterations=5000, cold_iterations=100):
        print(
            f"{scenario.containers:>3} containers {scenario.rules:>5} rules: "
            f"handle {scenario.handle.median_us:7.1f} / {scenario.handle.p99_us:7.1f} us, "
            f"bytes {scenario.bytes_to_bytes.median_us:7.1f} / {scenario.bytes_to_bytes.p99_us:7.1f} us, "
            f"cold ns {scenario.cold_namespace.median_us:8.1f} us, secrets {scenario.secrets}"
        )
