"""``serve``'s wiring: the Kubernetes side when a cluster is configured, offline without one, and a
rejected policy reported where operators look (a Warning Event on its ConfigMap).

The cluster is kmock's emulator on loopback (``tests/kube_fixtures.py``), reached through a kubeconfig.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from tests.builders import eventually, injected, kubeconfig, review
from tests.conftest import RuntimeFactory
from tests.kube_fixtures import LEASES, Apiserver, Cluster, closed_port
from tests.scenario import POLICY_TEXT, shared_source
from webhook.cli import build_parser, settings_from_args
from webhook.config import Settings
from webhook.errors import UserError
from webhook.policy.holder import PolicyHolder
from webhook.policy.matching import load_policy
from webhook.server import build_components, policy_rejected_event

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
    args = build_parser().parse_args(["serve", "--policy-configmap", "psi-policy"])
    assert isinstance(args, argparse.Namespace)
    assert args.policy_configmap == "psi-policy"


def serve_args(tmp_path: Path, *extra: str) -> Settings:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_TEXT)
    args = build_parser().parse_args(
        ["serve", "--dev", "--policy", str(policy), "--namespace", "pullsecret-system", *extra]
    )
    return settings_from_args(args, env={})


async def test_serve_wires_the_kube_side_when_a_cluster_is_configured(
    apiserver: Apiserver, cluster: Cluster, api_host: str, tmp_path: Path
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    args = serve_args(
        tmp_path, "--kubeconfig", str(kubeconfig(tmp_path / "kubeconfig", api_host)), "--ensure-timeout", "1"
    )
    components = build_components(args)
    for start in components.on_start:
        await start()
    tasks = [asyncio.create_task(job()) for job in components.background]
    try:
        response = await components.handler.handle(review("team-a", "quay.io/acme/web:1"))
        assert injected(response) == ["quay-pull"]
        assert apiserver.secret("team-a", "quay-pull") is not None
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in components.metrics.registry.collect()
            for s in metric.samples
        }
        assert samples[("pullsecret_injector_secret_writes_total", (("operation", "create"), ("result", "ok")))] == 1
        await eventually(lambda: any(r.resource == LEASES for r in apiserver.ours()))  # it runs for the Lease
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(
    "extra",
    [pytest.param(["--no-kube"], id="no-kube"), pytest.param([], id="no-cluster-configured")],
)
def test_serve_runs_offline_without_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    if extra:  # --no-kube wins over a kubeconfig
        extra = [*extra, "--kubeconfig", str(kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{closed_port()}"))]
    components = build_components(serve_args(tmp_path, *extra))
    assert components.on_start == []
    assert [job.__qualname__ for job in components.background] == ["PolicyHolder.watch", "ReloadingSSLContext.watch"]


def test_a_broken_kubeconfig_is_a_one_line_user_error(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\ncurrent-context: nowhere\n")
    with pytest.raises(UserError, match="cannot configure the Kubernetes client"):
        build_components(serve_args(tmp_path, "--kubeconfig", str(broken)))
