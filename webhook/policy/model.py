"""The injection policy: its YAML schema, and a compiled matcher for the hot path.

The policy is what an operator edits (the ConfigMap key ``policy.yaml``), so it is
validated strictly with pydantic: unknown keys are rejected and every error names the
field. Matching follows the kubelet's credential-provider rules rather than string
prefixes, because a matcher looser than the kubelet's would hand a registry password to
a lookalike host (``registry.io`` must never match ``registry.io.evil.com``).

:class:`CompiledPolicy` is built once per policy version and indexes rules by host so
that a thousand rules cost about what one does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from webhook.policy.images import InvalidReference, parse_registry
from webhook.policy.mirrors import Mirrors, MirrorSet
from webhook.policy.patterns import RegistryPattern
from webhook.policy.scope import LabelSelector, LabelSelectorRequirement, NamespaceScope, _Model

DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")

_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_REPO_SEGMENT_GLOB = re.compile(r"[a-z0-9._*?-]+")


def _secret_name(value: str) -> str:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid Secret name (lowercase DNS-1123 subdomain)")
    return value


def _namespace_name(value: str) -> str:
    if not _DNS1123_LABEL.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid namespace name (lowercase DNS-1123 label)")
    return value


# The validators are the rule; ``json_schema_extra`` exports the same regex into the JSON schema,
# from which hack/gen_values_schema.py generates the chart's values.schema.json: the chart
# computes RBAC resourceNames from these names and renders a Role in each source namespace, so
# it must reject a glob or an invalid name before rendering, not at the webhook's start.

#: A literal Secret name (no globs: RBAC ``resourceNames`` are computed from it).
SecretName = Annotated[
    str,
    AfterValidator(_secret_name),
    Field(json_schema_extra={"pattern": f"^{_DNS1123_SUBDOMAIN.pattern}$", "maxLength": 253}),
]
#: A literal namespace name (a Role is rendered in it).
NamespaceName = Annotated[
    str,
    AfterValidator(_namespace_name),
    Field(json_schema_extra={"pattern": f"^{_DNS1123_LABEL.pattern}$"}),
]


def _exactly_one_property(schema: dict[str, Any]) -> None:
    """JSON schema of "exactly one field is set (not null)", built from the model's own fields.

    One ``oneOf`` branch per field, so a source kind added as a new field joins the rule
    without anyone editing the schema.
    """
    schema["oneOf"] = [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in schema["properties"]
    ]


class PolicyError(ValueError):
    """A policy document that cannot be used; ``errors`` lists one line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid policy: " + "; ".join(self.errors))


class SecretRef(_Model):
    namespace: NamespaceName
    name: SecretName
    #: Auth hosts kept from the source even though no image names them (issue 13: delegated auth).
    also_for: tuple[str, ...] = ()

    @field_validator("also_for")
    @classmethod
    def _also_for_are_hosts(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_registry_host(value) for value in values)


class SecretKeyRef(_Model):
    namespace: NamespaceName
    name: SecretName
    key: str


class Credentials(_Model):
    """Build a ``.dockerconfigjson`` as ``kubectl create secret docker-registry`` would."""

    registry: str
    username: str
    password_from: SecretKeyRef
    email: str | None = None
    #: More hosts that get the same credential (issue 13: a registry's separate auth host).
    also_for: tuple[str, ...] = ()

    @field_validator("also_for")
    @classmethod
    def _also_for_are_hosts(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_registry_host(value) for value in values)

    @field_validator("registry")
    @classmethod
    def _registry_is_host(cls, value: str) -> str:
        return _registry_host(value)


# ---- token sources (issue 13: short-lived registry tokens, minted by webhook/tokens) ----


def _registry_host(value: str) -> str:
    try:
        parse_registry(value)
    except InvalidReference as exc:
        raise ValueError(str(exc)) from None
    return value


def _go_duration(value: str) -> str:
    from webhook.tokens.exec_provider import DurationError, parse_go_duration

    try:
        seconds = parse_go_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None
    if seconds < 0:
        raise ValueError(f"duration {value!r} must not be negative")
    return value


#: A registry host (``host[:port]``), as written into the copy's ``auths``.
RegistryHost = Annotated[str, AfterValidator(_registry_host)]
#: A Go duration string (``"1h"``, ``"6h0m0s"``, ``"0"``), as the kubelet's provider config takes.
GoDuration = Annotated[
    str,
    AfterValidator(_go_duration),
    Field(json_schema_extra={"pattern": "^(0|([0-9]*(\\.[0-9]*)?(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)$"}),
]


class GcpTokenOptions(_Model):
    """Google: Application Default Credentials unless ``credentialsFrom`` names a key or federation config."""

    credentials_from: SecretKeyRef | None = None
    scopes: tuple[str, ...] = ("https://www.googleapis.com/auth/cloud-platform.read-only",)


class EcrTokenOptions(_Model):
    """Amazon ECR: boto3's default credential chain, optionally assuming ``roleArn`` first."""

    region: str | None = None
    role_arn: str | None = None


class AcrTokenOptions(_Model):
    """Azure ACR: workload identity federation with ``tenantId``/``clientId``, else managed identity."""

    tenant_id: str | None = None
    client_id: str | None = None


