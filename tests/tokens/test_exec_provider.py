"""The kubelet credential-provider protocol, against real plugin processes."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

from webhook.observability.logs import redact
from webhook.tokens.errors import ExecPluginError, MintTimeout, TokenError
from webhook.tokens.exec_provider import DurationError, ExecProvider, parse_go_duration, parse_response, pick_auth

REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("0", 0.0, id="zero"),
        pytest.param("6h0m0s", 21600.0, id="kubelet-form"),
        pytest.param("21.6µs", 21.6e-6, id="micro-sign"),
        pytest.param("21.6μs", 21.6e-6, id="greek-mu"),
        pytest.param("21.6us", 21.6e-6, id="us"),
        pytest.param("1.5h", 5400.0, id="fraction"),
        pytest.param("1h30m", 5400.0, id="two-units"),
        pytest.param("300ms", 0.3, id="ms"),
        pytest.param("-1m", -60.0, id="negative"),
        pytest.param("+2s", 2.0, id="plus"),
        pytest.param(".5s", 0.5, id="leading-dot"),
        pytest.param("10ns", 1e-8, id="ns"),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "h", "1d", "1.h1", "-", "1h 2m", "."], ids=repr)
def test_not_go_durations(text: str) -> None:
    with pytest.raises(DurationError):
        parse_go_duration(text)


def write_plugin(tmp_path: Path, body: str, name: str = "plugin") -> Path:
    """A plugin script run by this interpreter; it records the request it read next to itself."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def answering(cache_duration: object, *, password: str = "plugin-canary-password-1") -> str:  # noqa: S107
    response: dict[str, object] = {
        "kind": "CredentialProviderResponse",
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "cacheKeyType": "Registry",
        "auth": {"*.dkr.ecr.*.amazonaws.com": {"username": "AWS", "password": password}},
    }
    if cache_duration != "absent":
        response["cacheDuration"] = cache_duration
    return f"""
        import json, os, pathlib, sys
        request = sys.stdin.read()
        pathlib.Path(sys.argv[0] + ".request").write_text(request)
        pathlib.Path(sys.argv[0] + ".env").write_text(os.environ.get("AWS_REGION", ""))
        print(json.dumps({response!r}))
    """


@pytest.mark.parametrize(
    ("cache_duration", "lifetime"),
    [
        pytest.param("0", 0.0, id="zero-not-cached"),
        pytest.param(None, 3600.0, id="null-uses-default"),
        pytest.param("absent", 3600.0, id="absent-uses-default"),
        pytest.param("6h0m0s", 21600.0, id="six-hours"),
        pytest.param("21.6µs", 21.6e-6, id="micro-seconds"),
    ],
)
def test_plugin_cache_duration_sets_the_lifetime(tmp_path: Path, cache_duration: object, lifetime: float) -> None:
    plugin = write_plugin(tmp_path, answering(cache_duration))
    provider = ExecProvider(
        command=[str(plugin)], registry=REGISTRY, env={"AWS_REGION": "us-east-1"}, default_cache_duration=3600.0
    )
    before = time.time()
    token = provider.mint()
    assert token.username == "AWS"
    assert token.password == "plugin-canary-password-1"
    assert before <= token.minted_at <= time.time()
    assert token.lifetime == pytest.approx(lifetime, abs=1e-6)
    request = json.loads(Path(str(plugin) + ".request").read_text())
    assert request == {
        "kind": "CredentialProviderRequest",
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "image": REGISTRY,
    }
    assert Path(str(plugin) + ".env").read_text() == "us-east-1"
    assert "plugin-canary-password-1" not in redact(f"token={token!r} {token.password}")


