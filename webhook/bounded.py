"""The one bounded cache: a dict that forgets its oldest entry when it is full.

Every cache of the webhook that grows with the cluster (namespaces, Pod templates, Secret
copies, grants, error hold-offs, recent Events) is one of these, sized by a named field
of :class:`~webhook.config.CacheLimits`. Before, each site had its own dict emptied
completely when full: one entry past the limit and every cached answer was lost at once,
so the next admissions all paid the cold cost together.

Why oldest-first and not least-recently-used: a hit here is the plain ``dict.get`` of the
C implementation. LRU bookkeeping needs work on every hit (``cachetools.LRUCache`` costs
0.45 us more per hit than a dict; a pop-and-reinsert helper 0.13 us plus a Python call),
and the admission hot path makes four lookups per 3-container review: measured with
``bench/inproc.py``, an LRU made the whole review 1.5 us (7 %) slower. It would buy
nothing while the working set fits the limit, which the limits are sized for; when it does
not, an evicted entry that is still in use costs one rebuild, never a cleared cache.
Not thread-safe beyond what a dict is: each cache is used from the event loop's thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V]):
    """A dict of at most ``maxsize`` entries; storing one more drops the oldest stored.

    Reading is a dict's (``get``, ``[]``, ``in``); every write goes through
    :meth:`__setitem__`, which enforces the bound.
    """

    __slots__ = ("evictions", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"a bounded cache needs room for at least one entry, not {maxsize}")
        super().__init__()
        self.maxsize = maxsize
        #: Entries dropped to make room (for tests and the benchmark).
        self.evictions = 0

    def __setitem__(self, key: K, value: V) -> None:
        if key not in self and len(self) >= self.maxsize:
            del self[next(iter(self))]  # dicts keep insertion order: the first key is the oldest
            self.evictions += 1
        super().__setitem__(key, value)

    def setdefault(self, key: K, default: V) -> V:
        if key in self:
            return self[key]
        self[key] = default
        return default

    def update(self, items: Iterable[tuple[K, V]] = (), /) -> None:  # type: ignore[override]
        for key, value in items:
            self[key] = value

    def __repr__(self) -> str:
        return f"BoundedCache({len(self)}/{self.maxsize}, evictions={self.evictions})"
