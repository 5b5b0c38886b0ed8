"""What a user reads on the policy ConfigMap: the status annotations and the Events.

The webhook's answer to an edit must be visible where the edit was made, with kubectl:

    $ kubectl -n pullsecret-system describe configmap pullsecret-injector-policy
    Annotations:  pullsecret-injector.io/status: Rejected
                  pullsecret-injector.io/version: sha256:3f2a9c1d0b7e (resourceVersion 48211)
                  pullsecret-injector.io/serving: sha256:91c04e5a7d22
                  pullsecret-injector.io/checked-at: 2026-12-01T21:14:03Z
                  pullsecret-injector.io/message: missing permission to get, list, watch, ...

Annotations only, never ``data`` or labels: GitOps tools (Argo CD, Flux, Helm) diff and
apply the fields they own, so annotations someone else adds are not drift. Pure: this
module builds and compares; :mod:`webhook.kube.policywatch` writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

PREFIX: Final = "pullsecret-injector.io/"
STATUS: Final = PREFIX + "status"
VERSION: Final = PREFIX + "version"
SERVING: Final = PREFIX + "serving"
CHECKED_AT: Final = PREFIX + "checked-at"
MESSAGE: Final = PREFIX + "message"
KEYS: Final = (STATUS, VERSION, SERVING, CHECKED_AT, MESSAGE)

#: Longest annotation message; the Event carries every error (up to its own limit).
MESSAGE_LIMIT: Final = 1000

State = Literal["Accepted", "Rejected"]


def digest(data: bytes | str) -> str:
    """The content version of a policy document: ``sha256:`` and the first 12 hex digits."""
    raw = data.encode() if isinstance(data, str) else data
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:12]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """The outcome of evaluating one version of the policy ConfigMap."""

    state: State
    #: The content version evaluated, and the ConfigMap resourceVersion it was read at.
    version: str
    resource_version: str
    #: The version being served after this evaluation (the last good one when rejected).
    serving: str
    errors: tuple[str, ...] = ()
    rules: int = 0
    checked_at: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        if self.errors:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more: see the Events)" if len(self.errors) > 1 else ""
            return (first + more)[:MESSAGE_LIMIT]
        text = f"{self.rules} rule(s), all permitted"
        if self.warnings:
            text += "; warning: " + self.warnings[0]
        return text[:MESSAGE_LIMIT]

    def annotations(self) -> dict[str, str]:
        version = self.version + (f" (resourceVersion {self.resource_version})" if self.resource_version else "")
        return {
            STATUS: self.state,
            VERSION: version,
            SERVING: self.serving,
            CHECKED_AT: self.checked_at or now(),
            MESSAGE: self.message,
        }

    def event(self) -> tuple[str, str, str]:
        """``(type, reason, message)`` of the Event that reports this outcome on the ConfigMap."""
        if self.state == "Accepted":
            text = f"policy {self.version} accepted and serving: {self.rules} rule(s)"
            if self.warnings:
                text += "; " + "; ".join(self.warnings)
            return "Normal", "PolicyAccepted", text
        return (
            "Warning",
            "PolicyRejected",
            f"policy {self.version} rejected, still serving {self.serving or 'nothing'}: " + "; ".join(self.errors),
        )


def written(annotations: Mapping[str, str] | None) -> tuple[str, str] | None:
    """``(state, version)`` the live annotations report (``None``: none written yet)."""
    annotations = annotations or {}
    state, version = annotations.get(STATUS), annotations.get(VERSION)
    if not state or not version:
        return None
    return state, version.split(" ", 1)[0]


def needs_write(annotations: Mapping[str, str] | None, status: PolicyStatus) -> bool:
    """Whether the live annotations differ from ``status`` in anything but the time."""
    live = dict(annotations or {})
    want = status.annotations()
    return any(live.get(key) != want[key] for key in KEYS if key != CHECKED_AT)


def annotation_patch(status: PolicyStatus, resource_version: str) -> dict[str, object]:
    """A merge patch of the status annotations, guarded by ``resource_version`` (409 when it moved)."""
    metadata: dict[str, object] = {"annotations": status.annotations()}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {"metadata": metadata}


def rejected(
    version: str, resource_version: str, serving: str, errors: Sequence[str], *, checked_at: str = ""
) -> PolicyStatus:
    return PolicyStatus(
        "Rejected", version, resource_version, serving, errors=tuple(errors) or ("rejected",), checked_at=checked_at
    )


def accepted(
    version: str, resource_version: str, rules: int, *, warnings: Sequence[str] = (), checked_at: str = ""
) -> PolicyStatus:
    return PolicyStatus(
        "Accepted", version, resource_version, version, rules=rules, warnings=tuple(warnings), checked_at=checked_at
    )


__all__ = [
    "KEYS",
    "PolicyStatus",
    "accepted",
    "annotation_patch",
    "digest",
    "needs_write",
    "rejected",
    "written",
]
