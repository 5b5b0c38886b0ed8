"""What ``doctor`` read from the cluster (:class:`Snapshot`), the :class:`Finding` it reports, and helpers.

Pure data and small pure helpers shared by :mod:`webhook.ops.webhook_findings` (is the webhook
called?) and :mod:`webhook.ops.findings` (does the Pod have a Secret the kubelet would use?).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from webhook.policy.matching import CompiledPolicy
from webhook.policy.model import LabelSelector
from webhook.secrets.dockerconfig import AuthEntry
from webhook.tokens.base import jwt_expiry

Verdict = Literal["ok", "info", "warn", "fail"]
VERDICTS: tuple[Verdict, ...] = ("ok", "info", "warn", "fail")

#: Container ``waiting`` reasons and Event reasons that mean the image could not be pulled.
PULL_FAILURE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
PULL_EVENT_REASONS = frozenset({"Failed", "BackOff", "ErrImagePull", "ImagePullBackOff", "InspectFailed"})
#: A token that expires within this many seconds is worth a warning.
EXPIRY_WARNING_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: ``check`` is a stable id (for ``-o json`` and tests)."""

    check: str
    verdict: Verdict
    message: str
    fix: str | None = None
    container: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "verdict": self.verdict,
            "container": self.container,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An object ``doctor`` was not allowed (or not able) to read: not the same as absent."""

    reason: str


#: An object as read: the dict, ``None`` for 404, or :class:`Unreadable`.
Read = dict[str, Any] | Unreadable | None


@dataclass(frozen=True, slots=True)
class WebhookProbe:
    """What contacting one webhook of the configuration showed (``None``: not checked)."""

    target: str
    ca_verified: bool | None
    ca_detail: str
    ready: bool | None
    ready_detail: str


@dataclass
class Snapshot:
    """Everything ``doctor`` read for one Pod or workload, as plain data."""

    kind: str  # "Pod", "Deployment", ...
    name: str
    namespace: str
    #: The Pod, or ``{"metadata": template.metadata, "spec": template.spec}`` of a workload.
    pod: dict[str, Any]
    namespace_object: Read
    service_account: Read = None
    #: Secret name -> the Secret in the Pod's namespace.
    secrets: dict[str, Read] = field(default_factory=dict)
    #: (namespace, name) -> a source Secret (or the ``passwordFrom`` Secret).
    sources: dict[tuple[str, str], Read] = field(default_factory=dict)
    events: list[dict[str, Any]] | Unreadable = field(default_factory=list)
    #: The MutatingWebhookConfigurations considered ours; empty when none was found.
    webhook_configs: list[dict[str, Any]] | Unreadable = field(default_factory=list)
    #: What was looked for: a name, or a label selector.
    webhook_wanted: str = "pullsecret-injector"
    #: (configuration name, webhook name) -> probe result.
    probes: dict[tuple[str, str], WebhookProbe] = field(default_factory=dict)
    policy: CompiledPolicy | None = None
    policy_origin: str = ""
    policy_error: str | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def is_pod(self) -> bool:
        return self.kind == "Pod"

    @property
    def labels(self) -> dict[str, str] | None:
        """The namespace's labels, ``None`` when the Namespace could not be read."""
        if not isinstance(self.namespace_object, dict):
            return None
        raw = (self.namespace_object.get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in raw.items()}


# --------------------------------------------------------------------------- helpers


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 ``creationTimestamp`` (``2026-12-01T20:00:00Z``) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _selector(raw: object) -> LabelSelector | None:
    """A ``metav1.LabelSelector`` dict as the policy's model; ``None`` (match everything) when absent."""
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        return LabelSelector.model_validate(raw)
    except ValidationError:
        return None


def selector_fix(selector: LabelSelector, labels: Mapping[str, str], what: str, kubectl: str) -> str:
    """A concrete ``kubectl label`` for the terms of ``selector`` that ``labels`` fail, or advice."""
    wanted: list[str] = []
    removed: list[str] = []
    blocked: list[str] = []
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            wanted.append(f"{key}={value}")
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and (not present or labels[req.key] not in req.values):
            wanted.append(f"{req.key}={req.values[0]}")
        elif req.operator == "Exists" and not present:
            wanted.append(f"{req.key}=true")
        elif req.operator == "DoesNotExist" and present:
            removed.append(f"{req.key}-")
        elif req.operator == "NotIn" and present and labels[req.key] in req.values:
            if req.key == "kubernetes.io/metadata.name":
                blocked.append(f"the selector excludes {what} by name")
            else:
                removed.append(f"{req.key}-")
    if blocked:
        return "; ".join(blocked) + " (on purpose, e.g. the chart's webhook.excludeNamespaces): use another namespace"
    changes = wanted + removed
    if not changes:
        return f"make the labels of {what} match the selector"
    verb = "label" if wanted else "unlabel"
    return f"{verb} {what} {' '.join(changes)}: {kubectl} {' '.join(changes)}"


def pull_secret_names(spec: Mapping[str, Any]) -> list[str]:
    refs = spec.get("imagePullSecrets") or []
    return [str(ref["name"]) for ref in refs if isinstance(ref, dict) and ref.get("name")]


def _auths_keys(auths: Iterable[str]) -> str:
    keys = [repr(k) for k in auths]
    return ", ".join(keys) if keys else "none"


def _jwt_expiry(token: str) -> datetime | None:
    """The ``exp`` claim of a JWT-shaped token (registry tokens often are), without verifying it."""
    exp = jwt_expiry(token)
    return None if exp is None else datetime.fromtimestamp(exp, UTC)


def _entry_expiry(entry: AuthEntry) -> datetime | None:
    for value in (entry.registrytoken, entry.identitytoken, entry.password):
        if value:
            found = _jwt_expiry(value)
            if found is not None:
                return found
    return None


def _entry_has_credentials(entry: AuthEntry) -> bool:
    return bool(entry.auth or entry.password or entry.identitytoken or entry.registrytoken)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


