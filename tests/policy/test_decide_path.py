"""One decide path: explaining changes the reason's detail, never the decision.

``decide(explain=True)`` (the CLI) and the admission path (``NamespaceDecisions.decide``)
run the same loop; the explanation only adds the rules that were passed over. Checked
on every image x namespace pair of a policy with every kind of rule.
"""

from __future__ import annotations

import itertools

import pytest

from tests.builders import policy_yaml, rule
from webhook.policy.images import parse_image
from webhook.policy.matching import load_policy

POLICY = load_policy(
    policy_yaml(
        rule("gar", "*-docker.pkg.dev", "gar"),
        rule("gar-project", "*-docker.pkg.dev", "gar-project", repositories=["my-project/*"]),
        rule(
            "gar-europe",
            "europe-docker.pkg.dev",
            "gar-europe",
            namespaces={"include": ["team-*"], "exclude": ["team-sandbox"]},
        ),
        rule(
            "labelled",
            "ghcr.io",
            "ghcr",
            repositories=["org/*"],
            namespaces={"selector": {"matchLabels": {"pull": "yes"}}},
        ),
        rule("anything", "*", "fallback", namespaces={"exclude": ["batch-*"]}),
        exclude=["kube-system"],
    )
)
IMAGES = [
    "europe-docker.pkg.dev/my-project/app:1",
    "europe-docker.pkg.dev/other/app:1",
    "us-docker.pkg.dev/my-project/app:1",
    "ghcr.io/org/tool:2",
    "ghcr.io/elsewhere/tool:2",
    "nginx:1.27",
]
NAMESPACES = [
    ("team-a", {"pull": "yes"}),
    ("team-sandbox", {}),
    ("batch-1", {"pull": "yes"}),
    ("kube-system", {"pull": "yes"}),
    ("team-b", None),  # labels unknown
]


@pytest.mark.parametrize(
    ("image", "namespace", "labels"),
    [
        pytest.param(image, namespace, labels, id=f"{image.split(':')[0]}@{namespace}")
        for image, (namespace, labels) in itertools.product(IMAGES, NAMESPACES)
    ],
)
def test_explaining_gives_the_same_decision_with_more_detail(
    image: str, namespace: str, labels: dict[str, str] | None
) -> None:
    ref = parse_image(image)
    plain = POLICY.decide(ref, namespace, labels)
    explained = POLICY.decide(ref, namespace, labels, explain=True)
    assert explained.rule is plain.rule
    assert POLICY.namespace_decisions(namespace, labels).decide(ref) == plain
    if plain.rule is not None or explained.reason == plain.reason:
        assert explained.reason.startswith(plain.reason)
    else:
        assert explained.reason.startswith("no rule applies: ")


@pytest.mark.parametrize(
    ("image", "namespace", "labels", "rule", "passed_over"),
    [
        pytest.param(
            "europe-docker.pkg.dev/other/app:1", "team-sandbox", {}, "gar", ["gar-europe"], id="scope-passed-over"
        ),
        pytest.param("europe-docker.pkg.dev/my-project/x:1", "team-a", {}, "gar-europe", [], id="exact-host-wins"),
        pytest.param("ghcr.io/elsewhere/t:1", "team-a", {"pull": "yes"}, "anything", ["labelled"], id="repository"),
        pytest.param("ghcr.io/org/t:1", "team-b", None, "anything", ["labelled"], id="labels-unknown"),
        pytest.param("nginx:1", "batch-1", {}, None, ["anything"], id="no-rule-applies"),
    ],
)
def test_the_explanation_names_the_rules_passed_over(
    image: str, namespace: str, labels: dict[str, str] | None, rule: str | None, passed_over: list[str]
) -> None:
    decision = POLICY.decide(parse_image(image), namespace, labels, explain=True)
    assert (decision.rule.name if decision.rule is not None else None) == rule
    for name in passed_over:
        assert f"{name}: " in decision.reason
    if not passed_over:
        assert "passed over" not in decision.reason
