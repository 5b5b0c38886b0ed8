"""The one bounded cache: never more than its limit, the oldest entry goes first, reads are a dict's."""

from __future__ import annotations

import pytest

from tests.builders import review
from webhook.admission.handler import Handler
from webhook.bounded import BoundedCache
from webhook.config import CacheLimits
from webhook.policy.matching import compile_policy, load_policy

POLICY_TEXT = """
rules:
  - name: quay
    registries: ["quay.io"]
    secret: quay-pull
  - name: examples
    registries: ["*.example"]
    secret: example-pull
    namespaces:
      include: ["team-1*"]
"""
POLICY = load_policy(POLICY_TEXT)


@pytest.mark.parametrize("maxsize", [1, 3, 100], ids=["one", "three", "hundred"])
def test_storing_past_the_limit_forgets_the_oldest_entries_only(maxsize: int) -> None:
    cache: BoundedCache[int, str] = BoundedCache(maxsize)
    for i in range(maxsize * 3):
        cache[i] = str(i)
        assert len(cache) <= maxsize
    assert list(cache) == list(range(maxsize * 2, maxsize * 3))  # the newest survive, in order
    assert cache.evictions == maxsize * 2
    assert cache.get(maxsize * 3 - 1) == str(maxsize * 3 - 1)
    assert cache.get(0) is None


def test_replacing_a_key_evicts_nothing() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache["a"], cache["b"] = 1, 2
    cache["a"] = 3
    assert dict(cache) == {"a": 3, "b": 2}
    assert cache.evictions == 0


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda c, i: c.__setitem__(i, i), id="setitem"),
        pytest.param(lambda c, i: c.setdefault(i, i), id="setdefault"),
        pytest.param(lambda c, i: c.update([(i, i)]), id="update"),
    ],
)
def test_every_way_of_writing_keeps_the_bound(write: object) -> None:
    cache: BoundedCache[int, int] = BoundedCache(5)
    for i in range(50):
        write(cache, i)  # type: ignore[operator]
    assert len(cache) == 5
    assert sorted(cache) == [45, 46, 47, 48, 49]


def test_a_cache_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one"):
        BoundedCache(0)


async def test_the_admission_caches_stay_within_their_named_limits() -> None:
    """Many namespaces and images past the limits: the same answers, and no cache above its limit."""
    limits = CacheLimits(namespaces=8, registries=2, container_plans=4)
    policy = compile_policy(POLICY.policy, limits)
    handler = Handler(policy=lambda: policy, limits=limits)
    unbounded = Handler(policy=lambda: load_policy(POLICY_TEXT))
    for i in range(60):
        request = review(f"team-{i % 20}", f"{'quay.io' if i % 3 else f'r{i % 7}.example'}/app/web:{i % 9}")
        assert await handler.handle(request) == await unbounded.handle(request)
    assert len(policy._ns_cache) == 8
    assert len(policy._host_cache) == 2
    assert len(handler.plans) == 4
    assert policy._ns_cache.evictions > 0
    assert handler.plans.evictions > 0
