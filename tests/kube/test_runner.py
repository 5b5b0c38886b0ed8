"""The Runner: blocking calls off the loop, each bounded on the asyncio side by its own timeout."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from webhook.kube.errors import ApiError
from webhook.kube.runner import Runner


@pytest.fixture
def runner() -> Iterator[Runner]:
    made = Runner(workers=1)
    yield made
    made.shutdown()


async def test_the_call_runs_on_a_worker_thread_and_gets_its_timeout(runner: Runner) -> None:
    seen: list[tuple[float, str]] = []

    def call(timeout: float) -> str:
        seen.append((timeout, threading.current_thread().name))
        return "done"

    assert await runner(call, timeout=1.5, action="read Secret") == "done"
    [(timeout, thread)] = seen
    assert timeout == 1.5
    assert thread.startswith("kube-api")


async def test_a_call_past_its_deadline_is_a_timeout_error(runner: Runner) -> None:
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        await runner(lambda timeout: time.sleep(2), timeout=0.1, action="create Secret")
    assert time.monotonic() - started < 0.1 + Runner.GRACE + 0.5
    assert (info.value.kind, info.value.action) == ("timeout", "create Secret")


async def test_a_call_waiting_for_a_busy_worker_is_bounded_too(runner: Runner) -> None:
    release = threading.Event()
    blocker = runner(lambda timeout: release.wait(5), timeout=5, action="hung call")
    task = asyncio.ensure_future(blocker)
    await asyncio.sleep(0.05)
    try:
        with pytest.raises(ApiError, match="queued call: timeout"):
            await runner(lambda timeout: "never", timeout=0.1, action="queued call")
    finally:
        release.set()
        await task


async def test_no_time_left_fails_at_once(runner: Runner) -> None:
    with pytest.raises(ApiError) as info:
        await runner(lambda timeout: "never", timeout=0, action="patch Secret")
    assert info.value.kind == "timeout"
