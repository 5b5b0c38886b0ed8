"""The kubelet's keyring matching, table-tested against the rules of pkg/credentialprovider/keyring.go."""

from __future__ import annotations

import pytest

from webhook.ops.kubelet_match import is_default_registry_match, keyring_key, lookup, urls_match
from webhook.policy.images import parse_image

KEY_CASES = [
    pytest.param("registry.example.com", "registry.example.com", id="bare-host"),
    pytest.param("https://registry.example.com", "registry.example.com", id="scheme-dropped"),
    pytest.param("http://registry.example.com:5000/", "registry.example.com:5000", id="http-and-slash"),
    pytest.param("https://index.docker.io/v1/", "index.docker.io", id="docker-hub-v1"),
    pytest.param("quay.io/v2/team", "quay.io/team", id="v2-prefix-stripped"),
    pytest.param("registry.example.com/team/app", "registry.example.com/team/app", id="path-kept"),
    pytest.param("*.example.com", "*.example.com", id="glob-kept"),
]


@pytest.mark.parametrize(("server", "key"), KEY_CASES)
def test_keyring_key(server: str, key: str) -> None:
    assert keyring_key(server) == key


MATCH_CASES = [
    pytest.param("registry.example.com", "registry.example.com/team/app", True, id="host"),
    pytest.param("registry.example.com", "registry.example.com:5000/team/app", False, id="port-must-be-equal"),
    pytest.param("registry.example.com:5000", "registry.example.com/team/app", False, id="port-absent-only-absent"),
    pytest.param("registry.example.com:5000", "registry.example.com:5000/app", True, id="same-port"),
    pytest.param("*.example.com", "registry.example.com/app", True, id="glob-label"),
    pytest.param("*.example.com", "a.b.example.com/app", False, id="glob-never-crosses-a-dot"),
    pytest.param("*.kubernetes.io", "kubernetes.io/app", False, id="label-count"),
    pytest.param("registry.io", "registry.io.evil.com/app", False, id="lookalike"),
    pytest.param("registry.example.com/team", "registry.example.com/team/app", True, id="path-prefix"),
    pytest.param("registry.example.com/team", "registry.example.com/other/app", False, id="path-mismatch"),
    pytest.param("registry.example.com/team", "registry.example.com/team-b/app", True, id="path-prefix-is-a-string"),
    pytest.param("reg[^x].example.com", "rega.example.com/app", True, id="go-negated-class"),
    pytest.param("[::1]:5000", "[::1]:5000/app", True, id="ipv6"),
]


@pytest.mark.parametrize(("glob", "target", "expected"), MATCH_CASES)
def test_urls_match(glob: str, target: str, expected: bool) -> None:
    assert urls_match(glob, target) is expected


def test_default_registry_match() -> None:
    assert is_default_registry_match("docker.io/library/nginx")
    assert is_default_registry_match("nginx")
    assert is_default_registry_match("team/app")
    assert not is_default_registry_match("quay.io/team/app")
    assert not is_default_registry_match("localhost:5000/app")


LOOKUP_CASES = [
    pytest.param(["https://index.docker.io/v1/"], "nginx", ["https://index.docker.io/v1/"], id="hub-v1-fallback"),
    pytest.param(["docker.io"], "nginx", ["docker.io"], id="hub-docker-io-direct"),
    pytest.param(["registry-1.docker.io"], "nginx", [], id="registry-1-is-not-used-by-the-kubelet"),
    pytest.param(
        ["registry.example.com", "registry.example.com/team"],
        "registry.example.com/team/app:1",
        ["registry.example.com/team", "registry.example.com"],
        id="reverse-sorted-longest-first",
    ),
    pytest.param(["registry.example.com"], "registry.example.com:5000/shop/web:1.4", [], id="no-port-entry"),
    pytest.param(["https://quay.io"], "quay.io/team/tool:2", ["https://quay.io"], id="url-key"),
]


@pytest.mark.parametrize(("servers", "image", "expected"), LOOKUP_CASES)
def test_lookup(servers: list[str], image: str, expected: list[str]) -> None:
    found = lookup(servers, parse_image(image).name)
    assert [k.server for k in found] == expected
