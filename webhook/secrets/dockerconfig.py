"""Docker credential formats and the managed Secret copy: pure functions, no I/O.

A managed copy is derived from a source in three steps, each here and each pure:

1. *parse* the source into an ordered ``server -> AuthEntry`` mapping, whatever shape it
   comes in (``kubernetes.io/dockerconfigjson``, legacy ``kubernetes.io/dockercfg``, an
   Opaque Secret holding a Docker ``config.json`` or Podman ``auth.json``), or *build* it
   from ``credentials`` exactly as ``kubectl create secret docker-registry`` would;
2. *filter* it down to the entries whose registry matches the rule's ``registries``
   (least privilege: a namespace that pulls from quay.io does not receive the Docker Hub
   password that happens to share the source Secret);
3. *render* the copy: ``.dockerconfigjson`` serialized the way Go's ``encoding/json``
   does (so a ``credentials`` source is byte-for-byte what kubectl writes), plus our
   ownership label and annotations, and nothing of the source's metadata.

Everything that decodes credential material registers it with
:func:`webhook.observability.logs.register_secret` (an in-memory side effect, not I/O), so that the log
redactor can scrub it should it ever reach a message. Error messages name Secrets, keys
and registries, never values: they end up in admission warnings and Kubernetes Events.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from webhook.observability.logs import register_secret
from webhook.policy.images import InvalidReference, parse_registry
from webhook.policy.patterns import RegistryPattern

DOCKERCONFIGJSON_TYPE: Final = "kubernetes.io/dockerconfigjson"
DOCKERCFG_TYPE: Final = "kubernetes.io/dockercfg"
OPAQUE_TYPE: Final = "Opaque"
DOCKERCONFIGJSON_KEY: Final = ".dockerconfigjson"
DOCKERCFG_KEY: Final = ".dockercfg"
#: Keys of an Opaque Secret that may hold a Docker/Podman config, in order of preference.
OPAQUE_KEYS: Final = (DOCKERCONFIGJSON_KEY, "config.json", "auth.json", DOCKERCFG_KEY)

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "pullsecret-injector"
RULE_ANNOTATION: Final = "pullsecret-injector.io/rule"
SOURCE_ANNOTATION: Final = "pullsecret-injector.io/source"
HASH_ANNOTATION: Final = "pullsecret-injector.io/content-hash"

#: Entry fields we carry over, in the order they are written. The first four are
#: kubectl's ``DockerConfigEntry`` (username, password, email, auth: that order, all
#: ``omitempty``); the token fields come from Docker's own ``AuthConfig``.
ENTRY_FIELDS: Final = ("username", "password", "email", "auth", "identitytoken", "registrytoken")
_SECRET_FIELDS: Final = frozenset({"password", "auth", "identitytoken", "registrytoken"})


class SourceError(ValueError):
    """A source that cannot produce a copy. ``reason`` is a CamelCase word for Events and metrics.

    Messages name the Secret, key or registry concerned and never contain a value.
    """

    reason = "SourceInvalid"


class SourceNotFound(SourceError):
    reason = "SourceNotFound"


class MalformedSource(SourceError):
    reason = "SourceMalformed"


class NoMatchingCredentials(SourceError):
    """The source is fine but holds nothing for the rule's registries: a copy would be useless."""

    reason = "NoMatchingCredentials"


@dataclass(frozen=True, slots=True)
class AuthEntry:
    """One ``auths`` entry. Secret fields are kept out of ``repr`` so tracebacks stay clean."""

    username: str = ""
    password: str = field(default="", repr=False)
    email: str = ""
    auth: str = field(default="", repr=False)
    identitytoken: str = field(default="", repr=False)
    registrytoken: str = field(default="", repr=False)

    def fields(self) -> list[tuple[str, str]]:
        """The non-empty fields in serialization order (Go's ``omitempty``)."""
        return [(name, value) for name in ENTRY_FIELDS if (value := getattr(self, name))]


#: ``server key -> entry``, in source order. The key is kept verbatim (``https://index.docker.io/v1/``
#: stays a URL): the kubelet understands every spelling, and the copy stays recognisable.
Auths = dict[str, AuthEntry]


