"""``import docker-config``: a pull Secret for chosen registries from a laptop's Docker or Podman login.

``kubectl create secret generic --from-file=.dockerconfigjson=~/.docker/config.json`` copies
every registry's credential, or, with a ``credsStore``, none at all (the file then holds
only ``{"credsStore": "desktop"}``). This resolves each ``--registry`` the way the docker CLI
does and builds a Secret holding those registries only:

1. ``credHelpers[registry]``: that helper, for that registry;
2. else ``credsStore``: the store's helper (authoritative, as in docker: an inline
   ``auths`` entry is then only a marker, never a fallback);
3. else the inline ``auths`` entry (``auth`` = base64 ``user:password``, or
   ``username``/``password``, or an ``identitytoken``).

A registry with no credential is refused, naming the helper that failed and why: a Secret
without it would give ``ImagePullBackOff`` much later, far from the cause.

The Secret's ``.dockerconfigjson`` is built by :func:`webhook.secrets.dockerconfig.credentials_auths`
and :func:`~webhook.secrets.dockerconfig.encode_config`, so for one registry it is byte for
byte what ``kubectl create secret docker-registry`` makes, and the printed manifest is
kubectl's ``--dry-run=client -o yaml`` output, byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webhook.observability.logs import register_secret
from webhook.ops.credhelpers import CredentialHelperError, HelperCredential, helper_get
from webhook.policy.images import DOCKER_HUB, InvalidReference, Registry, parse_registry
from webhook.secrets.dockerconfig import (
    DOCKERCONFIGJSON_KEY,
    DOCKERCONFIGJSON_TYPE,
    AuthEntry,
    Auths,
    credentials_auths,
    dockerconfigjson_secret,
    encode_config,
)

#: The key docker uses for Docker Hub in config files and credential helpers.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"

HelperFn = Callable[[str, str], HelperCredential | None]


class ImportFailure(Exception):
    """Nothing was written: the config is unreadable, or a registry has no usable credential."""


class NoCredential(ImportFailure):
    """One registry has no credential; the message says where it was looked for and what failed."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """A registry's credential and where it came from (``origin`` names a file or helper, never a value)."""

    registry: str  # the key written into the Secret: the --registry as given
    entry: AuthEntry = field(repr=False)
    origin: str
    notes: tuple[str, ...] = ()


def docker_config_path(env: Mapping[str, str]) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (the docker CLI's rule)."""
    base = env.get("DOCKER_CONFIG")
    if base:
        return Path(base) / "config.json"
    return Path(env.get("HOME") or Path.home()) / ".docker" / "config.json"


def podman_auth_paths(env: Mapping[str, str]) -> list[Path]:
    """Where Podman (containers-auth.json(5)) looks, in its order; docker's file is its last fallback."""
    home = Path(env.get("HOME") or Path.home())
    paths: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "containers" / "auth.json")
    paths.append(docker_config_path(env))
    return paths


def find_config(explicit: Path | None, *, podman: bool, env: Mapping[str, str]) -> Path:
    if explicit is not None:
        return explicit
    candidates = podman_auth_paths(env) if podman else [docker_config_path(env)]
    for path in candidates:
        if path.is_file():
            return path
    raise ImportFailure("no credentials file found (looked in " + ", ".join(str(p) for p in candidates) + ")")


