"""The desired managed copy: built from a source, compared with what the cluster holds."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook.observability.logs import register_secret
from webhook.policy.model import Source
from webhook.secrets.dockerconfig import (
    DOCKERCONFIGJSON_KEY,
    DOCKERCONFIGJSON_TYPE,
    HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RULE_ANNOTATION,
    SOURCE_ANNOTATION,
    NoMatchingCredentials,
    SourceNotFound,
    content_hash,
    credentials_auths,
    dockerconfigjson_secret,
    encode_config,
    filter_auths,
    parse_source_secret,
    secret_value,
)

# --------------------------------------------------------------------------- the copy


def source_reference(source: Source) -> str:
    """A short, stable description of a source for the annotation (no secret material)."""
    if source.secret is not None:
        return f"secret:{source.secret.namespace}/{source.secret.name}"
    if source.token is not None:  # issue 13: minted tokens
        return f"token:{source.token.provider}/{source.token.registry or 'proxyEndpoint'}"
    assert source.credentials is not None  # Source validates exactly one
    ref = source.credentials.password_from
    return f"credentials:{ref.namespace}/{ref.name}/{ref.key}"


@dataclass(frozen=True, slots=True)
class DesiredCopy:
    """The desired managed Secret in one namespace, ready to be created or compared."""

    name: str
    namespace: str
    config: bytes = field(repr=False)
    rules: tuple[str, ...]
    source: str
    digest: str
    #: More annotations (a minted token's ``minted-at`` / ``expires-at``), as sorted pairs.
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def encoded(self) -> str:
        """``data[".dockerconfigjson"]`` as the API returns it."""
        return base64.b64encode(self.config).decode()

    @property
    def annotations(self) -> dict[str, str]:
        return {
            RULE_ANNOTATION: ",".join(self.rules),
            SOURCE_ANNOTATION: self.source,
            HASH_ANNOTATION: self.digest,
            **dict(self.extra),
        }

    def manifest(self) -> dict[str, Any]:
        """The Secret to create: our label and annotations only, never the source's metadata."""
        metadata = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
            "annotations": self.annotations,
        }
        return dockerconfigjson_secret(metadata, self.config)


def build_copy(
    *,
    name: str,
    namespace: str,
    source: Source,
    rules: Sequence[str],
    registries: Iterable[str],
    source_secret: Mapping[str, Any] | None,
) -> DesiredCopy:
    """The desired copy of ``name`` in ``namespace`` from a source Secret (as the API returns it).

    ``source_secret`` is the ``secret`` source itself, or the Secret that ``passwordFrom``
    names; ``None`` when it does not exist. ``registries`` is the union of the registry
    patterns of the rules that give this namespace this Secret.
    """
    reference = source_reference(source)
    patterns = tuple(registries)
    extra: tuple[tuple[str, str], ...] = ()
    if source.token is not None:  # issue 13: the minter's object, shaped like a source Secret
        what = f"token from {source.token.provider}"
        if source_secret is None:
            raise SourceNotFound(f"{what}: not minted")
        auths = parse_source_secret(source_secret, what=what)
        patterns += source.token.also_for
        annotations = (source_secret.get("metadata") or {}).get("annotations") or {}
        extra = tuple(sorted(annotations.items()))
    elif source.secret is not None:
        what = f"source Secret {source.secret.namespace}/{source.secret.name}"
        if source_secret is None:
            raise SourceNotFound(f"{what} not found")
        auths = parse_source_secret(source_secret, what=what)
        patterns += source.secret.also_for  # issue 13: delegated auth hosts are kept
    else:
        creds = source.credentials
        assert creds is not None
        ref = creds.password_from
        what = f"Secret {ref.namespace}/{ref.name} (passwordFrom)"
        if source_secret is None:
            raise SourceNotFound(f"{what} not found")
        password = secret_value(source_secret, ref.key, what=what)
        auths = {}
        for host in dict.fromkeys([creds.registry, *creds.also_for]):  # issue 13: the same credential per host
            entry = credentials_auths(registry=host, username=creds.username, password=password, email=creds.email)
            auths.update(entry)
        patterns += creds.also_for
    kept = filter_auths(auths, patterns)
    if not kept:
        raise NoMatchingCredentials(f"{what} has no credentials for {', '.join(patterns)}")
    config = encode_config(kept)
    register_secret(config)
    return DesiredCopy(
        name=name,
        namespace=namespace,
        config=config,
        rules=tuple(sorted(set(rules))),
        source=reference,
        digest=content_hash(config),
        extra=extra,
    )




def is_managed(secret: Mapping[str, Any]) -> bool:
    """Whether a Secret carries our ownership label: the only Secrets we ever modify or delete."""
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return isinstance(labels, dict) and labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def is_current(secret: Mapping[str, Any], desired: DesiredCopy) -> bool:
    """Whether an existing Secret already is ``desired``: managed, same type, data and annotations.

    The data is compared itself, not the hash annotation, so a copy edited by hand is
    noticed and restored.
    """
    if not is_managed(secret) or secret.get("type") != DOCKERCONFIGJSON_TYPE:
        return False
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    if desired.extra and _holds_newer_token(secret, desired):  # issue 13: another replica's newer token
        return True
    if secret.get("data") != {DOCKERCONFIGJSON_KEY: desired.encoded}:
        return False
    return all(annotations.get(key) == value for key, value in desired.annotations.items())


def _holds_newer_token(secret: Mapping[str, Any], desired: DesiredCopy) -> bool:
    """A token copy from the same rules and source, unedited, holding a newer valid token (issue 13)."""
    import time

    from webhook.tokens.minter import holds_newer_token

    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    ours = (",".join(desired.rules), desired.source)
    if (annotations.get(RULE_ANNOTATION), annotations.get(SOURCE_ANNOTATION)) != ours:
        return False
    data = secret.get("data") or {}
    encoded = data.get(DOCKERCONFIGJSON_KEY) if isinstance(data, dict) else None
    if not isinstance(encoded, str) or set(data) != {DOCKERCONFIGJSON_KEY}:
        return False
    try:
        config = base64.b64decode(encoded, validate=True)
    except ValueError:
        return False
    if annotations.get(HASH_ANNOTATION) != content_hash(config):
        return False  # edited by hand: restore ours
    return holds_newer_token(secret, desired.annotations, time.time())


def needs_recreate(secret: Mapping[str, Any]) -> bool:
    """A managed Secret of the wrong type: ``type`` is immutable, so only delete + create fixes it."""
    return is_managed(secret) and secret.get("type") != DOCKERCONFIGJSON_TYPE


def update_patch(secret: Mapping[str, Any], desired: DesiredCopy) -> dict[str, Any]:
    """A strategic-merge patch turning a managed ``secret`` into ``desired``.

    Extra data keys are removed; labels and annotations others added are left alone. The
    observed ``resourceVersion`` makes the API server refuse the patch (409) should the
    Secret have changed since it was read, in particular into one that is not ours.
    """
    metadata = secret.get("metadata") or {}
    data: dict[str, str | None] = {key: None for key in (secret.get("data") or {}) if key != DOCKERCONFIGJSON_KEY}
    data[DOCKERCONFIGJSON_KEY] = desired.encoded
    patch_metadata: dict[str, Any] = {
        "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
        "annotations": desired.annotations,
    }
    if metadata.get("resourceVersion"):
        patch_metadata["resourceVersion"] = metadata["resourceVersion"]
    return {"metadata": patch_metadata, "data": data}


