"""Leader election on a Lease: one replica leads, another takes over when it stops.

Against kmock's emulator on loopback (``tests/kube_fixtures.py``): the real client, nothing patched.
"""

from __future__ import annotations

from typing import Any

from tests.builders import eventually
from tests.conftest import RuntimeFactory
from tests.scenario import POLICY

#: A Lease that never expires within a test: a takeover can only come from its release.
NEVER_EXPIRES: dict[str, Any] = {"lease_duration": 3600.0, "renew_deadline": 3000.0}


async def test_only_one_replica_leads_and_another_takes_over(make_runtime: RuntimeFactory) -> None:
    first = await make_runtime(POLICY, **NEVER_EXPIRES)
    await eventually(lambda: first.stats.leader)
    second = await make_runtime(POLICY, **NEVER_EXPIRES)

    def saw_the_lease_held_by_first() -> bool:
        observed = second.elector._observed
        return observed is not None and observed[0] == first.settings.identity

    await eventually(saw_the_lease_held_by_first)
    assert (first.stats.leader, second.stats.leader) == (True, False)

    await make_runtime.stop(first)  # SIGTERM: the Lease is released, no need to wait for it to expire

    await eventually(lambda: second.stats.leader)
