"""The chart's values.schema.json: generated from the policy model, and agreeing with it.

``hack/gen_values_schema.py`` turns ``Policy.model_json_schema()`` into the ``policy`` part of
the chart schema. These tests hold the three promises that make that worth having: the
committed file is what the generator makes (so nobody edits it by hand), a field added to the
model reaches the schema with no change to the generator, and real Helm (the same
``helm install`` path as tests/test_chart.py) accepts and rejects the policies the model
accepts and rejects, for every structural reason a JSON schema can state.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from tests.test_chart import CHART, REPO, Obj, _helm, deep_merge, default_values, render
from webhook.policy.model import Policy, PolicyError, Source, parse_policy

GENERATOR = REPO / "hack" / "gen_values_schema.py"
SCHEMA = CHART / "values.schema.json"
BASE = CHART / "values.schema.base.json"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_values_schema", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _nodes(node: Any, path: str = "#") -> Iterator[tuple[str, Any]]:
    """Every (JSON pointer, value) of a JSON document."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _nodes(value, f"{path}/{i}")


# --------------------------------------------------------------------------- the generator


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == gen.render(BASE), (
        "values.schema.json is stale or edited by hand: run python hack/gen_values_schema.py"
    )


def test_check_mode_exit_codes(tmp_path: Path) -> None:
    """``--check`` passes on the committed file, fails (1) on a stale one and never writes."""
    ok = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / "values.schema.json"
    stale.write_text(SCHEMA.read_text(encoding="utf-8").replace('"minItems": 1', '"minItems": 2', 1))
    before = stale.read_text()
    failed = subprocess.run(
        [sys.executable, str(GENERATOR), "--check", "--output", str(stale)], capture_output=True, text=True, check=False
    )
    assert failed.returncode == 1
    assert "is stale" in failed.stderr
    assert '"minItems": 2' in failed.stderr, "the diff shows the stale line"
    assert stale.read_text() == before
    assert gen.main(["--output", str(stale)]) == 0
    assert stale.read_text() == SCHEMA.read_text(encoding="utf-8")


def test_policy_schema_is_the_models() -> None:
    """Only the placeholder is generated; every other key is the hand-written base."""
    base = json.loads(BASE.read_text(encoding="utf-8"))
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert base["properties"]["policy"] == {"$generated": "webhook.policy.model:Policy"}

    def without(node: Obj, key: str) -> Obj:
        return {k: v for k, v in node.items() if k != key}

    assert without(schema["properties"], "policy") == without(base["properties"], "policy")
    assert without(schema, "properties") == without(base, "properties")
    assert schema["properties"]["policy"] == gen.policy_schema()


def test_policy_schema_is_self_contained_draft_07() -> None:
    """No ``$ref``/``$defs`` (inlined), no pydantic titles, camelCase names, every object closed."""
    policy = gen.policy_schema()
    for path, node in _nodes(policy):
        if not isinstance(node, dict):
            continue
        assert not {"$ref", "$defs", "title"} & set(node), path
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: the model forbids unknown keys"
    rule = policy["properties"]["rules"]["items"]["properties"]
    assert {"failurePolicy", "registries", "secret", "source"} <= set(rule)
    assert "passwordFrom" in rule["source"]["anyOf"][0]["properties"]["credentials"]["anyOf"][0]["properties"]


class _Mirror(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel)

    from_registry: str
    to_registry: str


class ExtendedPolicy(Policy):
    """A policy with a field a later change adds: the generator needs no edit for it."""

    rewrites: tuple[_Mirror, ...] = ()


class _VaultSource(Source):
    """A source kind a later change adds as one more optional field (``token`` was one)."""

    vault: str | None = None


def test_a_new_source_kind_joins_exactly_one_of() -> None:
    schema = _VaultSource.model_json_schema(by_alias=True)
    assert [branch["required"] for branch in schema["oneOf"]] == [["secret"], ["credentials"], ["token"], ["vault"]]


class _Pair(BaseModel):
    pair: tuple[int, str]


class _Tree(BaseModel):
    children: tuple[_Tree, ...] = ()


def _base_with(tmp_path: Path, model: str) -> Path:
    base = json.loads(BASE.read_text(encoding="utf-8"))
    base["properties"]["policy"] = {"$generated": model}
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base))
    return path


def test_a_new_model_field_reaches_the_schema(tmp_path: Path) -> None:
    schema = json.loads(gen.render(_base_with(tmp_path, f"{__name__}:ExtendedPolicy")))
    rewrites = schema["properties"]["policy"]["properties"]["rewrites"]
    assert rewrites["type"] == "array"
    assert rewrites["items"]["additionalProperties"] is False
    assert set(rewrites["items"]["required"]) == {"fromRegistry", "toRegistry"}


@pytest.mark.parametrize(
    ("model", "message"),
    [
        pytest.param(f"{__name__}:_Pair", "'prefixItems' is not draft-07", id="fixed-tuple-needs-2020-12"),
        pytest.param(f"{__name__}:_Tree", "refers to itself", id="recursive-model"),
    ],
)
def test_generator_refuses_what_helm_would_not_enforce(tmp_path: Path, model: str, message: str) -> None:
    with pytest.raises(gen.SchemaError, match=message):
        gen.render(_base_with(tmp_path, model))


# --------------------------------------------------------------------------- Helm agrees with the model

RULE: Obj = {"name": "r", "registries": ["registry.example.com"], "secret": "pull"}
SECRET_SOURCE: Obj = {"secret": {"namespace": "ops", "name": "creds"}}
CREDENTIALS: Obj = {
    "registry": "registry.example.com",
    "username": "bot",
    "passwordFrom": {"namespace": "ops", "name": "token", "key": "token"},
}


