"""``pullsecret-injector import k3s FILE``: a k3s ``registries.yaml`` as a policy and Secrets.

k3s configures registries per node (``/etc/rancher/k3s/registries.yaml``, a restart per
change). This reads that file and prints what the webhook needs to do the same cluster-wide:

* ``mirrors`` carry over as they are (same keys, same ``endpoint`` and ``rewrite``);
* every ``configs.<registry>.auth`` becomes a ``kubernetes.io/dockerconfigjson`` Secret in the
  webhook's namespace, exactly what ``kubectl create secret docker-registry`` makes for the
  same username and password (``auth`` is decoded to them; a ``token`` / ``identity_token``,
  which kubectl cannot set, is written as Docker's ``identitytoken``), and a rule that copies
  it into the namespaces whose Pods pull from that registry;
* what cannot cross over is said in the output, never dropped silently: ``tls`` (client
  certificates, CAs, ``insecure_skip_verify``) and plain ``http://`` stay node-level settings,
  an endpoint with an API path no image name can express is left out, an unanchored rewrite
  is anchored, and a rewritten Pod has no per-pull fallback to the default endpoint.

Everything but reading the file and printing is pure (:func:`import_registries`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import yaml

from webhook.policy.mirrors import WILDCARD, MirrorError, parse_endpoint
from webhook.policy.model import PolicyError, parse_policy
from webhook.secrets.dockerconfig import (
    AuthEntry,
    credentials_auths,
    dockerconfigjson_secret,
    encode_config,
)

EXIT_OK = 0
EXIT_BAD_INPUT = 2
DEFAULT_NAMESPACE = "pullsecret-system"

Output = Literal["values", "policy", "secrets"]


class K3sImportError(ValueError):
    """A registries.yaml that cannot be imported (not YAML, wrong shapes)."""


@dataclass(slots=True)
class ImportResult:
    """The policy document, the Secret manifests, and the notes on what stays node-level."""

    policy: dict[str, Any] = field(default_factory=dict)
    secrets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def object_name(registry: str) -> str:
    """A DNS-1123 name for a registry key: ``registry.example.com:5000`` -> ``k3s-registry.example.com-5000``."""
    if registry == WILDCARD:
        return "k3s-any-registry"
    text = re.sub(r"[^a-z0-9.-]+", "-", registry.lower()).strip("-.")
    return f"k3s-{text}"[:63].rstrip("-.")


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise K3sImportError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _text(value: object) -> str:
    return "" if value is None else str(value)


def import_registries(text: str, *, namespace: str = DEFAULT_NAMESPACE) -> ImportResult:
    """Translate one registries.yaml (see the module docstring)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise K3sImportError(f"not valid YAML: {exc}") from None
    top = _mapping(document, "the file")
    result = ImportResult()
    for key in top:
        if key not in ("mirrors", "configs"):
            result.notes.append(f"{key}: not a registries.yaml section the webhook knows, ignored")
    mirrors: dict[str, Any] = {}
    for registry, raw in _mapping(top.get("mirrors"), "mirrors").items():
        entry = _mirror(str(registry), _mapping(raw, f"mirrors.{registry}"), result.notes)
        if entry is not None:
            mirrors[str(registry)] = entry
    rules: list[dict[str, Any]] = []
    for registry, raw in _mapping(top.get("configs"), "configs").items():
        registry = str(registry)
        config = _mapping(raw, f"configs.{registry}")
        if not config:
            result.notes.append(f"configs.{registry}: empty, nothing to import")
        tls = _mapping(config.get("tls"), f"configs.{registry}.tls")
        if tls:
            empty = all(v in (None, "", False) for v in tls.values())
            result.notes.append(
                f"configs.{registry}.tls ({', '.join(tls)}{'; all empty here' if empty else ''}): node-level, keep it "
                "in the nodes' registries.yaml; the webhook only rewrites names and provides pull secrets"
            )
        for key in config:
            if key not in ("auth", "tls"):
                result.notes.append(f"configs.{registry}.{key}: unknown, ignored")
        auth = _mapping(config.get("auth"), f"configs.{registry}.auth")
        if not auth:
            continue
        credentials = _auth_entry(registry, auth, result.notes)
        if credentials is None:
            continue
        name = object_name(registry)
        result.secrets.append(_secret(name, namespace, registry, credentials))
        rules.append(
            {
                "name": name,
                "registries": [registry],
                "secret": name,
                "source": {"secret": {"namespace": namespace, "name": name}},
            }
        )
    if mirrors:
        result.policy["mirrors"] = mirrors
        result.notes.append(
            "mirrors: a rewritten Pod pulls from the mirror only, with no per-pull fallback to the default "
            "endpoint; add check: true to rewrite only images the mirror has (fallback: original keeps the "
            "others as written; fallback: deny is --disable-default-registry-endpoint)"
        )
    if rules:
        result.policy["rules"] = rules
    try:
        parse_policy(yaml.safe_dump(result.policy))
    except PolicyError as exc:  # a bug here, or a registries.yaml key no registry can be
        raise K3sImportError("; ".join(exc.errors)) from None
    return result


