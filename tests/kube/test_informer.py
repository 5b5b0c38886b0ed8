"""List-then-watch: paged lists that fill the whole cache, and relists when a continue token expires.

Against kmock's emulator on loopback (``tests/kube_fixtures.py``): the real client, nothing patched.
"""

from __future__ import annotations

import kmock

from tests.conftest import RuntimeFactory
from tests.kube_fixtures import SECRETS, Apiserver, Cluster
from tests.scenario import POLICY, QUAY_ONLY, tenants


async def test_watches_list_in_pages_and_fill_the_whole_cache(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    teams = await tenants(cluster, 7, internal="yes")
    for team in teams:
        await cluster.secret(team, "quay-pull", {".dockerconfigjson": QUAY_ONLY}, type="kubernetes.io/dockerconfigjson")

    runtime = await make_runtime(POLICY, elect=False, list_page_size=2)

    # 8 namespaces and 7 copies, listed two at a time: the later pages were really asked for.
    assert apiserver.continued_pages > 0
    for team in teams:
        assert runtime.namespaces.get(team) is not None
        assert runtime.secrets.lookup(team, "quay-pull")[1] is not None
    assert runtime.namespaces.get("ops") is not None
    lists = [r for r in apiserver.ours() if r.action == kmock.action.LIST]
    assert lists
    assert all(r.params.get("limit") == "2" for r in lists)


async def test_an_expired_continue_token_lists_again_from_the_start(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    teams = await tenants(cluster, 5)
    apiserver.expire_continues = 1

    runtime = await make_runtime(POLICY, elect=False, list_page_size=2)

    assert apiserver.expire_continues == 0  # a 410 was answered ...
    assert runtime.synced  # ... and the list started over, with no error backoff
    assert runtime.stats.errors.get("watch", 0) == 0
    assert {team for team in teams if runtime.namespaces.get(team) is not None} == set(teams)


async def test_continue_tokens_that_keep_expiring_end_in_one_full_list(
    apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    await tenants(cluster, 5)
    apiserver.expire_continues = 1000  # every continued page expires

    runtime = await make_runtime(POLICY, elect=False, list_page_size=2)

    assert runtime.synced
    assert runtime.namespaces.get("team-4") is not None
    unpaged = [
        r
        for r in apiserver.ours()
        if r.action == kmock.action.LIST and r.resource != SECRETS and "limit" not in r.params
    ]
    assert unpaged  # the fallback: the namespaces listed in one piece
