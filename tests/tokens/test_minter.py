"""The minters, driven by real plugin processes (the exec provider): sharing, refresh, failure, floor."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests import builders
from webhook.observability.logs import RedactingFilter
from webhook.policy.model import Source, TokenSource
from webhook.secrets.desired import DesiredCopy, is_current
from webhook.tokens.base import Token
from webhook.tokens.errors import ExecPluginError, MintTimeout, TokenError
from webhook.tokens.metrics import TokenMetrics
from webhook.tokens.minter import (
    EXPIRES_AT_ANNOTATION,
    MINTED_AT_ANNOTATION,
    TokenMinters,
    holds_newer_token,
    token_object,
)
from webhook.tokens.schedule import FLOOR

REGISTRY = "registry.example.com"

PLUGIN = """
import json, pathlib, sys, time
here = pathlib.Path(sys.argv[0]).parent
count = int((here / "count").read_text()) + 1 if (here / "count").exists() else 1
(here / "count").write_text(str(count))
if (here / "fail").exists():
    sys.exit(1)
delay = float((here / "delay").read_text()) if (here / "delay").exists() else 0
time.sleep(delay)
duration = (here / "duration").read_text() if (here / "duration").exists() else "1h"
print(json.dumps({
    "kind": "CredentialProviderResponse",
    "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
    "cacheKeyType": "Registry",
    "cacheDuration": duration,
    "auth": {"registry.example.com": {"username": "robot", "password": f"minted-canary-{count:03d}"}},
}))
"""


def plugin_source(tmp_path: Path, **extra: object) -> TokenSource:
    path = tmp_path / "plugin"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(PLUGIN))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return TokenSource.model_validate(
        {"provider": "exec", "registry": REGISTRY, "exec": {"command": [str(path)]}, **extra}
    )


def runs(tmp_path: Path) -> int:
    count = tmp_path / "count"
    return int(count.read_text()) if count.exists() else 0


async def test_one_minter_per_distinct_source_and_one_mint_for_concurrent_callers(tmp_path: Path) -> None:
    source = plugin_source(tmp_path)
    minters = TokenMinters()
    same = TokenSource.model_validate(source.model_dump(by_alias=True))
    auth_host = TokenSource.model_validate({**source.model_dump(by_alias=True), "alsoFor": ["auth.example.com"]})
    assert minters.minter(source) is minters.minter(same) is minters.minter(auth_host)
    objects = await asyncio.gather(*(minters.source_object(source, timeout=10) for _ in range(20)))
    assert runs(tmp_path) == 1, "twenty admissions, one plugin run"
    assert all(obj is objects[0] for obj in objects), "one object: the copy memo keys on its identity"
    assert minters.cached_object(source) is objects[0]


async def test_a_failed_mint_keeps_the_last_good_token(tmp_path: Path) -> None:
    source = plugin_source(tmp_path)
    failures: list[tuple[TokenError, Token | None]] = []
    refreshed: list[int] = []
    registry = CollectorRegistry()
    metrics = TokenMetrics(registry)
    minters = TokenMinters(
        on_refresh=lambda: refreshed.append(1),
        on_failure=lambda src, error, last: failures.append((error, last)),
        metrics=metrics,
    )
    minter = minters.minter(source)
    first = await minter.ensure(10)
    assert first.password == "minted-canary-001"
    assert refreshed == [1]
    (tmp_path / "fail").write_text("")
    with pytest.raises(ExecPluginError):
        await minter.mint_shared()
    assert minter.valid() is first, "the last good token is still served"
    assert minters.cached_object(source) is not None
    ((error, last),) = failures
    assert last is first
    assert "exited with status 1" in str(error)
    assert minter.failures == 1
    next_at = minter.next_mint_at()
    assert next_at is not None
    assert next_at < first.expires_at, "retried with backoff, before expiry"
    (tmp_path / "fail").unlink()
    second = await minter.mint_shared()
    assert second.password == "minted-canary-003", "the third plugin run (the second failed)"
    assert minter.failures == 0
    assert registry.get_sample_value("pullsecret_injector_token_mints_total", {"provider": "exec", "result": "ok"}) == 2
    assert (
        registry.get_sample_value("pullsecret_injector_token_mints_total", {"provider": "exec", "result": "error"}) == 1
    )
    assert registry.get_sample_value(
        "pullsecret_injector_token_expiry_timestamp_seconds", {"provider": "exec", "registry": REGISTRY}
    ) == pytest.approx(second.expires_at)


async def test_an_expired_answer_is_served_for_the_floor_and_does_not_spin(tmp_path: Path) -> None:
    (tmp_path / "duration").write_text("0")
    source = plugin_source(tmp_path)
    minters = TokenMinters()
    minter = minters.minter(source)
    token = await minter.ensure(10)
    assert token.lifetime == 0
    for _ in range(10):
        await minters.source_object(source, timeout=10)
    assert runs(tmp_path) == 1, "no mint per admission"
    at = minter.next_mint_at()
    assert at == pytest.approx(token.minted_at + FLOOR)


async def test_a_slow_cold_mint_times_out_and_finishes_in_the_background(tmp_path: Path) -> None:
    (tmp_path / "delay").write_text("1.0")
    source = plugin_source(tmp_path)
    refreshed = asyncio.Event()
    minters = TokenMinters(on_refresh=refreshed.set)
    with pytest.raises(MintTimeout, match="finishing in the background"):
        await minters.source_object(source, timeout=0.1)
    await asyncio.wait_for(refreshed.wait(), timeout=10)
    assert minters.cached_object(source) is not None, "the mint went on after the admission gave up"


async def test_the_refresh_loop_mints_again_from_the_real_expiry(tmp_path: Path) -> None:
    (tmp_path / "duration").write_text("2s")
    source = plugin_source(tmp_path)
    from webhook.tokens.schedule import Schedule

    minters = TokenMinters(schedule=Schedule(floor=0.2, margin=0.5))
    runner = asyncio.create_task(minters.run())
    try:
        first = await minters.minter(source).ensure(10)
        for _ in range(100):
            await asyncio.sleep(0.05)
            current = minters.minter(source).valid()
            if current is not None and current is not first:
                break
        current = minters.minter(source).valid()
        assert current is not None
        assert current is not first
        assert current.minted_at < first.expires_at, "refreshed before the first token expired"
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


def test_token_object_holds_the_registry_and_the_auth_hosts_only() -> None:
    source = TokenSource.model_validate(
        {"provider": "exec", "registry": REGISTRY, "alsoFor": ["auth.example.com"], "exec": {"command": ["x"]}}
    )
    token = Token(username="oauth2accesstoken", password="obj-canary-1", minted_at=1000.0, expires_at=4600.0)
    obj = token_object(source, token)
    config = json.loads(base64.b64decode(obj["data"][".dockerconfigjson"]))
    assert sorted(config["auths"]) == ["auth.example.com", REGISTRY]
    assert obj["metadata"]["annotations"] == {
        MINTED_AT_ANNOTATION: "1970-01-01T00:16:40Z",
        EXPIRES_AT_ANNOTATION: "1970-01-01T01:16:40Z",
    }


@pytest.mark.parametrize(
    ("theirs", "expires", "ours", "now", "newer"),
    [
        pytest.param(
            "2026-01-01T00:10:00Z", "2026-01-01T01:10:00Z", "2026-01-01T00:00:00Z", 1767225600, True, id="newer"
        ),
        pytest.param(
            "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T00:10:00Z", 1767225600, False, id="older"
        ),
        pytest.param(
            "2026-01-01T00:10:00Z", "2026-01-01T00:10:05Z", "2026-01-01T00:00:00Z", 1767226200, False, id="expiring"
        ),
        pytest.param(None, "2026-01-01T01:10:00Z", "2026-01-01T00:00:00Z", 1767225600, False, id="no-annotation"),
        pytest.param("garbage", "2026-01-01T01:10:00Z", "2026-01-01T00:00:00Z", 1767225600, False, id="unparsable"),
    ],
)
def test_holds_newer_token(theirs: str | None, expires: str, ours: str, now: float, newer: bool) -> None:
    annotations = {EXPIRES_AT_ANNOTATION: expires}
    if theirs is not None:
        annotations[MINTED_AT_ANNOTATION] = theirs
    existing = {"metadata": {"annotations": annotations}}
    assert holds_newer_token(existing, {MINTED_AT_ANNOTATION: ours}, now) is newer


async def test_tokens_never_reach_the_log_at_debug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = plugin_source(tmp_path)
    minters = TokenMinters()
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.DEBUG):
        token = await minters.minter(source).ensure(10)
        logging.getLogger("canary").debug("the token is %s, auth %s", token.password, token)
        (tmp_path / "fail").write_text("")
        with pytest.raises(TokenError):
            await minters.minter(source).mint_shared()
    assert caplog.records
    assert token.password not in caplog.text
    assert "[REDACTED]" in caplog.text


async def test_callers_in_backoff_get_the_last_error_without_a_mint_each(tmp_path: Path) -> None:
    (tmp_path / "fail").write_text("")
    source = plugin_source(tmp_path)
    minters = TokenMinters()
    with pytest.raises(ExecPluginError):
        await minters.source_object(source, timeout=10)
    for _ in range(50):  # a reconcile pass over fifty copies
        with pytest.raises(ExecPluginError):
            await minters.source_object(source, timeout=10)
    assert runs(tmp_path) == 1, "one plugin run, then the backoff holds"


def test_a_copy_holding_a_newer_token_from_another_replica_is_current() -> None:
    """Replicas mint their own tokens: the newest valid one in the copy wins, nobody rewrites it."""
    source = Source.model_validate({"token": {"provider": "exec", "registry": REGISTRY, "exec": {"command": ["x"]}}})
    token_source = source.token
    assert token_source is not None
    now = time.time()
    ours = Token(username="u", password="ours-canary-1", minted_at=now - 60, expires_at=now + 3540)
    theirs = Token(username="u", password="theirs-canary-2", minted_at=now - 10, expires_at=now + 3590)
    older = Token(username="u", password="older-canary-3", minted_at=now - 120, expires_at=now + 3480)

    def copy_of(token: Token) -> DesiredCopy:
        return builders.copy_of(token_object(token_source, token), source=source, registries=[REGISTRY])

    desired = copy_of(ours)
    assert is_current(copy_of(theirs).manifest(), desired)
    assert not is_current(copy_of(older).manifest(), desired)
    edited = copy_of(theirs).manifest()
    edited["data"][".dockerconfigjson"] = base64.b64encode(b'{"auths":{}}').decode()
    assert not is_current(edited, desired), "edited by hand: the hash no longer matches, ours is restored"
