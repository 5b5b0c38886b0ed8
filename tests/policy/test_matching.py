"""Matching: the most specific applicable rule wins, the explanation says why, rules are indexed by host."""

from __future__ import annotations

import pytest
import yaml

from webhook.policy.images import parse_image
from webhook.policy.matching import CompiledPolicy, load_policy

MATCHING_POLICY = """
rules:
  - name: gar
    registries: ["*-docker.pkg.dev"]
    secret: gar
  - name: gar-project
    registries: ["*-docker.pkg.dev"]
    repositories: ["my-project/*"]
    secret: gar-project
  - name: gar-europe
    registries: ["europe-docker.pkg.dev"]
    secret: gar-europe
  - name: example-any
    registries: ["*.example.com"]
    secret: example-any
  - name: example-deep
    registries: ["*.eu.example.com"]
    secret: example-deep
  - name: internal-port
    registries: ["registry.internal:5000"]
    secret: internal-5000
  - name: internal
    registries: ["registry.internal"]
    secret: internal
  - name: hub
    registries: ["index.docker.io"]
    secret: hub
  - name: hub-bitnami
    registries: ["docker.io"]
    repositories: ["bitnami"]
    secret: hub-bitnami
  - name: registry-io
    registries: ["registry.io"]
    secret: registry-io
  - name: team-only
    registries: ["quay.io"]
    namespaces: {include: ["team-*"], exclude: ["team-sandbox"]}
    secret: quay-team
  - name: labelled
    registries: ["ghcr.io"]
    namespaces: {selector: {matchLabels: {pull-secrets: enabled}}}
    secret: ghcr
  - name: expr
    registries: ["ghcr.io"]
    repositories: ["org/*"]
    namespaces:
      selector:
        matchExpressions:
          - {key: tier, operator: In, values: [gold, silver]}
          - {key: frozen, operator: DoesNotExist}
    secret: ghcr-org
  - name: ipv6
    registries: ["[fc00::1]:5000"]
    secret: v6
  - name: fallback
    registries: ["*"]
    secret: fallback
  - name: fallback-second
    registries: ["*"]
    secret: fallback-second
"""

Labels = dict[str, str] | None

# (id, image, namespace, namespace labels, expected secret or None)
MATCH_CASES: list[tuple[str, str, str, Labels, str | None]] = [
    ("wildcard-label", "us-docker.pkg.dev/other/x/y", "default", None, "gar"),
    ("exact-beats-wildcard", "europe-docker.pkg.dev/other/x", "default", None, "gar-europe"),
    ("exact-beats-wildcard-with-repo", "europe-docker.pkg.dev/my-project/x", "default", None, "gar-europe"),
    ("repo-pattern-beats-no-repo", "us-docker.pkg.dev/my-project/app/img", "default", None, "gar-project"),
    ("repo-pattern-prefix-segments", "asia-docker.pkg.dev/my-project/a/b/c", "default", None, "gar-project"),
    ("wildcard-one-label-only", "a.b.example.com/x", "default", None, "fallback"),
    ("wildcard-not-bare-domain", "example.com/x", "default", None, "fallback"),
    ("wildcard-subdomain", "registry.example.com/x", "default", None, "example-any"),
    ("longer-wildcard-wins", "registry.eu.example.com/x", "default", None, "example-deep"),
    ("port-must-match", "registry.internal:5000/x", "default", None, "internal-5000"),
    ("no-port-not-port-rule", "registry.internal/x", "default", None, "internal"),
    ("other-port-falls-through", "registry.internal:5001/x", "default", None, "fallback"),
    ("hub-alias-in-pattern", "nginx", "default", None, "hub"),
    ("hub-explicit", "docker.io/library/redis:7", "default", None, "hub"),
    ("hub-index-host", "index.docker.io/foo/bar", "default", None, "hub"),
    ("hub-repo-pattern-wins", "bitnami/redis", "default", None, "hub-bitnami"),
    ("lookalike-suffix", "registry.io.evil.com/x", "default", None, "fallback"),
    ("lookalike-prefix", "evilregistry.io/x", "default", None, "fallback"),
    ("exact-host", "registry.io/x", "default", None, "registry-io"),
    ("case-insensitive-host", "REGISTRY.IO/x", "default", None, "registry-io"),
    ("ns-include", "quay.io/x/y", "team-a", None, "quay-team"),
    ("ns-not-included", "quay.io/x/y", "default", None, "fallback"),
    ("ns-exclude", "quay.io/x/y", "team-sandbox", None, "fallback"),
    ("selector-match", "ghcr.io/x/y", "apps", {"pull-secrets": "enabled"}, "ghcr"),
    ("selector-mismatch", "ghcr.io/x/y", "apps", {"pull-secrets": "no"}, "fallback"),
    ("selector-labels-unknown", "ghcr.io/x/y", "apps", None, "fallback"),
    ("expr-in", "ghcr.io/org/y", "apps", {"tier": "gold"}, "ghcr-org"),
    ("expr-does-not-exist", "ghcr.io/org/y", "apps", {"tier": "gold", "frozen": "1"}, "fallback"),
    ("expr-not-in-values", "ghcr.io/org/y", "apps", {"tier": "bronze"}, "fallback"),
    ("ipv6-exact", "[fc00::1]:5000/app", "default", None, "v6"),
    ("ipv6-other-port", "[fc00::1]:5001/app", "default", None, "fallback"),
    ("catch-all-file-order", "unknown.registry/x", "default", None, "fallback"),
    ("excluded-namespace", "nginx", "kube-system", None, None),
]