def _with(**changes: Any) -> Obj:
    """RULE with keys changed (a value of ``...`` removes the key)."""
    rule = {**RULE, **changes}
    return {k: v for k, v in rule.items() if v is not ...}


#: (id, policy values, expected fragment of Helm's schema error or None when both accept)
AGREEMENT: list[tuple[str, Obj, str | None]] = [
    ("minimal-rule", {"rules": [RULE]}, None),
    ("no-rules", {"rules": []}, None),
    ("repositories-empty", {"rules": [_with(repositories=[])]}, None),
    (
        "every-field",
        {
            "excludeNamespaces": ["kube-*"],
            "rules": [
                _with(
                    repositories=["team/*"],
                    namespaces={
                        "include": ["apps-*"],
                        "exclude": ["apps-sandbox"],
                        "selector": {
                            "matchLabels": {"team": "a"},
                            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}],
                        },
                    },
                    source={"credentials": {**CREDENTIALS, "email": "bot@example.com"}},
                    failurePolicy="Fail",
                )
            ],
        },
        None,
    ),
    ("null-beside-a-source", {"rules": [_with(source={**SECRET_SOURCE, "credentials": None})]}, None),
    ("unknown-rule-key", {"rules": [_with(registry="x")]}, "at '/policy/rules/0': additional properties 'registry'"),
    ("unknown-policy-key", {"rules": [], "excludeNamespace": []}, "additional properties 'excludeNamespace'"),
    (
        "unknown-source-key",
        {"rules": [_with(source={"secret": {"namespace": "ops", "name": "c", "key": "k"}})]},
        "at '/policy/rules/0/source/secret': additional properties 'key'",
    ),
    ("missing-secret", {"rules": [_with(secret=...)]}, "at '/policy/rules/0': missing property 'secret'"),
    ("missing-registries", {"rules": [_with(registries=...)]}, "missing property 'registries'"),
    ("registries-empty", {"rules": [_with(registries=[])]}, "at '/policy/rules/0/registries'"),
    ("name-too-long", {"rules": [_with(name="n" * 64)]}, "at '/policy/rules/0/name'"),
    ("failure-policy-unknown", {"rules": [_with(failurePolicy="Sometimes")]}, "at '/policy/rules/0/failurePolicy'"),
    (
        "selector-operator-unknown",
        {"rules": [_with(namespaces={"selector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}})]},
        "at '/policy/rules/0/namespaces/selector/matchExpressions/0/operator'",
    ),
    (
        "both-sources",
        {"rules": [_with(source={**SECRET_SOURCE, "credentials": CREDENTIALS})]},
        "'oneOf' failed, subschemas 0, 1 matched",
    ),
    ("empty-source", {"rules": [_with(source={})]}, "'oneOf' failed, none matched"),
    ("glob-secret-name", {"rules": [_with(secret="pull-*")]}, "at '/policy/rules/0/secret'"),
    (
        "source-namespace-not-a-label",
        {"rules": [_with(source={"secret": {"namespace": "Vault_NS", "name": "creds"}})]},
        "at '/policy/rules/0/source/secret/namespace'",
    ),
    (
        "password-key-missing",
        {"rules": [_with(source={"credentials": {**CREDENTIALS, "passwordFrom": {"namespace": "ops", "name": "t"}}})]},
        "missing property 'key'",
    ),
    ("rules-not-a-list", {"rules": {"name": "r"}}, "at '/policy/rules'"),
]


def _model_accepts(policy: Obj) -> bool:
    """The model's verdict on the policy Helm renders (chart defaults merged under it)."""
    merged = deep_merge(default_values()["policy"], policy)
    try:
        parse_policy(yaml.safe_dump(merged))
    except PolicyError:
        return False
    return True


@pytest.mark.parametrize(("policy", "error"), [pytest.param(p, e, id=i) for i, p, e in AGREEMENT])
def test_helm_and_the_model_agree(policy: Obj, error: str | None) -> None:
    assert _model_accepts(policy) is (error is None), "the case must be one the model decides this way"
    if error is None:
        rendered = render({"policy": policy})
        assert yaml.safe_load(rendered.one("ConfigMap")["data"]["policy.yaml"]) == rendered.values["policy"]
        return
    with pytest.raises(_helm().HelmError) as excinfo:
        render({"policy": policy})
    message = str(excinfo.value)
    assert "values don't meet the specifications of the schema" in message
    assert error in message


#: Checks JSON schema cannot state (across rules), kept in _policy.tpl: the model makes each too,
#: so the chart never refuses a policy the webhook would take. Rendered without the schema.
TEMPLATE_ONLY: list[tuple[str, Obj, str]] = [
    ("duplicate-rule-names", {"rules": [RULE, _with(secret="other")]}, 'duplicate rule name "r"'),
    (
        "same-secret-two-sources",
        {"rules": [_with(source=SECRET_SOURCE), _with(name="b", source={"credentials": CREDENTIALS})]},
        "one Secret name, one source",
    ),
    ("glob-secret-name", {"rules": [_with(secret="pull-*")]}, "is not a valid Secret name"),
]


@pytest.mark.parametrize(("policy", "error"), [pytest.param(p, e, id=i) for i, p, e in TEMPLATE_ONLY])
def test_template_checks_are_model_checks(policy: Obj, error: str) -> None:
    assert not _model_accepts(policy)
    with pytest.raises(_helm().HelmError) as excinfo:
        render({"policy": policy}, skip_schema_validation=True)
    assert error in str(excinfo.value)