def _register_entry(entry: AuthEntry) -> None:
    for name in _SECRET_FIELDS:
        value = getattr(entry, name)
        if value:
            register_secret(value)
            register_secret(_go_string_body(value))  # the JSON-escaped spelling, as written in the copy
    if entry.auth:
        try:
            decoded = base64.b64decode(entry.auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return
        register_secret(decoded)
        _, _, password = decoded.partition(":")
        if password:
            register_secret(password)


def _decode_data(data: Mapping[str, Any], key: str, what: str) -> str:
    """Base64-decode ``data[key]`` (as the API returns it) into text, registering it."""
    raw = data.get(key)
    if not isinstance(raw, str):
        raise MalformedSource(f"{what}: key {key!r} is missing or not a string")
    try:
        text = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise MalformedSource(f"{what}: key {key!r} is not base64-encoded UTF-8 text") from None
    register_secret(text)
    return text


def _load_json(text: str, what: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: str(exc) is safe today, but the document is not.
        raise MalformedSource(f"{what}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _entries(mapping: object, what: str) -> Auths:
    if not isinstance(mapping, dict):
        raise MalformedSource(f"{what}: the auths must be a JSON object")
    auths: Auths = {}
    problems: list[str] = []
    for server, raw in mapping.items():
        if not isinstance(raw, dict):
            problems.append(f"entry {_safe_key(server)} is not an object")
            continue
        values = {name: raw.get(name) for name in ENTRY_FIELDS}
        # Register first: a malformed entry must not leak either.
        for name in _SECRET_FIELDS:
            value = values[name]
            if isinstance(value, str):
                register_secret(value)
        bad = [name for name, value in values.items() if value is not None and not isinstance(value, str)]
        if bad:
            problems.append(f"entry {_safe_key(server)}: {', '.join(bad)} must be strings")
            continue
        entry = AuthEntry(**{name: value for name, value in values.items() if isinstance(value, str)})
        _register_entry(entry)
        auths[server] = entry
    if problems:
        raise MalformedSource(f"{what}: " + "; ".join(problems))
    return auths


def _safe_key(server: str) -> str:
    """A server key fit for a message: registry keys are not secret, but cap their length."""
    return repr(server if len(server) <= 80 else server[:77] + "...")


def parse_docker_config(text: str, *, what: str) -> Auths:
    """A Docker ``config.json`` / ``.dockerconfigjson`` / Podman ``auth.json``: ``{"auths": {...}}``."""
    document = _load_json(text, what)
    if not isinstance(document, dict):
        raise MalformedSource(f"{what}: expected a JSON object with 'auths'")
    if "auths" not in document:
        helpers = "credsStore" in document or "credHelpers" in document
        hint = " (credential helpers cannot be copied; run 'docker login' with a file store)" if helpers else ""
        raise MalformedSource(f"{what}: no 'auths' object{hint}")
    return _entries(document["auths"], what)


def parse_dockercfg(text: str, *, what: str) -> Auths:
    """The legacy ``~/.dockercfg``: the ``auths`` object itself, without the wrapper."""
    return _entries(_load_json(text, what), what)


def parse_source_secret(secret: Mapping[str, Any], *, what: str) -> Auths:
    """Read the credentials out of a source Secret as the API returns it (``data`` base64).

    ``kubernetes.io/dockerconfigjson`` reads ``.dockerconfigjson``; ``kubernetes.io/dockercfg``
    reads ``.dockercfg`` (converted); any other type (Opaque, in practice) is searched for
    :data:`OPAQUE_KEYS` in order, the first one present wins.
    """
    secret_type = secret.get("type") or OPAQUE_TYPE
    data = secret.get("data") or {}
    if not isinstance(data, dict):
        raise MalformedSource(f"{what}: data is not an object")
    if secret_type == DOCKERCONFIGJSON_TYPE:
        return parse_docker_config(_decode_data(data, DOCKERCONFIGJSON_KEY, what), what=what)
    if secret_type == DOCKERCFG_TYPE:
        return parse_dockercfg(_decode_data(data, DOCKERCFG_KEY, what), what=what)
    for key in OPAQUE_KEYS:
        if key in data:
            text = _decode_data(data, key, what)
            where = f"{what} key {key!r}"
            return parse_dockercfg(text, what=where) if key == DOCKERCFG_KEY else parse_docker_config(text, what=where)
    keys = ", ".join(repr(k) for k in OPAQUE_KEYS)
    raise MalformedSource(f"{what}: type {secret_type!r} has none of the keys {keys}")


def secret_value(secret: Mapping[str, Any], key: str, *, what: str) -> str:
    """One key of a Secret, decoded (the ``passwordFrom`` of a ``credentials`` source)."""
    data = secret.get("data") or {}
    if not isinstance(data, dict) or key not in data:
        raise MalformedSource(f"{what}: no key {key!r}")
    value = _decode_data(data, key, what)
    if not value:
        raise MalformedSource(f"{what}: key {key!r} is empty")
    return value


def credentials_auths(*, registry: str, username: str, password: str, email: str | None = None) -> Auths:
    """What ``kubectl create secret docker-registry`` puts in ``auths``: one entry, ``auth`` computed."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    entry = AuthEntry(username=username, password=password, email=email or "", auth=auth)
    _register_entry(entry)
    return {registry: entry}


def filter_auths(auths: Mapping[str, AuthEntry], registries: Iterable[str]) -> Auths:
    """Keep the entries whose registry matches one of the rule's registry patterns.

    Keys are read the way the kubelet reads them (scheme and path dropped, Docker Hub
    aliases folded) and matched with the policy's own kubelet-faithful matcher, so an
    entry is kept exactly when a Pod governed by the rule could use it. A key that is not
    a registry at all is dropped.
    """
    patterns = [RegistryPattern.parse(text) for text in registries]
    kept: Auths = {}
    for server, entry in auths.items():
        try:
            registry = parse_registry(server)
        except InvalidReference:
            continue
        if any(pattern.matches(registry) for pattern in patterns):
            kept[server] = entry
    return kept


# Go's encoding/json (1.22+) string escaping with HTML escaping on, as json.Marshal does:
# '"' and '\' backslashed, \b \f \n \r \t short forms, other C0 controls as \u00XX,
# '<' '>' '&' as \u003c \u003e \u0026, U+2028/U+2029 escaped, invalid UTF-8 (here: lone
# surrogates) as \ufffd. Everything else, non-ASCII included, is written literally.
_GO_SPECIAL = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')
_GO_SHORT = MappingProxyType(
    {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
)


def _go_escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _GO_SHORT.get(char)
    if short is not None:
        return short
    if "\ud800" <= char <= "\udfff":
        return "\\ufffd"
    return f"\\u{ord(char):04x}"


def _go_string_body(value: str) -> str:
    return _GO_SPECIAL.sub(_go_escape, value)


def go_json_string(value: str) -> str:
    """``value`` as Go's ``json.Marshal`` writes a string, quotes included."""
    return '"' + _go_string_body(value) + '"'


def encode_config(auths: Mapping[str, AuthEntry]) -> bytes:
    """Serialize ``{"auths": ...}`` exactly as Go's ``json.Marshal`` of kubectl's types.

    No whitespace; map keys (servers) sorted by their UTF-8 bytes, as Go sorts map keys;
    entry fields in struct order, empty ones omitted. For one entry built by
    :func:`credentials_auths` this is byte-for-byte what ``kubectl create secret
    docker-registry`` stores.
    """
    parts: list[str] = []
    for server in sorted(auths, key=lambda s: s.encode("utf-8", "surrogatepass")):
        entry = auths[server]
        body = ",".join(f"{go_json_string(name)}:{go_json_string(value)}" for name, value in entry.fields())
        parts.append(f"{go_json_string(server)}:{{{body}}}")
    return ('{"auths":{' + ",".join(parts) + "}}").encode("utf-8")


def dockerconfigjson_secret(metadata: dict[str, Any], config: bytes) -> dict[str, Any]:
    """A ``kubernetes.io/dockerconfigjson`` Secret holding ``config`` (from :func:`encode_config`), as the API takes it.

    Every such Secret the project writes or prints (managed copies, minted tokens, what
    ``import`` outputs) has this one shape, ``data`` base64-encoded and nothing beside
    ``metadata``, so a copy and the Secret kubectl would make cannot drift apart.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": DOCKERCONFIGJSON_TYPE,
        "data": {DOCKERCONFIGJSON_KEY: base64.b64encode(config).decode()},
    }


def content_hash(config: bytes) -> str:
    """A stable digest of the copy's content, for the annotation and for change detection.

    Note: a plain digest of credential material is visible to whoever can read the copy's
    metadata, and those readers can read its data as well (metadata-only access to Secrets
    is as privileged as full access in practice), so this reveals nothing new.
    """
    return "sha256:" + hashlib.sha256(config).hexdigest()