@pytest.fixture(scope="module")
def matching_policy() -> CompiledPolicy:
    return load_policy(MATCHING_POLICY)


@pytest.mark.parametrize(
    ("image", "namespace", "labels", "expected"), [c[1:] for c in MATCH_CASES], ids=[c[0] for c in MATCH_CASES]
)
def test_most_specific_applicable_rule_wins(
    matching_policy: CompiledPolicy, image: str, namespace: str, labels: Labels, expected: str | None
) -> None:
    decision = matching_policy.decide(parse_image(image), namespace, labels)
    assert (decision.rule.secret if decision.rule else None) == expected, decision.reason


def test_at_least_25_matching_cases() -> None:
    assert len(MATCH_CASES) >= 25


def test_decision_is_stable_across_cache_hits(matching_policy: CompiledPolicy) -> None:
    ref = parse_image("us-docker.pkg.dev/my-project/app")
    first = matching_policy.decide(ref, "default", None)
    second = matching_policy.decide(ref, "default", None)
    assert first == second


def test_explain_says_why_a_closer_rule_did_not_apply(matching_policy: CompiledPolicy) -> None:
    decision = matching_policy.decide(parse_image("quay.io/x"), "team-sandbox", None, explain=True)
    assert decision.rule is not None
    assert decision.rule.name == "fallback"
    assert "passed over: team-only: namespace 'team-sandbox' is in namespaces.exclude" in decision.reason
    none_policy = load_policy("rules: [{name: q, registries: [quay.io], namespaces: {exclude: [x]}, secret: q}]")
    refused = none_policy.decide(parse_image("quay.io/a"), "x", None, explain=True)
    assert refused.rule is None
    assert "namespaces.exclude" in refused.reason


def test_many_rules_are_indexed_by_host() -> None:
    rules = [{"name": f"r{i}", "registries": [f"reg{i}.example.org"], "secret": f"s{i}"} for i in range(1000)]
    policy = load_policy(yaml.safe_dump({"rules": rules}))
    decision = policy.decide(parse_image("reg777.example.org/app"), "default", None)
    assert decision.rule is not None
    assert decision.rule.secret == "s777"
    # Only the one exact entry is a candidate: the other 999 rules are never looked at.
    assert len(policy.candidates(parse_image("reg777.example.org/app").registry)) == 1
