"""Retry delays: exponential, capped, jittered, with a reset once the loop is healthy again.

One mechanism for every loop that retries (the list-watch, the reconciler, leader election
polling). A library such as ``tenacity`` retries a *function call*; these loops run
forever and must start again from the shortest delay once they have been healthy for a
while (after an API server outage a watch must resume within seconds, not at the cap the
outage drove the delay to), and tests must see what the loop did. So this is only the
arithmetic and its observable state; the loops do the waiting themselves (an
``Event.wait`` in a thread, an ``asyncio.wait_for`` on the loop) and no I/O happens here.
"""

from __future__ import annotations

import random

from webhook.config import BackoffSettings


def jittered(seconds: float, jitter: float, rng: random.Random | None = None) -> float:
    """``seconds`` spread by ``jitter`` either way (0.2: 80-120 %), so replicas do not act in step."""
    if not jitter:
        return seconds
    return seconds * (rng or random).uniform(1.0 - jitter, 1.0 + jitter)


class Backoff:
    """The delays of one retrying loop; ``failure()`` gives the next, ``reset()`` starts over.

    Observable state, for logs and tests: ``failures`` (consecutive, since the last reset),
    ``resets`` (how many times a failing streak ended) and ``last_delay``.
    """

    __slots__ = ("_rng", "failures", "last_delay", "resets", "settings")

    def __init__(self, settings: BackoffSettings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng
        self.failures = 0
        self.resets = 0
        self.last_delay: float | None = None

    @property
    def nominal(self) -> float:
        """The un-jittered delay the next failure will get."""
        settings = self.settings
        # The exponent is bounded so that a loop failing for days cannot overflow a float.
        return min(settings.maximum, settings.initial * settings.factor ** min(self.failures, 64))

    def failure(self) -> float:
        """Count a failure; the (jittered) seconds to wait before the next attempt."""
        delay = jittered(self.nominal, self.settings.jitter, self._rng)
        self.failures += 1
        self.last_delay = delay
        return delay

    def reset(self) -> None:
        """The loop is healthy again: the next failure waits ``initial`` (a no-op when not failing)."""
        if self.failures:
            self.failures = 0
            self.resets += 1

    def __repr__(self) -> str:
        return f"Backoff(failures={self.failures}, resets={self.resets}, next={self.nominal:g}s)"
