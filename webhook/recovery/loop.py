"""The recovery loop: on the leader, every ``interval``, look at the Pending Pods and act on the decisions.

The decision itself is :func:`webhook.recovery.decide.decide` (pure); this module keeps the
little state it needs between two looks (when each Pod was first seen stuck, when Pods of
each controller were deleted, what was already reported) and does the I/O: the paged list,
the delete, a Warning Event on the Pod saying why, a log line. Only the leader acts, so two
replicas never delete the same Pod twice; a new leader starts its grace periods afresh (it
has not seen the Pods stuck yet), which only delays.

The per-controller budget is the one piece whose loss does harm: kept in memory only, a
webhook in a crash loop, or whose leadership flaps, would start each time with a full budget
and delete the Pods of a controller it cannot fix again and again. So each deletion is
written to the ownership ledger (:mod:`webhook.kube.ledger`: the controller's uid and the
wall-clock second, nothing else) *before* the Pod is deleted, and taken back when the delete
certainly did not happen (the Pod was gone, the API refused); after a timeout it may have, and
it stays counted. A Pod is not deleted while that cannot be written, nor while the ledger has
not been read yet. The budget counts the ledger's deletions (other replicas', earlier
processes') together with this process's own. Without a ledger (tests, no cluster surface)
the budget is in memory, as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from webhook.config import KubeSettings, RecoverySettings
from webhook.kube.client import KubeApi
from webhook.kube.errors import ApiError, ApiForbidden, ApiInvalid, ApiTooManyRequests, ApiUnauthorized
from webhook.kube.events import event_body
from webhook.kube.ledger import LedgerStore
from webhook.kube.objects import KubeObject, namespace_labels
from webhook.kube.pods import PodApi
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats
from webhook.recovery.decide import Decision, decide
from webhook.secrets import ledger as lg
from webhook.secrets.grants import PolicyFn

log = logging.getLogger(__name__)

#: Event reasons (``kubectl get events --field-selector reason=...``).
DELETED = "FailOpenPodDeleted"
REPORTED = "FailOpenPodNotRecovered"
GAVE_UP = "FailOpenRecoveryStopped"

#: Answers that say the delete was not done; any other failure (a timeout, a connection cut,
#: a 500) may come after it was, so that deletion stays in the budget.
REFUSED = (ApiForbidden, ApiUnauthorized, ApiInvalid, ApiTooManyRequests)


class FailOpenRecovery:
    """See the module docstring; ``run`` until cancelled."""

    def __init__(
        self,
        *,
        pods: PodApi,
        events_api: KubeApi,
        runner: Runner,
        policy: PolicyFn,
        namespace: Callable[[str], KubeObject | None],
        is_leader: Callable[[], bool],
        settings: RecoverySettings,
        kube: KubeSettings,
        stats: Stats,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        ledger: LedgerStore | None = None,
    ) -> None:
        self._pods = pods
        self._events_api = events_api
        self._runner = runner
        self._policy = policy
        self._namespace = namespace
        self._is_leader = is_leader
        self._settings = settings
        self._kube = kube
        self._stats = stats
        #: The grace is timed on ``clock`` (monotonic: only this process sees it); the budget on
        #: ``wall_clock``, the one clock replicas and restarts share.
        self._clock = clock
        self._wall_clock = wall_clock
        self._ledger = ledger
        #: Pod uid -> when first seen stuck.
        self.stuck_since: dict[str, float] = {}
        #: controller uid -> when we deleted its Pods (unix seconds, as written to the ledger).
        self.deletions: dict[str, list[int]] = {}
        #: Pod or controller uids already reported (bare Pods, budgets spent): one Event each.
        self._reported: set[str] = set()
        self.deleted: list[tuple[str, str]] = []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval)
            if not self._is_leader():
                self.stuck_since.clear()
                continue
            try:
                await self.look()
            except ApiError as exc:
                self._stats.error(exc.kind)
                log.info("fail-open recovery: %s", exc)
            except Exception:
                log.exception("fail-open recovery pass failed")
                self._stats.error("internal")

    async def _list(self) -> list[KubeObject]:
        pods: list[KubeObject] = []
        token: str | None = None
        page_size = self._kube.list_page_size or None
        while True:
            page = await self._runner(
                lambda t: self._pods.list_pending_pods(timeout=t, limit=page_size, continue_=token),  # noqa: B023
                timeout=self._kube.request_timeout,
                action="list Pending Pods",
            )
            pods.extend(item for item in page.get("items") or () if isinstance(item, dict))
            token = str((page.get("metadata") or {}).get("continue") or "") or None
            if token is None:
                return pods

    async def look(self) -> None:
        """One look at every Pending Pod."""
        pods = await self._list()
        policy = self._policy()
        now, wall = self._clock(), self._wall_clock()
        seen: set[str] = set()
        for pod in pods:
            metadata = pod.get("metadata") or {}
            uid = str(metadata.get("uid") or "")
            namespace = str(metadata.get("namespace") or "")
            if namespace == self._kube.namespace:
                # The chart never sends its own namespace to the webhook: a new Pod there would
                # be admitted just the same, so deleting one could never help.
                continue
            ns_obj = self._namespace(namespace)
            labels = namespace_labels(ns_obj) if ns_obj is not None else None
            owner_uid = next(
                (str(r.get("uid")) for r in metadata.get("ownerReferences") or () if r.get("controller") is True), ""
            )
            decision = decide(
                pod,
                policy=policy,
                namespace_labels=labels,
                stuck_since=self.stuck_since.get(uid),
                now=now,
                owner_deletions=self.owner_deletions(owner_uid),
                wall_now=wall,
                settings=self._settings,
            )
            if decision.stuck_now:
                seen.add(uid)
                self.stuck_since.setdefault(uid, now)
            await self._act(pod, decision, wall)
        # Forget Pods that are gone or no longer stuck, and deletions out of the window.
        self.stuck_since = {uid: t for uid, t in self.stuck_since.items() if uid in seen}
        window = self._settings.window_seconds
        self.deletions = {
            k: kept for k, v in self.deletions.items() if (kept := [t for t in v if abs(wall - t) < window])
        }
        if self._ledger is not None and any(abs(wall - t) >= window for _, t in self._ledger.current().deletions):
            self._ledger.record(lg.prune_deletions(wall, window))

    def owner_deletions(self, owner_uid: str) -> list[int]:
        """When Pods of this controller were deleted: the ledger's and our own, each deletion once.

        Our own are in the ledger too (written before the delete); a multiset union (the larger
        count of each second) counts them once, and still counts them if the ledger lost them
        (its ConfigMap deleted, say).
        """
        counted = Counter(self.deletions.get(owner_uid, ()))
        if self._ledger is not None:
            counted |= Counter(self._ledger.current().deletions_of(owner_uid))
        return sorted(counted.elements())

    async def _spend(self, change: lg.Change, what: str) -> bool:
        """Write one deletion of the budget to the ledger before the delete; False: do not delete now."""
        ledger = self._ledger
        if ledger is None:
            return True
        if not ledger.known:
            log.info("fail-open recovery: ownership ledger not read yet: %s not deleted this time", what)
            return False
        ledger.record(change)
        try:
            written = await ledger.flush()
        except BaseException:
            self._refund(change)
            raise
        if not written:
            self._refund(change)
            log.warning("fail-open recovery: the deletion budget cannot be written to the ledger: %s not deleted", what)
        return written

    def _refund(self, change: lg.Change) -> None:
        if self._ledger is not None:
            self._ledger.record(lg.undo_deleted(change.name, change.at))

    async def _act(self, pod: KubeObject, decision: Decision, wall: float) -> None:
        metadata = pod.get("metadata") or {}
        namespace, name, uid = str(metadata["namespace"]), str(metadata.get("name")), str(metadata.get("uid") or "")
        missing = ", ".join(decision.missing)
        if decision.action == "delete" and decision.owner is not None:
            settings = self._settings
            spent = lg.pod_deleted(
                decision.owner.uid, wall, window=settings.window_seconds, keep=settings.max_per_owner
            )
            if not await self._spend(spent, f"Pod {namespace}/{name}"):
                return
            try:
                deleted = await self._runner(
                    lambda t: self._pods.delete_pod(namespace, name, uid=uid, timeout=t),
                    timeout=self._kube.request_timeout,
                    action=f"delete Pod {namespace}/{name}",
                )
            except REFUSED:
                self._refund(spent)
                raise
            if not deleted:
                self._refund(spent)
                return
            self.deletions.setdefault(decision.owner.uid, []).append(spent.at)
            self.stuck_since.pop(uid, None)
            self.deleted.append((namespace, name))
            message = (
                f"admitted without imagePullSecrets {missing} (pullsecret-injector was not reached) and "
                f"{decision.why}: deleted"
            )
            log.warning("fail-open recovery: Pod %s/%s %s", namespace, name, message)
            await self._event(pod, DELETED, message)
        elif decision.action == "report" and uid not in self._reported:
            self._reported.add(uid)
            message = (
                f"admitted without imagePullSecrets {missing} (pullsecret-injector was not reached); {decision.why}"
            )
            log.warning("fail-open recovery: Pod %s/%s %s", namespace, name, message)
            await self._event(pod, REPORTED, message)
        elif decision.action == "give_up" and decision.owner is not None and decision.owner.uid not in self._reported:
            self._reported.add(decision.owner.uid)
            message = f"admitted without imagePullSecrets {missing}; {decision.why}"
            log.warning("fail-open recovery: Pod %s/%s %s", namespace, name, message)
            await self._event(pod, GAVE_UP, message)

    async def _event(self, pod: KubeObject, reason: str, message: str) -> None:
        metadata = pod.get("metadata") or {}
        namespace = str(metadata["namespace"])
        body = event_body(
            namespace=namespace,
            involved={
                "apiVersion": "v1",
                "kind": "Pod",
                "name": metadata.get("name"),
                "namespace": namespace,
                "uid": metadata.get("uid"),
            },
            reason=reason,
            message=message,
            instance=self._kube.identity,
        )
        try:
            await self._runner(
                lambda t: self._events_api.create_event(namespace, body, timeout=t),
                timeout=self._kube.request_timeout,
                action=f"create Event in {namespace}",
            )
        except ApiError as exc:
            self._stats.event("error")
            log.info("event in %s not recorded (%s)", namespace, exc.kind)
        else:
            self._stats.event("ok")


__all__ = ["DELETED", "GAVE_UP", "REPORTED", "FailOpenRecovery"]
