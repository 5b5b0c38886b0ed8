"""A rejected policy is reported where operators look: a Warning Event on its ConfigMap."""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.conftest import RuntimeFactory
from tests.kube_fixtures import Apiserver, eventually
from webhook.policy.holder import PolicyHolder
from webhook.policy.matching import load_policy
from webhook.server import policy_rejected_event

GOOD = "rules: [{name: hub, registries: [docker.io], secret: hub-pull}]\n"


async def test_rejected_policy_posts_an_event_on_the_configmap(
    apiserver: Apiserver, make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    holder = PolicyHolder.from_file(path)
    runtime = await make_runtime(holder.current, namespace="pullsecret-system")
    holder.listeners.append(policy_rejected_event(runtime, namespace="pullsecret-system", configmap="psi-policy"))

    path.write_text("rules: [{name: hub, registries: [docker.io], secrets: typo}]\n")
    assert holder.check() is False
    await eventually(lambda: apiserver.events("pullsecret-system"))
    [event] = apiserver.events("pullsecret-system")
    assert event["reason"] == "PolicyRejected"
    assert event["type"] == "Warning"
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "psi-policy",
        "namespace": "pullsecret-system",
    }
    assert "rules[0].secrets: unknown field" in event["message"]
    # The last good policy keeps serving; an accepted change posts nothing.
    assert holder.current().policy.rules[0].secret == "hub-pull"
    path.write_text(GOOD.replace("hub-pull", "hub-pull-2"))
    assert holder.check() is True
    assert holder.current().policy == load_policy(GOOD.replace("hub-pull", "hub-pull-2")).policy
    assert len(apiserver.events("pullsecret-system")) == 1


def test_the_flag_exists() -> None:
    from webhook.cli import build_parser

    args = build_parser().parse_args(["serve", "--policy-configmap", "psi-policy"])
    assert isinstance(args, argparse.Namespace)
    assert args.policy_configmap == "psi-policy"
