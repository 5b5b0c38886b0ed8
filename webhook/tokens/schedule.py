"""When to mint again: from the token's real expiry, never from a documented lifetime.

Documented lifetimes lie in practice (GCP federated tokens last ~15 min, ACR refresh
tokens were seen lasting 75 min instead of 3 h, ECR's "12 hours" is what the server says
that day). So the next mint is computed from what the provider answered:

* at about half of the remaining lifetime, so a failing provider leaves half the
  lifetime for retries while the last good token still works;
* with jitter, so the minters of many replicas (and many sources) do not fire together;
* never later than a safety margin before expiry, so that the copies are patched, and
  the kubelet has read them, before the old token dies;
* never sooner than a floor, so that an answer already expired (moto's fixed 2015
  ``expiresAt``) or of zero lifetime (a plugin's ``cacheDuration: "0"``) cannot make the
  minter spin.

Pure functions of their arguments (the clock and the random draw are passed in), so the
policy is table-tested.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Fraction of the remaining lifetime after which a token is minted again.
REFRESH_FRACTION = 0.5
#: Jitter, as a fraction of the remaining lifetime, either way (0.5 +- 0.1 of it).
JITTER_FRACTION = 0.1
#: Never refresh later than this before expiry (capped at a quarter of the lifetime for short tokens).
SAFETY_MARGIN = 300.0
#: Never mint again sooner than this after a mint, whatever the answer said.
FLOOR = 15.0
#: Failed mints: first retry delay, and its cap.
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0


@dataclass(frozen=True, slots=True)
class Schedule:
    """The knobs of :func:`next_refresh`; the defaults suit every provider."""

    fraction: float = REFRESH_FRACTION
    jitter: float = JITTER_FRACTION
    margin: float = SAFETY_MARGIN
    floor: float = FLOOR
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = BACKOFF_MAX


DEFAULT = Schedule()


def safety_margin(lifetime: float, schedule: Schedule = DEFAULT) -> float:
    """The margin before expiry: ``schedule.margin``, or a quarter of a short token's lifetime."""
    return min(schedule.margin, max(0.0, lifetime) / 4)


def next_refresh(*, now: float, expires_at: float, draw: float, schedule: Schedule = DEFAULT) -> float:
    """The time (same clock as ``now``) at which to mint again a token expiring at ``expires_at``.

    ``draw`` is a uniform random number in [0, 1) (the caller's ``random.random()``):
    0.5 means no jitter. The floor wins over everything else: a token that is already
    expired, or about to be, is minted again after ``schedule.floor`` seconds, not now.
    """
    remaining = expires_at - now
    if remaining <= 0:
        return now + schedule.floor
    jitter = (2 * draw - 1) * schedule.jitter * remaining
    at = now + schedule.fraction * remaining + jitter
    at = min(at, expires_at - safety_margin(remaining, schedule))
    return max(at, now + schedule.floor)


def retry_delay(
    *, failures: int, draw: float, now: float, expires_at: float | None, schedule: Schedule = DEFAULT
) -> float:
    """Seconds to wait after ``failures`` (>= 1) consecutive failed mints.

    Exponential from ``backoff_initial`` up to ``backoff_max``, with full jitter in the
    upper half (``draw`` in [0, 1)), and never past the expiry of the last good token
    while it is still valid: the last retry happens while the old token still works.
    The floor does not apply here: a failure is cheap to retry, and the cap bounds it.
    """
    base = min(schedule.backoff_max, schedule.backoff_initial * 2.0 ** max(0, failures - 1))
    delay = base / 2 + draw * base / 2
    if expires_at is not None and expires_at - now > schedule.backoff_initial:
        delay = min(delay, max(schedule.backoff_initial, (expires_at - now) / 2))
    return delay
