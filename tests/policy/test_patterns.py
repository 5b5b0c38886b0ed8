"""Registry and repository patterns, matched on parsed hosts the way the kubelet matches credentials."""

from __future__ import annotations

import pytest

from webhook.policy.images import parse_image
from webhook.policy.patterns import RegistryPattern, repository_matches


@pytest.mark.parametrize(
    ("pattern", "registry", "matches"),
    [
        ("*", "anything.io", True),
        ("*.io", "quay.io", True),
        ("*.io", "a.quay.io", False),
        ("q*y.io", "quay.io", True),
        ("quay.io", "quay.io:443", False),
        ("quay.io:443", "quay.io:443", True),
        ("registry.io", "registry.io.evil.com", False),
        ("docker.io", "index.docker.io", True),
        ("registry-1.docker.io", "docker.io", True),
    ],
    ids=[
        "catch-all",
        "label-glob",
        "glob-not-two-labels",
        "infix-glob",
        "port-absent",
        "port-equal",
        "lookalike",
        "hub-alias",
        "hub-api-alias",
    ],
)
def test_registry_pattern(pattern: str, registry: str, matches: bool) -> None:
    ref = parse_image(f"{registry}/x/y")
    assert RegistryPattern.parse(pattern).matches(ref.registry) is matches


@pytest.mark.parametrize(
    ("pattern", "repository", "matches"),
    [
        ("my-project/*", "my-project/app", True),
        ("my-project/*", "my-project/team/app", True),
        ("my-project/*", "my-project", False),
        ("my-project", "my-project/anything", True),
        ("my-proj*", "my-project/x", True),
        ("my-project/*", "other/app", False),
        ("library/nginx", "library/nginx", True),
    ],
    ids=["one-level", "deeper", "too-short", "prefix", "segment-glob", "other", "exact"],
)
def test_repository_patterns(pattern: str, repository: str, matches: bool) -> None:
    assert repository_matches(pattern, repository) is matches
