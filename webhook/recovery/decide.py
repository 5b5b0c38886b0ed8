"""Which Pod is a fail-open Pod worth recreating: pure, no I/O (table-tested in tests/test_recovery.py).

With ``failurePolicy: Ignore`` the API server admits a Pod unmodified when no webhook replica
answered in time. If the policy would have given it an ``imagePullSecrets`` reference, and
its image is private, the kubelet cannot pull: the Pod sits in ``ImagePullBackOff`` for ever,
since a Pod's ``imagePullSecrets`` cannot be changed after creation. Nothing but a new Pod
helps, and only a controller makes new Pods by itself. Hence the decision:

1. the Pod is *fail-open*: not being deleted, not skipped by its label, its namespace not
   excluded, and the policy (as it is now) would add a Secret the Pod does not reference;
2. it is *stuck on it*: a container whose image needs one of those missing Secrets is
   waiting in ``ImagePullBackOff`` or ``ErrImagePull`` (a Pod pulling fine from a registry
   that happens to allow anonymous pulls is left alone);
3. it has been stuck for ``grace_seconds`` as first seen by us (the kubelet may still be
   retrying with a node credential; the grace also lets an operator react first);
4. a controller owns it (``ownerReferences[].controller``): then it is deleted, unless the
   Pods of that controller were already deleted ``max_per_owner`` times in
   ``window_seconds`` (a Pod the webhook cannot fix, for instance because the webhook
   configuration does not select its namespace, must not be deleted in a loop); a bare Pod
   is only reported: deleting it would lose it.

The decision never reads a clock itself. ``now`` and ``stuck_since`` are the caller's
monotonic clock (the grace is this process's own observation); the deletions are wall-clock
seconds against ``wall_now``: they come from the ownership ledger, written by other
replicas and earlier processes, and a monotonic clock starts afresh with each process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from webhook.admission.patch import is_skipped
from webhook.admission.podplan import plan_pod
from webhook.config import RecoverySettings
from webhook.policy.matching import CompiledPolicy

#: The kubelet's waiting reasons for a pull that failed.
PULL_ERRORS: Final = frozenset({"ImagePullBackOff", "ErrImagePull"})

Action = Literal["none", "wait", "delete", "report", "give_up"]


@dataclass(frozen=True, slots=True)
class Owner:
    """The controller of a Pod (``ownerReferences`` entry with ``controller: true``)."""

    kind: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one Pod, and why (the why goes into the Event and the log line)."""

    action: Action
    why: str
    #: Secrets the policy would inject that the Pod lacks.
    missing: tuple[str, ...] = ()
    #: Containers stuck on a pull that needs one of them.
    stuck: tuple[str, ...] = ()
    owner: Owner | None = None

    @property
    def stuck_now(self) -> bool:
        """The Pod is a stuck fail-open Pod (whatever is decided about it): its stuck time keeps running."""
        return self.action != "none"


def controller_of(pod: Mapping[str, Any]) -> Owner | None:
    metadata = pod.get("metadata") or {}
    for ref in metadata.get("ownerReferences") or ():
        if isinstance(ref, dict) and ref.get("controller") is True:
            return Owner(
                kind=str(ref.get("kind") or ""), name=str(ref.get("name") or ""), uid=str(ref.get("uid") or "")
            )
    return None


def _waiting_on_pull(pod: Mapping[str, Any]) -> set[tuple[str, str]]:
    """``(kind, container name)`` of every container waiting on a failed pull."""
    status = pod.get("status") or {}
    found: set[tuple[str, str]] = set()
    for kind, key in (
        ("containers", "containerStatuses"),
        ("initContainers", "initContainerStatuses"),
        ("ephemeralContainers", "ephemeralContainerStatuses"),
    ):
        for item in status.get(key) or ():
            if not isinstance(item, dict):
                continue
            waiting = (item.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in PULL_ERRORS:
                found.add((kind, str(item.get("name") or "")))
    return found


def decide(
    pod: Mapping[str, Any],
    *,
    policy: CompiledPolicy,
    namespace_labels: Mapping[str, str] | None,
    stuck_since: float | None,
    now: float,
    owner_deletions: Sequence[float],
    settings: RecoverySettings,
    wall_now: float | None = None,
) -> Decision:
    """The decision for ``pod`` (see the module docstring).

    ``stuck_since``: when the caller first saw this Pod stuck (None: never, i.e. now);
    ``owner_deletions``: when Pods of the same controller were deleted, on the clock of
    ``wall_now`` (None: the clock of ``now``). One within the window either way counts: a
    replica whose clock is a little ahead wrote it.
    """
    metadata = pod.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "")
    if not namespace or metadata.get("deletionTimestamp") or is_skipped(pod):
        return Decision("none", "being deleted, skipped, or without a namespace")
    if (pod.get("status") or {}).get("phase") not in (None, "Pending"):
        return Decision("none", "not Pending")
    if policy.namespace_excluded(namespace):
        return Decision("none", "namespace excluded by the policy")
    plan = plan_pod(pod=pod, namespace=namespace, policy=policy, namespace_labels=namespace_labels)
    missing = tuple(plan.added)
    if not missing:
        return Decision("none", "references every Secret the policy gives it")
    waiting = _waiting_on_pull(pod)
    stuck = tuple(
        sorted(
            c.name
            for c in plan.containers
            if c.rule is not None and c.rule.secret in missing and (c.kind, c.name) in waiting
        )
    )
    if not stuck:
        return Decision("none", "no container needing a missing Secret is failing to pull", missing=missing)
    since = now if stuck_since is None else stuck_since
    owner = controller_of(pod)
    if now - since < settings.grace_seconds:
        return Decision(
            "wait", f"stuck for {now - since:.0f}s of a {settings.grace_seconds:g}s grace", missing, stuck, owner
        )
    if owner is None:
        return Decision(
            "report",
            "no controller owns it: deleting it would lose it; recreate it to get the pull secret",
            missing,
            stuck,
        )
    budget_now = now if wall_now is None else wall_now
    recent = [t for t in owner_deletions if abs(budget_now - t) < settings.window_seconds]
    if len(recent) >= settings.max_per_owner:
        return Decision(
            "give_up",
            f"{len(recent)} Pods of {owner.kind} {owner.name} already deleted in {settings.window_seconds:g}s and "
            "the new ones lack the Secret again (is their namespace sent to the webhook?): not deleting more",
            missing,
            stuck,
            owner,
        )
    return Decision(
        "delete",
        f"stuck in an image-pull error for {now - since:.0f}s; {owner.kind} {owner.name} will recreate it "
        "through pullsecret-injector",
        missing,
        stuck,
        owner,
    )


__all__ = ["PULL_ERRORS", "Action", "Decision", "Owner", "controller_of", "decide"]
