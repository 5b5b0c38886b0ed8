"""The policy seen from the Secret side: which namespace may hold which copy, and what to watch."""

from __future__ import annotations

from tests.scenario import POLICY
from webhook.policy.matching import load_policy
from webhook.secrets.grants import GrantIndex, source_target

TWO_RULES_ONE_SECRET = load_policy("""
rules:
  - name: gar-b
    registries: ["*-docker.pkg.dev"]
    repositories: [project-b]
    secret: gar-pull
    source: {credentials: {registry: europe-docker.pkg.dev, username: _json_key,
                           passwordFrom: {namespace: ops, name: gar-key, key: key.json}}}
  - name: gar-a
    registries: [europe-docker.pkg.dev]
    namespaces: {include: ["team-a"]}
    secret: gar-pull
    source: {credentials: {registry: europe-docker.pkg.dev, username: _json_key,
                           passwordFrom: {namespace: ops, name: gar-key, key: key.json}}}
  - name: no-source
    registries: [docker.io]
    secret: hub-pull
""")


def test_a_namespace_no_rule_admits_gets_no_grant() -> None:
    grants = GrantIndex()
    assert grants.grant_for(POLICY, "team-a", "quay-pull", {}) is not None
    assert grants.grant_for(POLICY, "team-private", "quay-pull", {}) is None  # namespaces.exclude
    assert grants.grant_for(POLICY, "ops", "quay-pull", {}) is None  # excludeNamespaces
    assert grants.grant_for(POLICY, "team-a", "no-such-secret", {}) is None


def test_selector_rules_need_known_labels() -> None:
    grants = GrantIndex()
    assert grants.grant_for(POLICY, "lab", "internal-pull", {"internal": "yes"}) is not None
    assert grants.grant_for(POLICY, "lab", "internal-pull", {"internal": "no"}) is None
    assert grants.grant_for(POLICY, "lab", "internal-pull", None) is None  # unknown labels: not admitted


def test_a_grant_names_the_admitting_rules_and_their_registries() -> None:
    grants = GrantIndex()
    both = grants.grant_for(TWO_RULES_ONE_SECRET, "team-a", "gar-pull", {})
    only_b = grants.grant_for(TWO_RULES_ONE_SECRET, "team-b", "gar-pull", {})
    assert both is not None
    assert only_b is not None
    assert both.names == ("gar-b", "gar-a")
    assert both.registries == ("*-docker.pkg.dev", "europe-docker.pkg.dev")
    assert only_b.names == ("gar-b",)
    assert both.source == only_b.source


def test_namespaces_admitted_alike_share_one_grant() -> None:
    grants = GrantIndex()
    first = grants.grant_for(POLICY, "team-a", "quay-pull", {})
    assert grants.grant_for(POLICY, "team-b", "quay-pull", {"any": "label"}) is first


def test_only_rules_with_a_source_are_managed() -> None:
    grants = GrantIndex()
    assert grants.managed_names(TWO_RULES_ONE_SECRET) == {"gar-pull"}
    assert grants.grant_for(TWO_RULES_ONE_SECRET, "team-a", "hub-pull", {}) is None


def test_watch_targets_are_copy_names_cluster_wide_and_sources_in_their_namespace() -> None:
    grants = GrantIndex()
    assert grants.watch_targets(POLICY) == {
        (None, "quay-pull"),
        (None, "internal-pull"),
        (None, "ghcr-pull"),
        ("ops", "shared"),
    }
    assert grants.watch_targets(TWO_RULES_ONE_SECRET, extra_names=["retired-pull"]) == {
        (None, "gar-pull"),
        (None, "retired-pull"),
        ("ops", "gar-key"),
    }


def test_a_new_policy_object_is_indexed_afresh() -> None:
    grants = GrantIndex()
    assert grants.managed_names(POLICY) == {"quay-pull", "internal-pull", "ghcr-pull"}
    assert grants.managed_names(TWO_RULES_ONE_SECRET) == {"gar-pull"}
    assert grants.grant_for(TWO_RULES_ONE_SECRET, "team-a", "quay-pull", {}) is None


def test_source_target_is_the_secret_a_source_reads() -> None:
    gar = TWO_RULES_ONE_SECRET.policy.rules[0].source
    quay = POLICY.policy.rules[0].source
    assert gar is not None
    assert quay is not None
    assert source_target(gar) == ("ops", "gar-key")
    assert source_target(quay) == ("ops", "shared")
