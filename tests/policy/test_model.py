"""The policy schema: defaults, and validation errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from webhook.policy.matching import compile_policy
from webhook.policy.model import PolicyError, parse_policy


def _errors(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(yaml.safe_dump(doc))
    return info.value.errors


RULE = {"name": "r", "registries": ["quay.io"], "secret": "s"}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"rules": [{**RULE, "registry": ["x"]}]}, "rules[0].registry: unknown field"),
        ({"rule": []}, "rule: unknown field"),
        ({"rules": [{**RULE, "registries": []}]}, "rules[0].registries"),
        ({"rules": [{**RULE, "registries": ["quay.io/path"]}]}, "put paths in 'repositories'"),
        ({"rules": [{**RULE, "registries": ["bad host"]}]}, "rules[0].registries"),
        ({"rules": [{**RULE, "registries": ["quay.io:0"]}]}, "invalid port"),
        ({"rules": [{**RULE, "secret": "Bad_Name"}]}, "rules[0].secret"),
        ({"rules": [RULE, RULE]}, "repeats rules[0].name"),
        ({"rules": [{**RULE, "repositories": ["Upper/x"]}]}, "rules[0].repositories"),
        ({"rules": [{**RULE, "source": {}}]}, "exactly one of 'secret' or 'credentials'"),
        (
            {"rules": [{**RULE, "source": {"secret": {"namespace": "a", "name": "b"}, "credentials": {}}}]},
            "rules[0].source.credentials",
        ),
        (
            {"rules": [{**RULE, "source": {"credentials": {"registry": "x.io", "username": "u"}}}]},
            "rules[0].source.credentials.passwordFrom: Field required",
        ),
        (
            {"rules": [{**RULE, "namespaces": {"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}}]},
            "needs at least one value",
        ),
        ({"rules": [{**RULE, "failurePolicy": "Sometimes"}]}, "rules[0].failurePolicy"),
        ({"excludeNamespaces": "kube-system"}, "excludeNamespaces"),
        (
            {
                "rules": [
                    {**RULE, "source": {"secret": {"namespace": "a", "name": "b"}}},
                    {**RULE, "name": "r2", "source": {"secret": {"namespace": "a", "name": "c"}}},
                ]
            },
            "one Secret name, one source",
        ),
    ],
    ids=[
        "unknown-rule-key",
        "unknown-top-key",
        "no-registries",
        "path-in-registry",
        "bad-host",
        "port-zero",
        "bad-secret-name",
        "duplicate-name",
        "uppercase-repo",
        "empty-source",
        "both-sources",
        "missing-passwordFrom",
        "in-without-values",
        "bad-failure-policy",
        "exclude-not-list",
        "one-secret-two-sources",
    ],
)
def test_invalid_policies_name_the_field(doc: dict[str, Any], expected: str) -> None:
    errors = _errors(doc)
    assert any(expected in e for e in errors), errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: [", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("", "document is empty"),
        ("# only a comment\n", "document is empty"),
    ],
    ids=["yaml-syntax", "not-a-mapping", "empty", "comment-only"],
)
def test_unreadable_documents(text: str, expected: str) -> None:
    with pytest.raises(PolicyError, match=expected):
        parse_policy(text)


def test_defaults() -> None:
    policy = parse_policy("{}")
    assert policy.exclude_namespaces == ("kube-system", "kube-public", "kube-node-lease")
    assert policy.rules == ()
    rule = parse_policy(yaml.safe_dump({"rules": [RULE]})).rules[0]
    assert rule.failure_policy == "Ignore"
    assert rule.namespaces.include == ()
    assert rule.namespaces.selector is None


def test_bundled_example_is_valid() -> None:
    from webhook.examples import bundled_example

    policy = compile_policy(parse_policy(bundled_example("policy.yaml").read_text()))
    assert [r.name for r in policy.policy.rules] == ["artifact-registry", "docker-hub", "quay", "internal"]
    assert policy.uses_selectors
