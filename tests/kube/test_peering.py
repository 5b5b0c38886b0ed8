"""Leader election on a Lease: one replica leads, another takes over when it stops.

Against kmock's emulator on loopback (``tests/kube_fixtures.py``): the real client, nothing patched.
"""

from __future__ import annotations

import asyncio

from tests.builders import eventually
from tests.conftest import RuntimeFactory
from tests.scenario import POLICY


async def test_only_one_replica_leads_and_another_takes_over(make_runtime: RuntimeFactory) -> None:
    first = await make_runtime(POLICY)
    await eventually(lambda: first.stats.leader)
    second = await make_runtime(POLICY)
    await asyncio.sleep(0.5)
    assert (first.stats.leader, second.stats.leader) == (True, False)

    await make_runtime.stop(first)  # SIGTERM: the Lease is released, no need to wait for it to expire

    await eventually(lambda: second.stats.leader, timeout=2)
