"""Token copies through the real runtime (ensurer, reconciler) against the kmock API emulator.

The minted credential comes from a real plugin process (the exec provider): a fast plugin
is minted within the admission's ensure budget; a slow one makes the admission answer with a
warning, and the copy appears in the background when the mint finishes.
"""

from __future__ import annotations

import base64
import json
import stat
import sys
import textwrap
from pathlib import Path

from tests.builders import eventually
from tests.conftest import RuntimeFactory
from tests.kube_fixtures import Apiserver, Cluster
from webhook.policy.matching import CompiledPolicy, load_policy

REGISTRY = "registry.example.com"
PLUGIN = """
import json, pathlib, sys, time
here = pathlib.Path(sys.argv[0]).parent
delay = float((here / "delay").read_text()) if (here / "delay").exists() else 0
time.sleep(delay)
print(json.dumps({
    "kind": "CredentialProviderResponse",
    "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
    "cacheKeyType": "Registry",
    "cacheDuration": "1h",
    "auth": {"registry.example.com": {"username": "robot", "password": "ensure-canary-token"}},
}))
"""


def token_policy(tmp_path: Path) -> CompiledPolicy:
    plugin = tmp_path / "plugin"
    plugin.write_text(f"#!{sys.executable}\n" + textwrap.dedent(PLUGIN))
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    return load_policy(
        json.dumps(
            {
                "rules": [
                    {
                        "name": "tok",
                        "registries": [REGISTRY],
                        "secret": "tok-pull",
                        "source": {
                            "token": {
                                "provider": "exec",
                                "registry": REGISTRY,
                                "alsoFor": ["auth.example.com"],
                                "exec": {"command": [str(plugin)]},
                            }
                        },
                    }
                ]
            }
        )
    )


def auths_of(secret: dict[str, object]) -> dict[str, dict[str, str]]:
    data = secret["data"]
    assert isinstance(data, dict)
    auths: dict[str, dict[str, str]] = json.loads(base64.b64decode(data[".dockerconfigjson"]))["auths"]
    return auths


async def test_a_cold_minter_mints_within_the_ensure_budget(
    tmp_path: Path, apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    policy = token_policy(tmp_path)
    await cluster.namespace("team-a")
    runtime = await make_runtime(policy, elect=False)
    rule = policy.rules_by_name["tok"]
    result = await runtime.ensurer.ensure(namespace="team-a", secrets={"tok-pull": rule}, dry_run=False)
    assert result.failed == []
    assert result.warnings == []
    secret = apiserver.secret("team-a", "tok-pull")
    assert secret is not None, "the copy exists when the admission is answered"
    auths = auths_of(secret)
    assert sorted(auths) == ["auth.example.com", REGISTRY]
    assert auths[REGISTRY]["password"] == "ensure-canary-token"
    annotations = secret["metadata"]["annotations"]
    assert "pullsecret-injector.io/minted-at" in annotations
    assert "pullsecret-injector.io/expires-at" in annotations
    # warm: the next admission is answered from the caches, the token from the minter
    await eventually(lambda: runtime.secrets.lookup("team-a", "tok-pull")[1] is not None)
    again = await runtime.ensurer.ensure(namespace="team-a", secrets={"tok-pull": rule}, dry_run=False)
    assert again.failed == []
    assert runtime.stats.ensures["fast"] >= 1


async def test_a_slow_mint_admits_with_a_warning_and_finishes_in_the_background(
    tmp_path: Path, apiserver: Apiserver, cluster: Cluster, make_runtime: RuntimeFactory
) -> None:
    (tmp_path / "delay").write_text("2.0")  # the ensure budget of the test settings is 1 s
    policy = token_policy(tmp_path)
    await cluster.namespace("team-b")
    runtime = await make_runtime(policy, elect=False)
    rule = policy.rules_by_name["tok"]
    result = await runtime.ensurer.ensure(namespace="team-b", secrets={"tok-pull": rule}, dry_run=False)
    assert result.failed == ["tok-pull"]
    assert any("not minted within" in w or "finishing in background" in w for w in result.warnings), result.warnings
    assert apiserver.secret("team-b", "tok-pull") is None
    await eventually(lambda: apiserver.secret("team-b", "tok-pull") is not None)
    secret = apiserver.secret("team-b", "tok-pull")
    assert secret is not None
    assert auths_of(secret)[REGISTRY]["password"] == "ensure-canary-token"
