"""The watched caches: Secrets listed and watched by name only, Namespace labels from the watch.

Against kmock's emulator on loopback (``tests/kube_fixtures.py``): the real client, nothing patched.
"""

from __future__ import annotations

import json

import kmock

from tests.builders import eventually, injected, review
from tests.conftest import RuntimeFactory
from tests.kube_fixtures import SECRETS, Apiserver, Cluster, decoded
from tests.scenario import INTERNAL, POLICY, handler_for, shared_source


async def test_secrets_are_only_listed_and_watched_by_name(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    await cluster.secret("team-a", "db-password", {"password": "hunter2"}, type="Opaque")
    runtime = await make_runtime(POLICY)
    await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))

    reads = [
        r for r in apiserver.ours() if r.resource == SECRETS and r.action in (kmock.action.LIST, kmock.action.WATCH)
    ]
    assert reads
    assert {r.params.get("fieldSelector") for r in reads} == {
        "metadata.name=quay-pull",
        "metadata.name=internal-pull",
        "metadata.name=ghcr-pull",
        "metadata.name=shared",
    }
    # The source is read in its own namespace only; the copies' names cluster-wide.
    assert {r.namespace for r in reads if r.params["fieldSelector"] == "metadata.name=shared"} == {"ops"}
    assert runtime.secrets.lookup("team-a", "db-password") == (False, None)
    assert {t for t in runtime.secrets.targets()} == {
        (None, "quay-pull"),
        (None, "internal-pull"),
        (None, "ghcr-pull"),
        ("ops", "shared"),
    }


async def test_a_namespace_selector_is_evaluated_on_watched_labels(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await shared_source(cluster)
    runtime = await make_runtime(POLICY, elect=False)
    await cluster.namespace("lab", internal="yes")  # after start: known through the watch or one GET

    response = await handler_for(runtime).handle(review("lab", "registry.example.com:5000/x/y"))

    assert injected(response) == ["internal-pull"]
    copy = apiserver.secret("lab", "internal-pull")
    assert copy is not None
    assert json.loads(decoded(copy)) == {
        "auths": {"registry.example.com:5000": {"username": "int-user", "password": "int-pass", "auth": INTERNAL}}
    }


async def test_labels_known_without_waiting_are_the_watched_ones(
    cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    """``labels_now`` (the admission hot path's) never asks the API: unknown until the watch shows the namespace."""
    await shared_source(cluster)
    runtime = await make_runtime(POLICY, elect=False)
    await eventually(lambda: runtime.namespaces.synced)
    assert runtime.namespaces.labels_now("lab") is None
    await cluster.namespace("lab", internal="yes")
    await eventually(lambda: runtime.namespaces.labels_now("lab") is not None)
    assert runtime.namespaces.labels_now("lab") == await runtime.namespaces.labels("lab")
    assert (runtime.namespaces.labels_now("lab") or {}).get("internal") == "yes"
