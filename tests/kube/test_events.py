"""Events: posted in the background where ``kubectl describe`` shows them, at most once per interval, redacted.

Against kmock's emulator on loopback, through a runtime's recorder (``tests/kube_fixtures.py``).
"""

from __future__ import annotations

import asyncio

from tests.builders import eventually
from tests.conftest import RuntimeFactory
from tests.kube_fixtures import Apiserver, Fault
from tests.scenario import POLICY
from webhook.observability.logs import REDACTED, register_secret


async def test_a_warning_is_posted_on_the_namespace(apiserver: Apiserver, make_runtime: RuntimeFactory) -> None:
    runtime = await make_runtime(POLICY, elect=False)
    runtime.events.warn(namespace="team-a", secret="quay-pull", reason="SourceNotFound", message="ops/shared missing")
    await eventually(lambda: apiserver.events("team-a"))
    [event] = apiserver.events("team-a")
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Namespace", "name": "team-a", "namespace": "team-a"}
    assert (event["type"], event["reason"], event["message"]) == ("Warning", "SourceNotFound", "ops/shared missing")
    assert event["reportingComponent"] == "pullsecret-injector"
    await eventually(lambda: runtime.stats.events["ok"] == 1)


async def test_the_same_warning_is_posted_once_per_interval(apiserver: Apiserver, make_runtime: RuntimeFactory) -> None:
    runtime = await make_runtime(POLICY, elect=False)
    for _ in range(5):
        runtime.events.warn(namespace="team-a", secret="quay-pull", reason="SourceNotFound", message="m")
    runtime.events.warn(namespace="team-a", secret="hub-pull", reason="SourceNotFound", message="m")
    runtime.events.warn(namespace="team-b", secret="quay-pull", reason="SourceNotFound", message="m")
    await eventually(lambda: len(apiserver.events()) == 3)
    await asyncio.sleep(0.1)
    assert len(apiserver.events("team-a")) == 2
    assert len(apiserver.events("team-b")) == 1


async def test_messages_are_redacted_and_capped(apiserver: Apiserver, make_runtime: RuntimeFactory) -> None:
    register_secret("events-canary-Pa55w0rd-2b7c")
    runtime = await make_runtime(POLICY, elect=False)
    message = "leaked events-canary-Pa55w0rd-2b7c " + "x" * 2000
    runtime.events.warn(namespace="team-a", secret="quay-pull", reason="MalformedSource", message=message)
    await eventually(lambda: apiserver.events("team-a"))
    [event] = apiserver.events("team-a")
    assert event["message"].startswith(f"leaked {REDACTED} x")
    assert len(event["message"]) == 1024


async def test_a_failing_api_is_counted_and_never_raised(apiserver: Apiserver, make_runtime: RuntimeFactory) -> None:
    apiserver.faults.append(Fault(method="POST", path=r"/api/v1/namespaces/team-a/events", status=500))
    runtime = await make_runtime(POLICY, elect=False)
    runtime.events.warn(namespace="team-a", secret="quay-pull", reason="SourceNotFound", message="m")
    await eventually(lambda: runtime.stats.events["error"] == 1)
    assert runtime.stats.events["ok"] == 0
