"""The runtime's wiring: watches follow the policy, watch events reach the reconciler, clean shutdown.

Against kmock's emulator on loopback (``tests/kube_fixtures.py``); the scenario is
``tests/scenario.py``'s shared source.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from tests.builders import eventually, injected, policy_yaml, review, rule
from tests.conftest import RuntimeFactory
from tests.kube_fixtures import Apiserver, Cluster
from tests.scenario import EXCLUDED, POLICY, POLICY_TEXT, RULES, handler_for, shared_source
from webhook.config import default_identity
from webhook.policy.holder import PolicyHolder
from webhook.policy.matching import load_policy

WITH_GAR = policy_yaml(*RULES, rule("gar", "*-docker.pkg.dev", "gar-pull", source="ops/gar-source"), exclude=EXCLUDED)


async def test_an_accepted_policy_re_points_the_watches(make_runtime: RuntimeFactory) -> None:
    holder = PolicyHolder(POLICY)
    runtime = await make_runtime(holder.current, elect=False, run=False)  # no reconciler looking at the policy
    holder.listeners.append(runtime.policy_changed)
    assert (None, "gar-pull") not in runtime.secrets.targets()

    holder.replace(load_policy(WITH_GAR))
    runtime.policy_changed(False, ["rejected"])  # a rejected policy changes nothing
    await asyncio.sleep(0.05)
    assert (None, "gar-pull") not in runtime.secrets.targets()
    runtime.policy_changed(True, [])

    await eventually(lambda: {(None, "gar-pull"), ("ops", "gar-source")} <= runtime.secrets.targets())


async def test_a_new_policy_takes_effect_for_admission_at_once(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    await shared_source(cluster)
    await cluster.secret(
        "ops", "gar-source", {".dockerconfigjson": '{"auths":{"europe-docker.pkg.dev":{"auth":"eDp5"}}}'}
    )
    await cluster.namespace("team-a")
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_TEXT)
    holder = PolicyHolder.from_file(path)
    runtime = await make_runtime(holder.current, elect=False)
    holder.listeners.append(runtime.policy_changed)
    handler = handler_for(runtime)
    assert injected(await handler.handle(review("team-a", "europe-docker.pkg.dev/p/app:1"))) == []

    path.write_text(WITH_GAR)
    assert holder.check() is True
    new = holder.current()

    response = await handler_for(runtime, new).handle(review("team-a", "europe-docker.pkg.dev/p/app:1"))
    assert injected(response) == ["gar-pull"]
    assert apiserver.secret("team-a", "gar-pull") is not None


async def test_start_waits_for_the_first_lists(cluster: Cluster, make_runtime: RuntimeFactory) -> None:
    await shared_source(cluster)
    runtime = await make_runtime(POLICY, elect=False, run=False)
    assert runtime.synced
    assert runtime.namespaces.get("ops") is not None
    assert runtime.secrets.lookup("ops", "shared")[1] is not None


async def test_close_is_idempotent(make_runtime: RuntimeFactory) -> None:
    runtime = await make_runtime(POLICY, elect=False, run=False)
    await runtime.close()
    await runtime.close()  # the factory's teardown closes it once more


def test_the_identity_is_the_pod_name() -> None:
    assert default_identity({"POD_NAME": "webhook-7d9f-abcde"}) == "webhook-7d9f-abcde"


def test_without_a_pod_name_the_identity_is_host_and_pid() -> None:
    assert default_identity({}) == f"{socket.gethostname()}-{os.getpid()}"
