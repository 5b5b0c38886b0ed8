"""The Reconciler: rotations, restores of deleted or edited copies, cleanup, finishing handed-off work.

Against kmock's emulator on loopback (``tests/kube_fixtures.py``): the real client, nothing patched.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from tests.builders import eventually, injected, policy_yaml, review, warnings
from tests.conftest import RuntimeFactory
from tests.kube_fixtures import Apiserver, Cluster, Fault, decoded
from tests.scenario import (
    EXCLUDED,
    POLICY,
    QUAY_ONLY,
    QUAY_RULE,
    SHARED_CONFIG,
    admitted_without_source,
    copies_of,
    handler_for,
    shared_source,
)
from webhook.config import BackoffSettings
from webhook.policy.holder import PolicyHolder
from webhook.policy.matching import load_policy
from webhook.runtime import KubeRuntime

#: No pass but on a watch event: no periodic resync, no retry of a failed pass, within any test's
#: wait. A copy that changes then changed because the watch saw its source change, however long
#: a loaded machine takes to get there (which the waits allow for: they are not measurements).
WATCH_ONLY: dict[str, Any] = {
    "resync_seconds": 3600.0,
    "reconcile_backoff": BackoffSettings(initial=3600.0, maximum=3600.0),
}


async def leader_with_copies(
    make_runtime: RuntimeFactory, cluster: Cluster, namespaces: list[str], **settings: Any
) -> KubeRuntime:
    """The shared source, a leading replica, and a copy of quay-pull admitted into each namespace."""
    await shared_source(cluster)
    runtime = await make_runtime(POLICY, **settings)
    await eventually(lambda: runtime.stats.leader)
    await copies_of(runtime, cluster, namespaces, "quay.io/acme/web:1")
    return runtime


async def test_a_copy_appears_once_its_missing_source_is_created(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    """The admitted Pod names the Secret: fixing the source must make it appear (on any replica).

    Made by the source's watch event, not by a retry: the replica retries nothing on a timer here.
    """
    runtime, response = await admitted_without_source(cluster, make_runtime, **WATCH_ONLY)
    assert injected(response) == ["quay-pull"]
    assert apiserver.secret("team-a", "quay-pull") is None

    await cluster.secret("ops", "shared", {".dockerconfigjson": json.dumps(SHARED_CONFIG)})

    await eventually(lambda: apiserver.secret("team-a", "quay-pull") is not None)
    assert decoded(apiserver.secret("team-a", "quay-pull") or {}) == QUAY_ONLY
    await eventually(lambda: not runtime.reconciler.pending)


async def test_a_rotated_source_reaches_every_copy_within_seconds(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    namespaces = ["team-a", "team-b", "team-c"]
    runtime = await leader_with_copies(make_runtime, cluster, namespaces, **WATCH_ONLY)
    rotated = {**SHARED_CONFIG, "auths": {**SHARED_CONFIG["auths"], "quay.io": {"auth": "cm90YXRlZDpuZXc="}}}

    await cluster.update_secret("ops", "shared", {".dockerconfigjson": json.dumps(rotated)})
    expected = b'{"auths":{"quay.io":{"auth":"cm90YXRlZDpuZXc="}}}'
    await eventually(
        lambda: (
            {ns: decoded(s) for ns, s in apiserver.secrets_named("quay-pull").items()}
            == dict.fromkeys(namespaces, expected)
        ),
    )
    assert runtime.stats.reconcile_lag_seconds is not None
    # The pass that wrote the copies records its clean finish just after the last write.
    await eventually(lambda: runtime.stats.last_sync_timestamp is not None, timeout=10)


async def test_a_deleted_copy_is_recreated(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    runtime = await leader_with_copies(make_runtime, cluster, ["team-a"])
    await eventually(lambda: ("team-a", "quay-pull") in runtime.reconciler.tracked)

    await cluster.delete_secret("team-a", "quay-pull")

    await eventually(lambda: apiserver.secret("team-a", "quay-pull") is not None)
    copy = apiserver.secret("team-a", "quay-pull")
    assert copy is not None
    assert decoded(copy) == QUAY_ONLY


async def test_a_copy_edited_by_hand_is_restored(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await leader_with_copies(make_runtime, cluster, ["team-a"])

    await cluster.update_secret("team-a", "quay-pull", {".dockerconfigjson": '{"auths":{}}', "extra": "x"})

    restored = {".dockerconfigjson": base64.b64encode(QUAY_ONLY).decode()}
    await eventually(lambda: (apiserver.secret("team-a", "quay-pull") or {}).get("data") == restored)


@pytest.mark.parametrize(
    ("change", "cleanup", "kept"),
    [
        pytest.param("relabel", True, False, id="namespace-no-longer-selected"),
        pytest.param("relabel", False, True, id="namespace-no-longer-selected-cleanup-off"),
        pytest.param("remove-rule", True, False, id="rule-removed"),
        pytest.param("remove-rule", False, True, id="rule-removed-cleanup-off"),
    ],
)
async def test_copies_no_rule_allows_any_more_are_cleaned_up(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory, change: str, cleanup: bool, kept: bool
) -> None:
    await shared_source(cluster)
    holder = PolicyHolder(POLICY)
    runtime = await make_runtime(holder.current, cleanup=cleanup)
    holder.listeners.append(runtime.policy_changed)
    await eventually(lambda: runtime.stats.leader)
    await cluster.namespace("lab", internal="yes")
    await cluster.namespace("lab-2", internal="yes")
    handler = handler_for(runtime)
    for namespace in ("lab", "lab-2"):
        assert injected(await handler.handle(review(namespace, "registry.example.com:5000/x/y"))) == ["internal-pull"]
    # Someone else's Secret of the same name: cleanup must never touch it.
    await cluster.namespace("lab-3", internal="yes")
    await cluster.secret("lab-3", "internal-pull", {".dockerconfigjson": '{"auths":{}}'})
    foreign = apiserver.secret("lab-3", "internal-pull")

    if change == "relabel":
        await cluster.label_namespace("lab", internal="no")
        gone = ["lab"]
    else:
        holder.replace(load_policy(policy_yaml(QUAY_RULE, exclude=EXCLUDED)))  # internal and fail-closed gone
        holder._notify(True, [])  # what PolicyHolder.check() does after taking a new policy
        gone = ["lab", "lab-2"]

    if kept:
        await asyncio.sleep(0.5)
        assert sorted(apiserver.secrets_named("internal-pull")) == ["lab", "lab-2", "lab-3"]
    else:
        await eventually(
            lambda: sorted(apiserver.secrets_named("internal-pull")) == sorted({"lab", "lab-2", "lab-3"} - set(gone))
        )
        await eventually(lambda: runtime.stats.secret_writes[("delete", "ok")] == len(gone))
    assert apiserver.secret("lab-3", "internal-pull") == foreign
    if change == "remove-rule" and not kept:
        # The retired name's watch stays until its copies are gone, then it is dropped.
        await eventually(lambda: (None, "internal-pull") not in runtime.secrets.targets())


async def test_a_deleted_namespace_drops_its_copies_from_tracking(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    runtime = await leader_with_copies(make_runtime, cluster, ["team-a"])
    await eventually(lambda: ("team-a", "quay-pull") in runtime.reconciler.tracked)

    await cluster.delete_namespace("team-a")
    await cluster.delete_secret("team-a", "quay-pull")  # kmock does not cascade; the namespace controller would

    await eventually(lambda: ("team-a", "quay-pull") not in runtime.reconciler.tracked)
    await asyncio.sleep(0.2)
    assert apiserver.secret("team-a", "quay-pull") is None  # not recreated in a namespace that is gone


@pytest.mark.parametrize("trouble", ["500", "slow"])
async def test_the_background_finishes_what_the_admission_could_not(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory, trouble: str
) -> None:
    await shared_source(cluster)
    await cluster.namespace("team-a")
    runtime = await make_runtime(POLICY, elect=False, ensure_timeout=0.3)  # not even the leader
    fault = Fault(
        method="POST",
        path=r"/api/v1/namespaces/team-a/secrets",
        **({"delay": 1.0} if trouble == "slow" else {"status": 503}),
    )
    apiserver.faults.append(fault)

    response = await handler_for(runtime).handle(review("team-a", "quay.io/acme/web:1"))
    assert warnings(response)
    apiserver.faults.remove(fault)

    await eventually(lambda: apiserver.secret("team-a", "quay-pull") is not None)
    await eventually(lambda: not runtime.reconciler.pending)
    copy = apiserver.secret("team-a", "quay-pull")
    assert copy is not None
    assert decoded(copy) == QUAY_ONLY