def load_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ImportFailure(f"cannot read {path}: {exc.strerror}") from None
    register_secret(text)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFailure(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(document, dict):
        raise ImportFailure(f"{path}: not a JSON object")
    return document


def _registry(text: str) -> Registry | None:
    try:
        return parse_registry(text)
    except InvalidReference:
        return None


def _matching_keys(mapping: Mapping[str, Any], wanted: str) -> list[str]:
    """Keys of ``auths``/``credHelpers`` for ``wanted``: the exact spelling first, then the same registry."""
    target = _registry(wanted)
    keys = [key for key in mapping if key == wanted]
    keys += [key for key in mapping if key != wanted and target is not None and _registry(key) == target]
    return keys


def _server_urls(wanted: str, auth_keys: Sequence[str]) -> list[str]:
    """What to ask a helper for: docker stores Docker Hub under its v1 URL, others under the host as logged in."""
    registry = _registry(wanted)
    urls: list[str] = []
    if registry is not None and registry.host == DOCKER_HUB and registry.port is None:
        urls.append(DOCKER_HUB_SERVER)
    urls.extend(auth_keys)
    urls.append(wanted)
    if registry is not None:
        urls.extend([str(registry), f"https://{registry}"])
    return list(dict.fromkeys(urls))


def _from_helper(helper: str, wanted: str, auth_keys: Sequence[str], get: HelperFn, what: str) -> Resolved:
    tried = _server_urls(wanted, auth_keys)
    for url in tried:
        try:
            found = get(helper, url)
        except CredentialHelperError as exc:
            raise NoCredential(f"registry {wanted}: {what} {exc}") from None
        if found is not None:
            return _resolved_from_helper(wanted, found, f"{what} docker-credential-{helper}")
    raise NoCredential(
        f"registry {wanted}: {what} docker-credential-{helper} has no credential for it "
        f"(asked for {', '.join(tried)}; log in with 'docker login {wanted}')"
    )


def _resolved_from_helper(wanted: str, found: HelperCredential, origin: str) -> Resolved:
    if found.identity_token:
        register_secret(found.secret)
        return Resolved(
            wanted,
            AuthEntry(identitytoken=found.secret),
            origin,
            (
                f"registry {wanted}: {origin} returned an identity token (username <token>); it is written as "
                "'identitytoken', which the kubelet does not use: prefer a password or access token",
            ),
        )
    auths = credentials_auths(registry=wanted, username=found.username, password=found.secret)
    return Resolved(wanted, auths[wanted], origin)


def _from_inline(wanted: str, key: str, raw: object, path: Path) -> Resolved:
    origin = f"{path} auths[{key!r}]"
    if not isinstance(raw, dict):
        raise NoCredential(f"registry {wanted}: {origin} is not an object")
    email = raw.get("email") if isinstance(raw.get("email"), str) else None
    username = raw.get("username")
    password = raw.get("password")
    auth = raw.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise NoCredential(f"registry {wanted}: {origin} has an 'auth' that is not base64 text") from None
        register_secret(decoded)
        username, sep, password = decoded.partition(":")
        if not sep:
            raise NoCredential(f"registry {wanted}: {origin} has an 'auth' without 'user:password'")
    if isinstance(username, str) and isinstance(password, str) and username and password:
        register_secret(password)
        auths = credentials_auths(registry=wanted, username=username, password=password, email=email)
        return Resolved(wanted, auths[wanted], origin)
    token = raw.get("identitytoken")
    if isinstance(token, str) and token:
        return _resolved_from_helper(wanted, HelperCredential(wanted, "<token>", token), origin)
    raise NoCredential(f"registry {wanted}: {origin} holds no credential (no auth, username/password or identitytoken)")


def resolve(document: Mapping[str, Any], wanted: str, *, path: Path, get: HelperFn) -> Resolved:
    """The credential for registry ``wanted`` in a docker/podman config, docker's precedence (module docstring)."""
    if _registry(wanted) is None:
        raise ImportFailure(f"--registry {wanted!r} is not a registry host[:port]")
    auths = document.get("auths") if isinstance(document.get("auths"), dict) else {}
    assert isinstance(auths, dict)
    helpers = document.get("credHelpers") if isinstance(document.get("credHelpers"), dict) else {}
    assert isinstance(helpers, dict)
    auth_keys = _matching_keys(auths, wanted)
    helper_keys = _matching_keys(helpers, wanted)
    if helper_keys:
        helper = helpers[helper_keys[0]]
        return _from_helper(str(helper), wanted, auth_keys, get, f"credHelpers[{helper_keys[0]!r}] in {path}:")
    store = document.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, wanted, auth_keys, get, f"credsStore in {path}:")
    if auth_keys:
        return _from_inline(wanted, auth_keys[0], auths[auth_keys[0]], path)
    known = sorted({*auths, *helpers})
    raise NoCredential(
        f"registry {wanted}: {path} has no auths entry, credHelpers entry or credsStore for it "
        f"(it has: {', '.join(known) if known else 'nothing'})"
    )


def resolve_all(document: Mapping[str, Any], registries: Sequence[str], *, path: Path, get: HelperFn) -> list[Resolved]:
    """Every registry, or :class:`NoCredential` listing all that failed (nothing partial is ever written)."""
    resolved: list[Resolved] = []
    failures: list[str] = []
    for wanted in dict.fromkeys(registries):
        try:
            resolved.append(resolve(document, wanted, path=path, get=get))
        except NoCredential as exc:
            failures.append(str(exc))
    if failures:
        raise NoCredential("; ".join(failures))
    return resolved


def secret_body(name: str, namespace: str, resolved: Sequence[Resolved]) -> dict[str, Any]:
    """The Secret as an API body (``--apply``)."""
    auths: Auths = {r.registry: r.entry for r in resolved}
    config = encode_config(auths)
    register_secret(config)
    return dockerconfigjson_secret({"name": name, "namespace": namespace}, config)


def manifest_yaml(body: Mapping[str, Any]) -> str:
    """``kubectl create secret docker-registry ... --dry-run=client -o yaml``, byte for byte.

    Written by hand rather than by a YAML dumper: kubectl sorts keys, never wraps the long
    base64 line and prints ``creationTimestamp: null``; names are DNS labels and need no quoting.
    """
    metadata = body["metadata"]
    data = body["data"][DOCKERCONFIGJSON_KEY]
    return (
        "apiVersion: v1\n"
        "data:\n"
        f"  {DOCKERCONFIGJSON_KEY}: {data}\n"
        "kind: Secret\n"
        "metadata:\n"
        "  creationTimestamp: null\n"
        f"  name: {metadata['name']}\n"
        f"  namespace: {metadata['namespace']}\n"
        f"type: {DOCKERCONFIGJSON_TYPE}\n"
    )


def default_helper(env: Mapping[str, str] | None = None) -> HelperFn:
    environment = dict(os.environ if env is None else env)

    def get(helper: str, server_url: str) -> HelperCredential | None:
        return helper_get(helper, server_url, env=environment)

    return get
