"""The ownership ledger through the runtime, against the kmock emulator over real HTTP.

What only the cluster can remember: the copies made (so a restart with a rule removed
still cleans them up) and the copies owed (so another replica finishes them). The same
on the real API server, with the chart's RBAC: tests/e2e/test_policy_live_e2e.py; writers
racing on the ledger need resourceVersions, which kmock lacks: tests/e2e/test_ledger_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import kmock
import pytest

from tests.builders import eventually, policy_yaml, rule
from tests.conftest import FAST_SETTINGS
from tests.kube_fixtures import Apiserver, Cluster, client_configuration
from webhook.config import ControlSettings, KubeSettings
from webhook.kube.client import build_api_client
from webhook.kube.control import ControlApi
from webhook.kube.ledger import LedgerStore
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats
from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.runtime import KubeRuntime, build_runtime_from_configuration
from webhook.secrets import ledger as lg

CONFIGMAPS = kmock.resource("", "v1", "configmaps")
NAMESPACE = "pullsecret-system"
LEDGER = "psi-ledger"
AUTH = {"auths": {"quay.io": {"auth": "cTpw"}}}

QUAY = rule("quay", "quay.io", "quay-pull", source="ops/shared")
OTHER = rule("other", "ghcr.io", "ghcr-pull", source="ops/shared")
WITH_RULE = load_policy(policy_yaml(QUAY, OTHER))
WITHOUT_RULE = load_policy(policy_yaml(OTHER))  # quay retired: its copies are the ledger's to clean up


class Replicas:
    """Runtimes with a ledger each (one replica = one runtime), all stopped at teardown."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.running: list[tuple[KubeRuntime, asyncio.Task[None], ControlApi, Runner]] = []

    async def start(self, policy: CompiledPolicy, *, elect: bool, identity: str) -> KubeRuntime:
        kube = KubeSettings(**{**FAST_SETTINGS, "identity": identity, "ledger_configmap": LEDGER})
        api = ControlApi(build_api_client(configuration=client_configuration(self.host), pool_size=4))
        runner = Runner(2)
        ledger = LedgerStore(
            api=api,
            runner=runner,
            settings=ControlSettings(ledger_debounce=0.01),
            kube=kube,
            stats=Stats(),
        )
        runtime = build_runtime_from_configuration(
            configuration=client_configuration(self.host),
            policy=lambda: policy,
            settings=kube,
            elect=elect,
            ledger=ledger,
        )
        await runtime.start()
        task = asyncio.create_task(runtime.run())
        self.running.append((runtime, task, api, runner))
        return runtime

    async def stop(self, runtime: KubeRuntime) -> None:
        for entry in list(self.running):
            if entry[0] is runtime:
                self.running.remove(entry)
                _, task, api, runner = entry
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await runtime.close()
                runner.shutdown()
                api.close()

    async def stop_all(self) -> None:
        for runtime, *_ in list(self.running):
            await self.stop(runtime)


@pytest.fixture
async def replicas(apiserver: Apiserver, api_host: str) -> AsyncIterator[Replicas]:
    apiserver.resources[CONFIGMAPS] = kmock.ResourceInfo()
    found = Replicas(api_host)
    yield found
    await found.stop_all()


def ledger_of(apiserver: Apiserver) -> lg.Ledger:
    key = (CONFIGMAPS, NAMESPACE, LEDGER)
    if key not in apiserver.objects or apiserver.objects[key].deleted:
        return lg.Ledger()
    return lg.Ledger.decode(apiserver.objects[key].raw.get("data"))


def when(apiserver: Apiserver, test: Callable[[lg.Ledger], bool]) -> Callable[[], bool]:
    return lambda: test(ledger_of(apiserver))


async def source(cluster: Cluster) -> None:
    await cluster.secret("ops", "shared", {".dockerconfigjson": json.dumps(AUTH)})


async def test_copies_made_are_recorded_and_cleaned_up_after_a_restart_without_their_rule(
    apiserver: Apiserver, cluster: Cluster, replicas: Replicas
) -> None:
    for name in ("ops", "team-a", "team-b", "team-c"):
        await cluster.namespace(name)
    await source(cluster)
    leader = await replicas.start(WITH_RULE, elect=True, identity="replica-1")
    rule = WITH_RULE.rules_by_name["quay"]
    for ns in ("team-a", "team-b", "team-c"):
        result = await leader.ensurer.ensure(namespace=ns, secrets={"quay-pull": rule}, dry_run=False)
        assert result.failed == []
    keys = {(ns, "quay-pull") for ns in ("team-a", "team-b", "team-c")}
    await eventually(when(apiserver, lambda led: keys <= led.copies))
    assert "quay-pull" in ledger_of(apiserver).names  # what the chart's lookup reads
    await replicas.stop(leader)

    restarted = await replicas.start(WITHOUT_RULE, elect=True, identity="replica-2")  # the rule went meanwhile
    await eventually(lambda: not apiserver.secrets_named("quay-pull"))
    await eventually(when(apiserver, lambda led: "quay-pull" not in led.names))
    await eventually(lambda: not any(name == "quay-pull" for _, name in restarted.secrets.targets()))


async def test_a_debt_owed_by_a_stopped_replica_is_finished_by_another(
    apiserver: Apiserver, cluster: Cluster, replicas: Replicas
) -> None:
    for name in ("ops", "team-a"):
        await cluster.namespace(name)
    first = await replicas.start(WITH_RULE, elect=False, identity="replica-1")
    rule = WITH_RULE.rules_by_name["quay"]
    result = await first.ensurer.ensure(namespace="team-a", secrets={"quay-pull": rule}, dry_run=False)
    assert result.failed == ["quay-pull"]  # the source is missing: handed off
    assert ("team-a", "quay-pull") in ledger_of(apiserver).pending  # durable before the answer
    await replicas.stop(first)

    second = await replicas.start(WITH_RULE, elect=False, identity="replica-2")  # never the leader
    assert ("team-a", "quay-pull") in second.reconciler.pending
    await source(cluster)
    await eventually(lambda: apiserver.secret("team-a", "quay-pull") is not None)
    await eventually(when(apiserver, lambda led: not led.pending))