def _mirror(registry: str, raw: Mapping[str, Any], notes: list[str]) -> dict[str, Any] | None:
    where = f"mirrors.{registry}"
    endpoints: list[str] = []
    for value in raw.get("endpoint") or []:
        text = _text(value).strip()
        try:
            endpoint = parse_endpoint(text)
        except MirrorError as exc:
            notes.append(f"{where}: endpoint left out: {exc}")
            continue
        if endpoint.scheme == "http":
            notes.append(
                f"{where}: {text} is plain HTTP: the nodes' runtime must be configured for it (node-level); "
                "the webhook rewrites image names only"
            )
        if registry != WILDCARD and str(endpoint.registry) == registry and not endpoint.prefix:
            notes.append(f"{where}: endpoint {text} is the registry itself: images keep their names")
        endpoints.append(text)
    for key in raw:
        if key not in ("endpoint", "rewrite"):
            notes.append(f"{where}.{key}: unknown, ignored")
    if not endpoints:
        notes.append(f"{where}: no usable endpoint, the mirror is left out")
        return None
    entry: dict[str, Any] = {"endpoint": endpoints}
    rewrite = {str(k): _text(v) for k, v in _mapping(raw.get("rewrite"), f"{where}.rewrite").items()}
    for pattern in rewrite:
        if not pattern.startswith("^"):
            notes.append(
                f"{where}.rewrite {pattern!r}: applied from the start of the repository path, as if it began with ^"
            )
    if rewrite:
        entry["rewrite"] = rewrite
    return entry


def _auth_entry(registry: str, auth: Mapping[str, Any], notes: list[str]) -> AuthEntry | None:
    where = f"configs.{registry}.auth"
    username, password = _text(auth.get("username")), _text(auth.get("password"))
    encoded = _text(auth.get("auth"))
    token = _text(auth.get("identity_token") or auth.get("identitytoken") or auth.get("token"))
    for key in auth:
        if key not in ("username", "password", "auth", "token", "identity_token", "identitytoken"):
            notes.append(f"{where}.{key}: unknown, ignored")
    if encoded and not (username or password):
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise K3sImportError(f"{where}.auth is not base64 of username:password") from None
    if not (username or password or token):
        notes.append(f"{where}: no username, password, auth or token, nothing to import")
        return None
    entry = AuthEntry()
    if username or password:
        (entry,) = credentials_auths(registry=registry, username=username, password=password).values()
    if token:
        notes.append(
            f"{where}: the token is written as identitytoken (kubectl create secret docker-registry has no flag for it)"
        )
        entry = AuthEntry(
            username=entry.username, password=entry.password, email=entry.email, auth=entry.auth, identitytoken=token
        )
    return entry


def _secret(name: str, namespace: str, registry: str, entry: AuthEntry) -> dict[str, Any]:
    return dockerconfigjson_secret({"name": name, "namespace": namespace}, encode_config({registry: entry}))


def render(result: ImportResult, output: Output, *, source: str) -> str:
    """The text to print: notes as YAML comments (harmless to kubectl and helm), then the documents."""
    lines = [f"# pullsecret-injector import k3s {source}"]
    lines.extend(f"# NOTE: {note}" for note in result.notes)
    head = "\n".join(lines) + "\n"
    if output == "secrets":
        if not result.secrets:
            return head + "# (no configs.*.auth: no Secrets)\n"
        return head + "".join("---\n" + yaml.safe_dump(s, sort_keys=False) for s in result.secrets)
    document: dict[str, Any] = result.policy if output == "policy" else {"policy": result.policy}
    text = head + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    if result.secrets:
        text += f"# The rules' {len(result.secrets)} Secret(s): --output secrets | kubectl apply -f -\n"
    return text


def cmd_import_k3s(args: argparse.Namespace, out: TextIO) -> int:
    path: Path = args.file
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = import_registries(text, namespace=args.namespace)
    except K3sImportError as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out.write(render(result, args.output, source=str(path)))
    return EXIT_OK


def add_import_kind(kinds: Any) -> None:
    """Add ``k3s`` to the kinds of ``import`` (``kinds`` is its ``add_subparsers()``)."""
    k3s = kinds.add_parser(
        "k3s",
        help="a k3s registries.yaml: mirrors, rules and the Secrets their auth needs",
        description="Print the policy (for helm -f: --output values; for --policy: --output policy) or the "
        "Secret manifests (--output secrets | kubectl apply -f -) for a k3s registries.yaml. TLS settings and "
        "plain HTTP stay node-level: the output says so.",
    )
    k3s.add_argument("file", type=Path, help="the registries.yaml, '-' for stdin")
    k3s.add_argument("--output", "-o", choices=("values", "policy", "secrets"), default="values")
    k3s.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help="the webhook's namespace, where the Secrets go (default: %(default)s)",
    )
    k3s.set_defaults(ops_handler=cmd_import_k3s)
