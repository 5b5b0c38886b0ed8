"""KubeApi: raw-JSON calls with our User-Agent, 404 as None on reads, failures as ApiError.

Synchronous calls, so they run in a thread here as the Runner runs them; the API is kmock's
emulator on loopback (``tests/kube_fixtures.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.kube_fixtures import Apiserver, Cluster, Fault, client_configuration, closed_port
from webhook.kube.client import USER_AGENT, KubeApi, build_api_client
from webhook.kube.errors import ApiError


@pytest.fixture
def api(api_host: str) -> Iterator[KubeApi]:
    made = KubeApi(build_api_client(configuration=client_configuration(api_host), pool_size=2))
    yield made
    made.close()


def secret_body(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": {"k": "dg=="}}


async def test_create_get_patch_and_delete_a_secret(apiserver: Apiserver, cluster: Cluster, api: KubeApi) -> None:
    await cluster.namespace("team-a")
    assert await asyncio.to_thread(api.get_secret, "team-a", "s", timeout=2) is None  # 404 is None on reads

    created = await asyncio.to_thread(api.create_secret, "team-a", secret_body("s"), timeout=2)
    assert created["metadata"]["name"] == "s"
    await asyncio.to_thread(api.patch_secret, "team-a", "s", {"data": {"k": "eA=="}}, timeout=2)
    read = await asyncio.to_thread(api.get_secret, "team-a", "s", timeout=2)
    assert read is not None
    assert read["data"] == {"k": "eA=="}

    await asyncio.to_thread(api.delete_secret, "team-a", "s", uid=None, resource_version=None, timeout=2)
    assert apiserver.secret("team-a", "s") is None
    # Deleting what is already gone is not an error.
    await asyncio.to_thread(api.delete_secret, "team-a", "s", uid=None, resource_version=None, timeout=2)
    assert {r.headers.get("User-Agent") for r in apiserver.ours()} == {USER_AGENT}


async def test_lists_select_by_name_and_page(apiserver: Apiserver, cluster: Cluster, api: KubeApi) -> None:
    for namespace in ("a", "b", "c"):
        await cluster.namespace(namespace)
        await cluster.secret(namespace, "quay-pull", {".dockerconfigjson": "{}"})
        await cluster.secret(namespace, "other", {"x": "y"}, type="Opaque")

    first = await asyncio.to_thread(api.list_secrets, "quay-pull", None, timeout=2, limit=2)
    assert [item["metadata"]["name"] for item in first["items"]] == ["quay-pull", "quay-pull"]
    token = first["metadata"]["continue"]
    rest = await asyncio.to_thread(api.list_secrets, "quay-pull", None, timeout=2, limit=2, continue_=token)
    namespaces = [item["metadata"]["namespace"] for item in first["items"] + rest["items"]]
    assert sorted(namespaces) == ["a", "b", "c"]
    one = await asyncio.to_thread(api.list_secrets, "quay-pull", "b", timeout=2)
    assert [item["metadata"]["namespace"] for item in one["items"]] == ["b"]


@pytest.mark.parametrize(("status", "kind"), [(403, "forbidden"), (409, "conflict"), (500, "server_error")])
async def test_failures_are_api_errors_naming_the_action(
    apiserver: Apiserver, cluster: Cluster, api: KubeApi, status: int, kind: str
) -> None:
    await cluster.namespace("team-a")
    apiserver.faults.append(Fault(method="POST", status=status))
    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(api.create_secret, "team-a", secret_body("s"), timeout=2)
    assert (info.value.kind, info.value.status) == (kind, status)
    assert str(info.value) == f"create Secret team-a/s: HTTP {status}"


async def test_reads_fail_too_when_the_api_is_unreachable() -> None:
    api = KubeApi(
        build_api_client(configuration=client_configuration(f"http://127.0.0.1:{closed_port()}"), pool_size=1)
    )
    try:
        with pytest.raises(ApiError) as info:
            await asyncio.to_thread(api.get_namespace, "team-a", timeout=1)
        assert info.value.kind == "unavailable"
    finally:
        api.close()


async def test_a_slow_api_is_a_timeout(apiserver: Apiserver, api: KubeApi) -> None:
    apiserver.faults.append(Fault(delay=2.0))
    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(api.get_namespace, "team-a", timeout=0.2)
    assert info.value.kind == "timeout"
