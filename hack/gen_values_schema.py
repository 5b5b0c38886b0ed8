#!/usr/bin/env python3
"""Generate the chart's ``values.schema.json``: the ``policy`` part from the pydantic model.

The policy is validated by :class:`webhook.policy.model.Policy` when the webhook loads it,
and by Helm (through ``values.schema.json``) when the chart is rendered. Written twice, the
two drifted apart, so the model is the one source: this script takes
``Policy.model_json_schema(by_alias=True)`` (the camelCase names of ``policy.yaml``), inlines
its ``$defs`` (Helm validates against draft-07, and a ``$ref`` with siblings is ignored there,
so inlining is the one form that means the same to every validator), drops pydantic's
generated ``title`` noise, and puts the result where the hand-written chart schema
(``charts/pullsecret-injector/values.schema.base.json``, every non-policy value) has the
placeholder ``{"$generated": "webhook.policy.model:Policy"}``.

A field added to the model reaches the chart by running this script; what the model checks
in Python only (a validator) reaches the schema only when the model exports it
(``json_schema_extra``, see ``SecretName`` in the model). Usage::

    python hack/gen_values_schema.py          # rewrite values.schema.json
    python hack/gen_values_schema.py --check  # exit 1 (and show a diff) if it is stale
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "pullsecret-injector"
BASE = CHART / "values.schema.base.json"
OUTPUT = CHART / "values.schema.json"
PLACEHOLDER_KEY = "$generated"
#: Beside a placeholder: chart-only properties merged into the generated object.
CHART_PROPERTIES_KEY = "$chartProperties"

#: Keywords of JSON schema 2019-09/2020-12 that a draft-07 validator ignores without a word:
#: a model that needs one would be enforced by the webhook and silently not by Helm.
NOT_IN_DRAFT_07 = frozenset(
    {
        "prefixItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "dependentRequired",
        "dependentSchemas",
        "$dynamicRef",
        "$dynamicAnchor",
        "$anchor",
        "$recursiveRef",
        "minContains",
        "maxContains",
    }
)
#: Keys of a schema node whose value maps names to subschemas (the names are data, not keywords).
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "definitions", "$defs"})


class SchemaError(RuntimeError):
    """The model's JSON schema has a shape this generator cannot turn into draft-07."""


def _inline(node: Any, defs: dict[str, Any], path: str, stack: tuple[str, ...] = ()) -> Any:
    """Return ``node`` with every ``$ref`` replaced by its definition, without pydantic's titles."""
    if isinstance(node, list):
        return [_inline(item, defs, f"{path}/{i}", stack) for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if ref is not None:
        name = str(ref).removeprefix("#/$defs/")
        if name == ref or name not in defs:
            raise SchemaError(f"{path}: $ref {ref!r} does not point into the model's $defs")
        if name in stack:
            raise SchemaError(f"{path}: {name} refers to itself; a recursive model cannot be inlined")
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        target = _inline(defs[name], defs, path, (*stack, name))
        return {**target, **_inline(siblings, defs, path, stack)}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in NOT_IN_DRAFT_07:
            raise SchemaError(f"{path}: {key!r} is not draft-07, Helm would not enforce it")
        if key == "title":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _inline(sub, defs, f"{path}/{key}/{name}", stack) for name, sub in value.items()}
        else:
            out[key] = _inline(value, defs, f"{path}/{key}", stack)
    return out


def policy_schema(model_path: str = "webhook.policy.model:Policy") -> dict[str, Any]:
    """The draft-07 schema of the policy, self-contained (no ``$ref``)."""
    module_name, _, class_name = model_path.partition(":")
    model = getattr(importlib.import_module(module_name), class_name)
    raw: dict[str, Any] = model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Any] = raw.pop("$defs", {})
    schema: dict[str, Any] = _inline(raw, defs, "#")
    schema["description"] = (
        "The injection policy, rendered into policy.yaml. Generated from "
        f"{module_name}.{class_name} by hack/gen_values_schema.py: edit the model, not this."
    )
    return schema


def _fill(node: Any) -> Any:
    """Replace each ``{"$generated": "<module>:<Model>"}`` placeholder of the base schema."""
    if isinstance(node, list):
        return [_fill(item) for item in node]
    if not isinstance(node, dict):
        return node
    if PLACEHOLDER_KEY in node:
        extra = set(node) - {PLACEHOLDER_KEY, CHART_PROPERTIES_KEY}
        if extra:
            raise SchemaError(
                f"a {PLACEHOLDER_KEY} placeholder takes only {CHART_PROPERTIES_KEY} beside it (found {sorted(extra)})"
            )
        schema = policy_schema(str(node[PLACEHOLDER_KEY]))
        # Values of the chart itself that sit beside the model's keys (e.g. policy.existingConfigMap):
        # the templates drop them before rendering policy.yaml, so the model never sees them.
        chart_only = node.get(CHART_PROPERTIES_KEY, {})
        clash = set(chart_only) & set(schema.get("properties", {}))
        if clash:
            raise SchemaError(f"{CHART_PROPERTIES_KEY} names model fields: {sorted(clash)}")
        if chart_only:
            schema["properties"] = {**schema.get("properties", {}), **chart_only}
        return schema
    return {key: _fill(value) for key, value in node.items()}


def render(base: Path = BASE) -> str:
    """The text of ``values.schema.json`` generated from ``base`` and the model."""
    schema = _fill(json.loads(base.read_text(encoding="utf-8")))
    if PLACEHOLDER_KEY in json.dumps(schema):
        raise SchemaError("a placeholder was left unfilled")
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the committed file differs")
    parser.add_argument("--base", type=Path, default=BASE, help="hand-written part of the schema")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the chart's values.schema.json")
    args = parser.parse_args(argv)
    generated = render(args.base)
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    if not args.check:
        if current != generated:
            args.output.write_text(generated, encoding="utf-8")
            print(f"wrote {args.output}")
        return 0
    if current == generated:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        generated.splitlines(keepends=True),
        fromfile=f"{args.output} (committed)",
        tofile=f"{args.output} (generated)",
    )
    sys.stderr.writelines(diff)
    print(f"{args.output} is stale: run python hack/gen_values_schema.py and commit the result", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
