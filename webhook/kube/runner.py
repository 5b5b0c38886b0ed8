"""Runs the synchronous client's calls in a bounded thread pool, with an asyncio-side deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from webhook.kube.errors import ApiTimeout
from webhook.waits import wait_for

T = TypeVar("T")


# --------------------------------------------------------------------------- running calls


class Runner:
    """Runs blocking API calls in a bounded thread pool, off the event loop, each within a timeout.

    ``fn`` receives the timeout to pass to the client, and the wait for it is bounded by
    the same timeout (plus a little grace) on the asyncio side: the socket timeout cannot
    cover the time a call waits for a free worker, nor a server trickling bytes. Bounded
    pool on purpose: when the API server hangs, at most ``workers`` threads wait on it,
    each no longer than its own timeout.
    """

    GRACE: Final = 0.25

    def __init__(self, workers: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube-api")

    async def __call__(self, fn: Callable[[float], T], *, timeout: float, action: str) -> T:
        if timeout <= 0:
            raise ApiTimeout(action=action)
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, timeout)
        try:
            return await wait_for(future, timeout + self.GRACE)
        except TimeoutError:
            raise ApiTimeout(action=action) from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


