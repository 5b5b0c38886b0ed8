"""The refresh schedule, table-tested: half the remaining lifetime, jitter, margin, floor, backoff."""

from __future__ import annotations

import pytest

from webhook.tokens.schedule import DEFAULT, Schedule, next_refresh, retry_delay, safety_margin

NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("lifetime", "draw", "expected"),
    [
        pytest.param(3600.0, 0.5, 1800.0, id="1h-no-jitter-half"),
        pytest.param(3600.0, 0.0, 1440.0, id="1h-jitter-low"),
        pytest.param(3600.0, 0.999999, 2159.99928, id="1h-jitter-high"),
        pytest.param(43200.0, 0.5, 21600.0, id="ecr-12h-half"),
        pytest.param(900.0, 0.5, 450.0, id="federated-15min"),
        pytest.param(60.0, 0.5, 30.0, id="60s-token"),
        pytest.param(60.0, 0.0, 24.0, id="60s-token-jitter-low-above-floor"),
        pytest.param(20.0, 0.5, 15.0, id="short-token-floor-wins"),
        pytest.param(0.0, 0.5, 15.0, id="zero-lifetime-floor"),
        pytest.param(-3.0e8, 0.5, 15.0, id="moto-2015-expired-floor"),
    ],
)
def test_next_refresh(lifetime: float, draw: float, expected: float) -> None:
    at = next_refresh(now=NOW, expires_at=NOW + lifetime, draw=draw)
    assert at - NOW == pytest.approx(expected)


@pytest.mark.parametrize("lifetime", [60.0, 120.0, 900.0, 3600.0, 4500.0, 10800.0, 43200.0], ids=str)
@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.75, 0.999], ids=str)
def test_refresh_is_before_the_margin_and_after_the_floor(lifetime: float, draw: float) -> None:
    at = next_refresh(now=NOW, expires_at=NOW + lifetime, draw=draw)
    assert at <= NOW + lifetime - safety_margin(lifetime)
    assert at >= NOW + DEFAULT.floor


@pytest.mark.parametrize(
    ("schedule", "lifetime", "draw", "expected"),
    [
        pytest.param(Schedule(fraction=0.95, jitter=0.0), 3600.0, 0.5, 3300.0, id="margin-caps-a-late-fraction"),
        pytest.param(Schedule(fraction=0.95, jitter=0.0), 400.0, 0.5, 300.0, id="short-margin-quarter"),
        pytest.param(Schedule(floor=1.0), 0.0, 0.5, 1.0, id="custom-floor"),
    ],
)
def test_schedule_knobs(schedule: Schedule, lifetime: float, draw: float, expected: float) -> None:
    assert next_refresh(now=NOW, expires_at=NOW + lifetime, draw=draw, schedule=schedule) - NOW == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    ("failures", "draw", "expires_in", "low", "high"),
    [
        pytest.param(1, 0.0, None, 0.5, 0.5, id="first-retry-min"),
        pytest.param(1, 0.999, None, 0.5, 1.0, id="first-retry-max"),
        pytest.param(4, 0.5, None, 6.0, 6.0, id="fourth-retry"),
        pytest.param(30, 0.999, None, 30.0, 60.0, id="capped"),
        pytest.param(30, 0.999, 20.0, 1.0, 10.0, id="never-past-half-the-remaining-validity"),
        pytest.param(30, 0.999, 0.5, 30.0, 60.0, id="expired-token-plain-backoff"),
    ],
)
def test_retry_delay(failures: int, draw: float, expires_in: float | None, low: float, high: float) -> None:
    expires_at = None if expires_in is None else NOW + expires_in
    delay = retry_delay(failures=failures, draw=draw, now=NOW, expires_at=expires_at)
    assert low <= delay <= high
