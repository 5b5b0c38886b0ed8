"""The Runner: blocking calls off the loop, each bounded on the asyncio side by its own timeout."""

from __future__ import annotations

import asyncio
import threading
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
    """The caller is answered at the deadline, while the call itself still hangs (it is not waited for)."""
    release, returned = threading.Event(), threading.Event()

    def hung(timeout: float) -> None:
        release.wait(60)
        returned.set()

    try:
        with pytest.raises(ApiError) as info:
            await runner(hung, timeout=0.1, action="create Secret")
        assert (info.value.kind, info.value.action) == ("timeout", "create Secret")
        assert not returned.is_set(), "answered before the hung call returned"
    finally:
        release.set()


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