def test_a_hanging_plugin_is_killed_at_the_timeout(tmp_path: Path) -> None:
    # A shell plugin: it has written its PID long before the timeout, however loaded the machine.
    plugin = tmp_path / "plugin"
    plugin.write_text('#!/bin/sh\necho $$ > "$0.pid"\nexec sleep 600\n')
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    provider = ExecProvider(command=[str(plugin)], registry=REGISTRY, timeout=2.0)
    with pytest.raises(MintTimeout, match=r"did not answer within 2s"):
        provider.mint()  # (a plugin that sleeps 600 s: only the timeout can end this)
    pid = int(Path(str(plugin) + ".pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("import sys; sys.exit(3)", "exited with status 3", id="exit-status"),
        pytest.param("print('not json secret-ish-output')", "not JSON", id="not-json"),
        pytest.param("print('[]')", "not a JSON object", id="not-object"),
        pytest.param(
            "import json; print(json.dumps({'kind': 'X', 'apiVersion': 'credentialprovider.kubelet.k8s.io/v1'}))",
            "not CredentialProviderResponse",
            id="wrong-kind",
        ),
        pytest.param(
            "import json; print(json.dumps({'kind': 'CredentialProviderResponse', 'apiVersion': 'v0'}))",
            "apiVersion",
            id="wrong-version",
        ),
        pytest.param(
            "import json; print(json.dumps({'kind': 'CredentialProviderResponse', "
            "'apiVersion': 'credentialprovider.kubelet.k8s.io/v1', 'cacheKeyType': 'Pod'}))",
            "cacheKeyType",
            id="bad-cache-key-type",
        ),
        pytest.param(
            "import json; print(json.dumps({'kind': 'CredentialProviderResponse', "
            "'apiVersion': 'credentialprovider.kubelet.k8s.io/v1', 'cacheKeyType': 'Image', 'cacheDuration': '1d'}))",
            "not a Go duration",
            id="bad-duration",
        ),
        pytest.param(
            "import json; print(json.dumps({'kind': 'CredentialProviderResponse', "
            "'apiVersion': 'credentialprovider.kubelet.k8s.io/v1', 'cacheKeyType': 'Image', "
            "'auth': {'other.example.com': {'username': 'u', 'password': 'p-canary-123'}}}))",
            "no credential matching",
            id="no-matching-entry",
        ),
    ],
)
def test_plugin_failures_are_errors_without_the_output(tmp_path: Path, body: str, message: str) -> None:
    plugin = write_plugin(tmp_path, body)
    with pytest.raises(ExecPluginError, match=message) as caught:
        ExecProvider(command=[str(plugin)], registry=REGISTRY).mint()
    assert isinstance(caught.value, TokenError)
    assert "secret-ish-output" not in str(caught.value)
    assert "p-canary-123" not in str(caught.value)


def test_a_missing_plugin_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ExecPluginError, match="cannot run plugin"):
        ExecProvider(command=[str(tmp_path / "absent")], registry=REGISTRY).mint()


@pytest.mark.parametrize(
    ("auth", "registry", "expected"),
    [
        pytest.param({"*.dkr.ecr.*.amazonaws.com": ("AWS", "a")}, REGISTRY, "a", id="glob"),
        pytest.param(
            {"*.dkr.ecr.*.amazonaws.com": ("AWS", "a"), REGISTRY: ("AWS", "b")}, REGISTRY, "b", id="exact-wins"
        ),
        pytest.param({"registry.example.com": ("u", "a")}, REGISTRY, None, id="none"),
        pytest.param({"not a pattern/x": ("u", "a")}, REGISTRY, None, id="bad-pattern-skipped"),
    ],
)
def test_pick_auth(auth: dict[str, tuple[str, str]], registry: str, expected: str | None) -> None:
    entry = pick_auth(auth, registry)
    assert (entry[1] if entry else None) == expected


def test_parse_response_registers_the_passwords() -> None:
    raw = json.dumps(
        {
            "kind": "CredentialProviderResponse",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "cacheKeyType": "Global",
            "auth": {"r.example.com": {"username": "u", "password": "registered-canary-77"}},
        }
    ).encode()
    response = parse_response(raw)
    assert response.cache_duration is None
    assert redact("x registered-canary-77 y") == "x [REDACTED] y"
