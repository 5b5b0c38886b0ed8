"""Permission preflight: may the webhook do what a policy asks, before it serves it?

A policy that adds a rule the webhook's RBAC does not cover used to be accepted silently:
Pods got the reference, the Secret was never created (403 on its watch and its create),
and on a node that meant ImagePullBackOff. Now each new policy is checked against the
authorizer first (SelfSubjectAccessReview: the webhook's own credentials, no special
permission needed), and a policy it cannot serve is rejected whole, naming each missing
permission and the chart value that grants it.

:func:`required` (pure) says what a policy needs; :func:`review` asks the authorizer
(through a callable, so ``validate --cluster`` can ask about a ServiceAccount with a
SubjectAccessReview from a laptop); :class:`AccessReport` turns the answers into the
lines a user reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from webhook.kube.errors import ApiError
from webhook.policy.matching import CompiledPolicy
from webhook.secrets.grants import source_target

log = logging.getLogger(__name__)

#: What a copy name needs cluster-wide (by name): the watch, the fallback read, refresh, cleanup.
COPY_VERBS: Final = ("get", "list", "watch", "patch", "delete")
#: What a source needs in its own namespace (by name): the watch and the fallback read.
SOURCE_VERBS: Final = ("get", "list", "watch")
#: What keeps a retired name's copies deletable until cleanup is done.
CLEANUP_VERBS: Final = ("list", "watch", "delete")

COPY_VALUE: Final = "rbac.extraSecretNames"
SOURCE_VALUE: Final = "rbac.extraSourceSecrets"
CLUSTER_WIDE_VALUE: Final = "rbac.secretAccess: clusterWide"


@dataclass(frozen=True, slots=True, order=True)
class Permission:
    """One authorizer question: ``verb`` on Secrets, in ``namespace`` ("" cluster-wide), named ``name`` ("" any)."""

    verb: str
    namespace: str
    name: str
    resource: str = "secrets"
    group: str = ""

    def attributes(self) -> dict[str, str]:
        """The ``resourceAttributes`` of a (Self)SubjectAccessReview."""
        attrs = {"verb": self.verb, "group": self.group, "resource": self.resource}
        if self.namespace:
            attrs["namespace"] = self.namespace
        if self.name:
            attrs["name"] = self.name
        return attrs


@dataclass(frozen=True, slots=True, order=True)
class Need:
    """Why a group of permissions is needed and which chart value grants them."""

    kind: str  # "copy", "source", "create", "cleanup"
    namespace: str
    name: str
    rules: tuple[str, ...] = ()

    def permissions(self) -> tuple[Permission, ...]:
        if self.kind == "copy":
            return tuple(Permission(verb, "", self.name) for verb in COPY_VERBS)
        if self.kind == "cleanup":
            return tuple(Permission(verb, "", self.name) for verb in CLEANUP_VERBS)
        if self.kind == "source":
            return tuple(Permission(verb, self.namespace, self.name) for verb in SOURCE_VERBS)
        return (Permission("create", "", ""),)

    def describe(self, verbs: Iterable[str]) -> str:
        """One line naming the missing permission and the value that grants it."""
        listed = ", ".join(verbs)
        rules = f" (rule {', '.join(self.rules)})" if self.rules else ""
        if self.kind == "copy":
            return (
                f"missing permission to {listed} Secrets named {self.name!r} cluster-wide{rules}: "
                f"add {self.name} to the chart value {COPY_VALUE} (or set {CLUSTER_WIDE_VALUE})"
            )
        if self.kind == "cleanup":
            return (
                f"copies of {self.name!r} await cleanup but the webhook may not {listed} them: "
                f"keep {self.name} in {COPY_VALUE} until they are gone"
            )
        if self.kind == "source":
            return (
                f"missing permission to {listed} the source Secret {self.namespace}/{self.name}{rules}: "
                f"add {{namespace: {self.namespace}, name: {self.name}}} to the chart value {SOURCE_VALUE} "
                f"(or set {CLUSTER_WIDE_VALUE})"
            )
        return f"missing permission to create Secrets{rules}: the chart grants it with rbac.create and any copy name"


def required(policy: CompiledPolicy) -> list[Need]:
    """Every permission group ``policy`` needs, sorted: copies, their sources, and create."""
    copies: dict[str, list[str]] = {}
    sources: dict[tuple[str, str], list[str]] = {}
    for rule in policy.policy.rules:
        if rule.source is None:
            continue  # only referenced: the webhook never touches that Secret
        copies.setdefault(rule.secret, []).append(rule.name)
        sources.setdefault(source_target(rule.source), []).append(rule.name)
    needs = [Need("copy", "", name, tuple(rules)) for name, rules in copies.items()]
    needs += [Need("source", ns, name, tuple(rules)) for (ns, name), rules in sources.items()]
    if copies:
        needs.append(Need("create", "", "", tuple(sorted({r for rs in copies.values() for r in rs}))))
    return sorted(needs)


def cleanup_needs(names: Iterable[str]) -> list[Need]:
    """What deleting the copies of ``names`` (no rule allows them any more) needs."""
    return [Need("cleanup", "", name) for name in sorted(set(names))]


#: ``review(attributes) -> (allowed, reason)``; raises ``ApiError`` when the review itself fails.
Reviewer = Callable[[dict[str, str]], tuple[bool, str]]


class CachedReviewer:
    """A :data:`Reviewer` that remembers *allowed* answers for ``ttl`` seconds.

    An edit that adds one rule to a policy of hundreds then asks about the new names only,
    so the edit is served as fast as a small policy's. Denials are never remembered: a
    grant arriving with ``helm upgrade`` is seen at the next re-check. A revoked grant is
    noticed within ``ttl``. Called from the review threads, hence the lock.
    """

    def __init__(self, reviewer: Reviewer, *, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._reviewer = reviewer
        self._ttl = ttl
        self._clock = clock
        self._allowed: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()
        self.asked = 0

    def __call__(self, attributes: dict[str, str]) -> tuple[bool, str]:
        key = tuple(sorted(attributes.items()))
        now = self._clock()
        with self._lock:
            until = self._allowed.get(key)
        if until is not None and now < until:
            return True, "remembered"
        self.asked += 1
        allowed, reason = self._reviewer(attributes)
        with self._lock:
            if allowed:
                if len(self._allowed) > 65536:
                    self._allowed.clear()
                self._allowed[key] = now + self._ttl
            else:
                self._allowed.pop(key, None)
        return allowed, reason


class AccessUnknown(Exception):
    """The authorizer could not be asked (API unreachable): neither accept nor reject yet."""


@dataclass(frozen=True)
class AccessReport:
    """The outcome of a preflight: the needs with the verbs the authorizer denied."""

    denied: dict[Need, tuple[str, ...]] = field(default_factory=dict)
    #: Set when the review API itself is forbidden: nothing could be checked.
    unverified: str = ""

    @property
    def ok(self) -> bool:
        """Nothing the policy itself needs is denied (a cleanup shortfall only warns)."""
        return not any(need.kind != "cleanup" for need in self.denied)

    def problems(self) -> list[str]:
        """Why the policy is rejected: one line per need, naming the verbs and the chart value."""
        return [need.describe(verbs) for need, verbs in sorted(self.denied.items()) if need.kind != "cleanup"]

    def warnings(self) -> list[str]:
        """Cleanup the webhook cannot do (a removed rule's copies it may no longer delete)."""
        return [need.describe(verbs) for need, verbs in sorted(self.denied.items()) if need.kind == "cleanup"]


def review(needs: Iterable[Need], reviewer: Reviewer, *, workers: int = 8) -> AccessReport:
    """Ask the authorizer about every permission of ``needs``, a few at a time.

    Raises :class:`AccessUnknown` when a review fails transiently (the caller retries);
    a review the API forbids outright (a cluster that revoked ``system:basic-user``)
    yields an unverified, passing report: a webhook that cannot check must not stop
    accepting policies for good.
    """
    needs = list(needs)
    questions = sorted({perm for need in needs for perm in need.permissions()})
    if not questions:
        return AccessReport()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(questions))), thread_name_prefix="access") as pool:
        futures = {perm: pool.submit(reviewer, perm.attributes()) for perm in questions}
        answers: dict[Permission, bool] = {}
        for perm, future in futures.items():
            try:
                answers[perm] = future.result()[0]
            except ApiError as exc:
                if exc.kind in ("forbidden", "not_found"):
                    log.warning("permission preflight skipped: %s", exc)
                    return AccessReport(unverified=str(exc))
                raise AccessUnknown(str(exc)) from None
    denied: dict[Need, tuple[str, ...]] = {}
    for need in needs:
        verbs = tuple(perm.verb for perm in need.permissions() if not answers.get(perm, False))
        if verbs:
            denied[need] = verbs
    return AccessReport(denied=denied)


def check_policy(policy: CompiledPolicy, reviewer: Reviewer, *, retired: Iterable[str] = ()) -> AccessReport:
    """The preflight of ``policy`` (its needs) plus the cleanup of ``retired`` copy names."""
    return review([*required(policy), *cleanup_needs(retired)], reviewer)


__all__ = [
    "AccessReport",
    "AccessUnknown",
    "CachedReviewer",
    "Need",
    "Permission",
    "Reviewer",
    "check_policy",
    "cleanup_needs",
    "required",
    "review",
]
