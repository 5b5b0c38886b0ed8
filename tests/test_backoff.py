"""The one retry mechanism: its arithmetic, and the list-watch resuming after each API outage.

The outage test runs a real :class:`ListWatch` over HTTP against the API emulator; an
outage is a :class:`Fault` answering 503 to every request, so the watch's next request
(it re-opens its quiet stream every 0.3 s) fails and the loop backs off. What is asserted
is the backoff's own state, never a duration: after every outage the streak of failures
is over (``failures`` back to 0, one more ``reset``), so the next outage starts from the
shortest delay again instead of the cap an earlier outage drove it to (issue 12: the
delay reset only when a list-and-watch returned normally, which a healthy watch never
does).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.builders import eventually
from tests.kube_fixtures import Apiserver, Cluster, Fault, client_configuration
from webhook.backoff import Backoff, jittered
from webhook.config import BackoffSettings, KubeSettings
from webhook.kube.client import KubeApi, build_api_client
from webhook.kube.informer import ListWatch
from webhook.kube.objects import KubeObject, _slim_namespace
from webhook.kube.store import Store
from webhook.observability.stats import Stats
from webhook.tls.selfcert import CertState, SelfCertManager, keep_current


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(BackoffSettings(initial=0.5, maximum=5.0, jitter=0), [0.5, 1, 2, 4, 5, 5], id="doubling-to-cap"),
        pytest.param(
            BackoffSettings(initial=1.0, maximum=30.0, factor=3, jitter=0), [1, 3, 9, 27, 30], id="factor-three"
        ),
        pytest.param(BackoffSettings(initial=2.0, maximum=2.0, jitter=0), [2, 2, 2], id="constant"),
    ],
)
def test_delays_grow_by_the_factor_up_to_the_cap(settings: BackoffSettings, expected: list[float]) -> None:
    backoff = Backoff(settings)
    assert [backoff.failure() for _ in expected] == expected
    assert backoff.failures == len(expected)
    assert backoff.last_delay == expected[-1]


def test_a_reset_starts_over_from_the_initial_delay_and_is_counted() -> None:
    backoff = Backoff(BackoffSettings(initial=0.5, maximum=5.0, jitter=0))
    backoff.reset()  # not failing: nothing to reset
    assert backoff.resets == 0
    for _ in range(5):
        backoff.failure()
    backoff.reset()
    assert (backoff.failures, backoff.resets, backoff.nominal) == (0, 1, 0.5)
    assert backoff.failure() == 0.5


def test_a_loop_failing_for_ever_stays_at_the_cap() -> None:
    backoff = Backoff(BackoffSettings(initial=0.5, maximum=5.0, factor=10, jitter=0))
    delays = [backoff.failure() for _ in range(2000)]
    assert delays[-1] == 5.0


@pytest.mark.parametrize("jitter", [0.1, 0.2, 0.5], ids=["10%", "20%", "50%"])
def test_jitter_spreads_each_delay_within_its_bounds(jitter: float) -> None:
    rng = random.Random(7)
    samples = [jittered(10.0, jitter, rng) for _ in range(2000)]
    assert min(samples) >= 10.0 * (1 - jitter)
    assert max(samples) <= 10.0 * (1 + jitter)
    assert len(set(samples)) > 1000  # really spread, not one value
    backoff = Backoff(BackoffSettings(initial=1.0, maximum=1.0, jitter=jitter), rng=random.Random(7))
    assert len({backoff.failure() for _ in range(50)}) > 1


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"initial": 0}, id="zero-initial"),
        pytest.param({"initial": 10, "maximum": 5}, id="initial-above-max"),
        pytest.param({"factor": 0.5}, id="shrinking"),
        pytest.param({"jitter": 1.0}, id="jitter-100%"),
        pytest.param({"healthy_after": -1}, id="negative-healthy"),
    ],
)
def test_settings_that_make_no_sense_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        BackoffSettings(**bad)


def test_the_kube_settings_name_every_retry_loops_delays() -> None:
    settings = KubeSettings()
    assert settings.watch_backoff.maximum <= 5.0  # a watch resumes within seconds of an outage's end
    assert settings.reconcile_backoff.initial == 1.0


# --------------------------------------------------------------------------- outages of the API server


def _namespace_watch(host: str, backoff: BackoffSettings) -> tuple[ListWatch, KubeApi]:
    api = KubeApi(build_api_client(configuration=client_configuration(host), pool_size=4))

    def lister(limit: int | None, continue_: str | None) -> KubeObject:
        return api.list_namespaces(timeout=2.0, limit=limit, continue_=continue_)

    def watcher(resource_version: str) -> Any:
        # A 0.3 s read timeout: the quiet stream is re-opened (resumed) three times a second,
        # so an outage is noticed at the next re-open, as a dropped connection would be.
        return api.watch_namespaces(resource_version=resource_version, server_timeout=30, timeout=(1.0, 0.3))

    watch = ListWatch(
        name="Namespaces",
        lister=lister,
        watcher=watcher,
        store=Store(slim=_slim_namespace),
        stats=Stats(),
        backoff=backoff,
        page_size=None,
    )
    return watch, api


async def test_after_each_of_five_outages_the_watch_resumes_from_the_shortest_delay(
    apiserver: Apiserver, cluster: Cluster, api_host: str
) -> None:
    settings = BackoffSettings(initial=0.02, maximum=0.16, jitter=0, healthy_after=0.2)
    watch, api = _namespace_watch(api_host, settings)
    await cluster.namespace("before")
    watch.start()
    try:
        await eventually(watch.store.synced.is_set)
        for outage in range(5):
            fault = Fault(status=503)
            apiserver.faults.append(fault)
            # The streak grows to the cap while the API server is down ...
            await eventually(lambda: watch.backoff.failures >= 5)
            assert watch.backoff.last_delay == settings.maximum
            apiserver.faults.remove(fault)
            # ... and once it is back the watch serves changes again, and its streak is over:
            # the next outage starts from ``initial``, not from the cap this one reached.
            name = f"after-{outage}"
            await cluster.namespace(name)
            await eventually(lambda: watch.store.get(("", name)) is not None)  # noqa: B023
            await eventually(lambda: watch.backoff.failures == 0)
            assert watch.backoff.resets == outage + 1
            assert watch.backoff.nominal == settings.initial
    finally:
        watch.stop()
        watch.join(2.0)
        api.close()


async def test_a_failed_certificate_check_is_retried_sooner_and_the_streak_ends_with_success(
    apiserver: Apiserver, api_host: str
) -> None:
    """The self-managed certificate's loop: failures back off from ``initial``, a good check resets."""
    api = KubeApi(build_api_client(configuration=client_configuration(api_host), pool_size=2))
    manager = SelfCertManager(
        api=api, namespace="pullsecret-system", secret_name="tls", service="psi", webhook_config="psi", timeout=2.0
    )
    initial = await asyncio.to_thread(manager.ensure)
    applied: list[CertState] = []
    backoff = Backoff(BackoffSettings(initial=0.02, maximum=0.1, jitter=0))
    task = asyncio.create_task(
        keep_current(manager, initial=initial, apply=applied.append, interval=0.1, backoff=backoff)
    )
    try:
        fault = Fault(status=503)
        apiserver.faults.append(fault)
        await eventually(lambda: backoff.failures >= 3)
        # 0.02, 0.04, 0.08, then the cap: each retry well before the next regular check.
        assert backoff.last_delay == min(0.1, 0.02 * 2 ** (backoff.failures - 1))
        apiserver.faults.remove(fault)
        await eventually(lambda: backoff.failures == 0)
        assert backoff.resets == 1
        assert applied == []  # the same pair all along: nothing to switch
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        api.close()
