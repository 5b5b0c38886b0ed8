"""A stopped background job ends, even when the stop meets the completion of what it awaits.

On Python 3.11 ``asyncio.wait_for`` hands its caller the result instead of the
cancellation when both land in the same loop iteration (CPython gh-86296), and a job loop
then goes round again forever: ``serve`` hung at shutdown in the live policy's loop, whose
status write (through :class:`~webhook.kube.runner.Runner`) had just come back. Each test
here makes the two meet on purpose, deterministically: the completion is queued on the
loop first, the cancel right after it, before the loop runs again. The waits for the task
are bounded only so that a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import pytest
from kubernetes import client as k8s

from tests.builders import eventually
from tests.conftest import RuntimeFactory
from tests.scenario import POLICY
from webhook.config import ControlSettings, KubeSettings
from webhook.kube.client import build_api_client
from webhook.kube.control import ControlApi
from webhook.kube.livepolicy import LivePolicy
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats
from webhook.waits import wait_for

P = ParamSpec("P")
T = TypeVar("T")
#: How long a stopped task may take to end before the test calls it hung (it takes one iteration).
ENDS_WITHIN = 10.0


async def ended_cancelled(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` ended by its cancellation (False: it returned, or raised something else)."""
    done, _ = await asyncio.wait({task}, timeout=ENDS_WITHIN)
    assert done, f"{task.get_name()} did not end after it was cancelled: the cancellation was lost"
    return task.cancelled()


class HeldExecutor(concurrent.futures.ThreadPoolExecutor):
    """An executor whose calls the test finishes itself: ``futures`` are handed out, never run."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.futures: list[concurrent.futures.Future[Any]] = []

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.futures.append(future)
        return future


# --------------------------------------------------------------------------- the wait itself


async def _event_set(event: asyncio.Event) -> None:
    event.set()


def _waiting_on_an_event() -> tuple[Awaitable[object], Callable[[], Awaitable[None]]]:
    event = asyncio.Event()
    return event.wait(), lambda: _event_set(event)


def _waiting_on_a_future() -> tuple[Awaitable[object], Callable[[], Awaitable[None]]]:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def complete() -> None:
        future.set_result("answer")

    return future, complete


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_waiting_on_an_event, id="event-set-as-cancelled"),
        pytest.param(_waiting_on_a_future, id="future-done-as-cancelled"),
    ],
)
async def test_a_cancel_that_meets_the_completion_is_not_lost(
    make: Callable[[], tuple[Awaitable[object], Callable[[], Awaitable[None]]]],
) -> None:
    awaitable, complete = make()
    task = asyncio.create_task(wait_for(awaitable, timeout=3600))
    await asyncio.sleep(0)  # the task is waiting
    await complete()
    task.cancel()
    assert await ended_cancelled(task)


async def test_the_wait_gives_the_result_or_times_out_and_cancels_what_it_waited_for() -> None:
    assert await wait_for(asyncio.sleep(0, result="done"), timeout=5) == "done"
    assert await wait_for(asyncio.sleep(0, result="done"), timeout=None) == "done"
    cancelled: list[bool] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(TimeoutError):
        await wait_for(forever(), timeout=0.01)
    assert cancelled == [True]


# --------------------------------------------------------------------------- the jobs


async def test_an_api_call_that_returns_as_its_caller_is_stopped_leaves_the_caller_stopped() -> None:
    """The race that hung ``serve``: the Runner's answer is on its way to the loop as the job is cancelled."""
    runner = Runner(workers=1)
    held = runner._executor = HeldExecutor()
    task = asyncio.create_task(runner(lambda timeout: "written", timeout=60, action="write the policy status"))
    await eventually(lambda: held.futures)
    held.futures[0].set_result("written")  # queues the answer on the loop...
    task.cancel()  # ...and the stop right behind it
    assert await ended_cancelled(task)
    runner.shutdown()


async def test_the_live_policy_loop_ends_when_stopped_as_it_is_woken() -> None:
    """Woken (the watch saw an edit) and stopped in one iteration, while a re-check is scheduled."""
    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"  # nothing listens: the watch thread only retries
    live = LivePolicy(
        api=ControlApi(build_api_client(configuration=configuration, pool_size=1)),
        configmap="psi-policy",
        settings=ControlSettings(),
        kube=KubeSettings(namespace="psi"),
        stats=Stats(),
        reviewer=lambda attrs: (True, ""),
    )
    live._recheck_at = time.monotonic() + 3600  # a rejected version awaits its re-check: a timed wait
    task = asyncio.create_task(live.run())
    await eventually(lambda: live.watch._watch._thread.is_alive())
    await asyncio.sleep(0)
    live.wake()
    task.cancel()
    assert await ended_cancelled(task)
    assert live.watch._watch.stopped, "the loop's own cleanup ran: its watch is stopped"


async def test_a_change_that_arrives_after_the_stop_starts_no_watch(make_runtime: RuntimeFactory) -> None:
    """A watch thread's last event hops onto the loop after ``close()``: it must not re-target the watches.

    (It did: ``sync_targets`` started every wanted watch again, nobody stopped them, and their
    open streams held up the emulator's shutdown for a minute.)
    """
    runtime = await make_runtime(POLICY)
    assert runtime.secrets.targets(), "watching the policy's names"
    await make_runtime.stop(runtime)
    assert runtime.secrets.targets() == set()

    runtime.policy_changed(True, [])  # what a late policy reload or ledger event does: re-target, on the loop
    runtime.refresh_targets()  # and the same, called directly
    await asyncio.sleep(0.1)

    assert runtime.secrets.targets() == set(), "no watch started after the stop"
