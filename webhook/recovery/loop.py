"""The recovery loop: on the leader, every ``interval``, look at the Pending Pods and act on the decisions.

The decision itself is :func:`webhook.recovery.decide.decide` (pure); this module keeps the
little state it needs between two looks (when each Pod was first seen stuck, when Pods of
each controller were deleted, what was already reported) and does the I/O: the paged list,
the delete, a Warning Event on the Pod saying why, a log line. Only the leader acts, so two
replicas never delete the same Pod twice nor double the per-controller budget; a new leader
starts its grace periods afresh (it has not seen the Pods stuck yet), which only delays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from webhook.config import KubeSettings, RecoverySettings
from webhook.kube.client import KubeApi
from webhook.kube.errors import ApiError
from webhook.kube.events import event_body
from webhook.kube.objects import KubeObject, namespace_labels
from webhook.kube.pods import PodApi
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats
from webhook.recovery.decide import Decision, decide
from webhook.secrets.grants import PolicyFn

log = logging.getLogger(__name__)

#: Event reasons (``kubectl get events --field-selector reason=...``).
DELETED = "FailOpenPodDeleted"
REPORTED = "FailOpenPodNotRecovered"
GAVE_UP = "FailOpenRecoveryStopped"


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
        self._clock = clock
        #: Pod uid -> when first seen stuck.
        self.stuck_since: dict[str, float] = {}
        #: controller uid -> when we deleted its Pods.
        self.deletions: dict[str, list[float]] = {}
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
        now = self._clock()
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
                owner_deletions=self.deletions.get(owner_uid, ()),
                settings=self._settings,
            )
            if decision.stuck_now:
                seen.add(uid)
                self.stuck_since.setdefault(uid, now)
            await self._act(pod, decision, now)
        # Forget Pods that are gone or no longer stuck, and deletions out of the window.
        self.stuck_since = {uid: t for uid, t in self.stuck_since.items() if uid in seen}
        window = self._settings.window_seconds
        self.deletions = {k: kept for k, v in self.deletions.items() if (kept := [t for t in v if now - t < window])}

    async def _act(self, pod: KubeObject, decision: Decision, now: float) -> None:
        metadata = pod.get("metadata") or {}
        namespace, name, uid = str(metadata["namespace"]), str(metadata.get("name")), str(metadata.get("uid") or "")
        missing = ", ".join(decision.missing)
        if decision.action == "delete" and decision.owner is not None:
            deleted = await self._runner(
                lambda t: self._pods.delete_pod(namespace, name, uid=uid, timeout=t),
                timeout=self._kube.request_timeout,
                action=f"delete Pod {namespace}/{name}",
            )
            if not deleted:
                return
            self.deletions.setdefault(decision.owner.uid, []).append(now)
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