class ExecTokenOptions(_Model):
    """Any kubelet credential provider plugin (``credentialprovider.kubelet.k8s.io/v1``)."""

    command: tuple[str, ...] = Field(min_length=1)
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    default_cache_duration: GoDuration = "0"
    timeout: GoDuration = "10s"

    def __hash__(self) -> int:  # ``env`` is a dict: hash the content (sources key memo tables)
        return hash(self.model_dump_json())


class TokenSource(_Model):
    """A credential minted at runtime from a cloud identity, refreshed before it expires."""

    provider: Literal["gcp", "ecr", "acr", "exec"]
    #: The ``auths`` key written into the copy (ecr: defaults to the ``proxyEndpoint`` host).
    registry: RegistryHost | None = None
    #: More hosts that get the same credential (a registry's separate auth host).
    also_for: tuple[RegistryHost, ...] = ()
    gcp: GcpTokenOptions | None = None
    ecr: EcrTokenOptions | None = None
    acr: AcrTokenOptions | None = None
    exec: ExecTokenOptions | None = None

    @model_validator(mode="after")
    def _provider_fits(self) -> TokenSource:
        from webhook.tokens.extras import missing_extra

        for other in ("gcp", "ecr", "acr", "exec"):
            if other != self.provider and getattr(self, other) is not None:
                raise ValueError(f"{other!r} options given for provider {self.provider!r}")
        if self.provider == "exec" and self.exec is None:
            raise ValueError("provider 'exec' needs 'exec.command'")
        if self.registry is None and self.provider != "ecr":
            raise ValueError(f"provider {self.provider!r} needs 'registry' (the host the token is for)")
        problem = missing_extra(self.provider)
        if problem is not None:
            raise ValueError(problem)
        return self


# ---- end of token sources ----


class Source(_Model):
    """Where a managed Secret's content comes from: exactly one of ``secret``, ``credentials``, ``token``."""

    model_config = ConfigDict(json_schema_extra=_exactly_one_property)
    secret: SecretRef | None = None
    credentials: Credentials | None = None
    token: TokenSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if sum(value is not None for value in (self.secret, self.credentials, self.token)) != 1:
            raise ValueError("set exactly one of 'secret' or 'credentials' or 'token'")
        return self


class Rule(_Model):
    name: str = Field(min_length=1, max_length=63)
    registries: tuple[str, ...] = Field(min_length=1)
    repositories: tuple[str, ...] = ()
    namespaces: NamespaceScope = Field(default_factory=NamespaceScope)
    secret: SecretName
    source: Source | None = None
    #: What to do when the Secret cannot be provided in time: ``Ignore`` admits the Pod with
    #: a warning (fail open, the default), ``Fail`` denies it.
    failure_policy: Literal["Ignore", "Fail"] = "Ignore"

    @field_validator("registries")
    @classmethod
    def _registries_are_patterns(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            RegistryPattern.parse(value)
        return values

    @field_validator("repositories")
    @classmethod
    def _repositories_are_globs(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            segments = value.split("/")
            if not value or not all(s and _REPO_SEGMENT_GLOB.fullmatch(s) for s in segments):
                raise ValueError(
                    f"repository pattern {value!r} must be lowercase path segments separated by '/', "
                    "with '*' or '?' globs inside a segment"
                )
        return values


class Policy(_Model):
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED_NAMESPACES
    rules: tuple[Rule, ...] = ()
    #: Registry mirrors, k3s-shaped (webhook/policy/mirrors.py): images are rewritten before rules match.
    mirrors: Mirrors = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_are_unique(self) -> Policy:
        seen: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(f"rules[{index}].name {rule.name!r} repeats rules[{seen[rule.name]}].name")
            seen[rule.name] = index
        by_secret: dict[str, Rule] = {}
        for index, rule in enumerate(self.rules):
            other = by_secret.setdefault(rule.secret, rule)
            if other is not rule and other.source != rule.source:
                raise ValueError(
                    f"rules[{index}] ({rule.name}) writes Secret {rule.secret!r} from a different source "
                    f"than rule {other.name!r}: one Secret name, one source"
                )
        return self

    @cached_property
    def mirror_set(self) -> MirrorSet:
        """The compiled mirrors, built once per policy object (one per policy version)."""
        return MirrorSet(self.mirrors, self.exclude_namespaces)


def parse_policy(text: str | bytes) -> Policy:
    """Parse and validate a policy document, raising :class:`PolicyError` with field paths."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"]) from None
    if data is None:
        # An empty file is what a reader sees halfway through a non-atomic write (an editor,
        # `cp`), not a policy anyone meant: accepting it as "no rules" would drop every rule
        # and, with cleanup on, delete every copy. A policy with no rules says so.
        raise PolicyError(["the policy document is empty (write `rules: []` for a policy without rules)"])
    if not isinstance(data, dict):
        raise PolicyError([f"the policy must be a mapping, not {type(data).__name__}"])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError([_format_error(err) for err in exc.errors()]) from None


def _format_error(err: Mapping[str, object]) -> str:
    loc = err.get("loc", ())
    path = ""
    for part in loc if isinstance(loc, tuple) else ():
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = str(err.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        message = "unknown field"
    return f"{path or '(document)'}: {message}"




#: Re-exported: the namespace scope is defined in :mod:`webhook.policy.scope` (mirrors share it).
__all__ = ["LabelSelector", "LabelSelectorRequirement", "NamespaceScope"]
