"""Waiting with a timeout without losing a cancellation: the one ``wait_for`` of the background jobs.

On Python 3.11, ``asyncio.wait_for`` returns the result instead of raising ``CancelledError``
when its task is cancelled in the loop iteration in which the awaited thing completes
(CPython gh-86296; 3.12 rebuilt ``wait_for`` on ``asyncio.timeout`` and fixed it). A job loop
(``while True``) that relies on the cancellation to end then goes round again and never
ends: that is how ``serve``'s shutdown hung, the live policy's loop handed the result of a
status write that landed just as it was stopped (``tests/test_serve_live.py``).
``asyncio.timeout`` (3.11+) keeps an outside cancellation apart from its own, so this
function awaits under it, on every supported Python alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``awaitable``'s result, ``TimeoutError`` after ``timeout`` s (``None``: no limit); a cancel always wins.

    On timeout the awaitable is cancelled, as with ``asyncio.wait_for``; wrap it in
    ``asyncio.shield`` to let it finish.
    """
    async with asyncio.timeout(timeout):
        return await awaitable


__all__ = ["wait_for"]
