"""Leader election on a ``coordination.k8s.io/v1`` Lease: one replica reconciles in the background.

The official client ships ``kubernetes.leaderelection``, but its model does not fit here:
``run()`` blocks a thread forever in ``time.sleep`` loops with no way to stop it, the
leading callback runs in a thread that cannot be cancelled when the lease is lost (so a
deposed leader keeps reconciling next to the new one), ``Config`` calls ``sys.exit`` on
bad values, the lock uses the global default client with no request timeouts (a hung API
server stalls renewal past the deadline) and ``replace``, not ``patch``. This is the same
algorithm as client-go's (observed-record time on the local monotonic clock, renew
deadline shorter than the lease), in asyncio, with optimistic concurrency through
``metadata.resourceVersion`` on the patch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from webhook.backoff import jittered
from webhook.config import KubeSettings
from webhook.kube.client import KubeApi
from webhook.kube.errors import ApiConflict, ApiError
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats

log = logging.getLogger(__name__)


class LeaseElector:
    """Leader election on a Lease, client-go's algorithm in asyncio (see the module docstring)."""

    def __init__(
        self,
        *,
        api: KubeApi,
        runner: Runner,
        settings: KubeSettings,
        stats: Stats,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._api = api
        self._runner = runner
        self._settings = settings
        self._stats = stats
        self._on_change = on_change
        self.is_leader = False
        self._held = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0

    def _set_leader(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        self._stats.leader = leader
        settings = self._settings
        log.info(
            "%s leadership of Lease %s/%s", "took" if leader else "gave up", settings.namespace, settings.lease_name
        )
        if self._on_change is not None:
            self._on_change(leader)

    async def run(self) -> None:
        """Acquire, renew, step down after ``renew_deadline`` without renewal; until cancelled."""
        settings = self._settings
        try:
            while True:
                # The renewal counts from before the call: the Lease holds from then on.
                attempt = time.monotonic()
                try:
                    ok = await self.try_acquire_or_renew()
                except ApiError as exc:
                    self._stats.error(exc.kind)
                    log.info("leader election: %s", exc)
                    ok = False
                except Exception:
                    log.exception("leader election failed unexpectedly")
                    self._stats.error("internal")
                    ok = False
                now = time.monotonic()
                if ok:
                    self._renewed_at = attempt
                    self._set_leader(True)
                elif self.is_leader and now - self._renewed_at >= settings.renew_deadline:
                    self._set_leader(False)
                # The leader renews on the dot; the others poll out of step with each other.
                await asyncio.sleep(settings.retry_period if self.is_leader else jittered(settings.retry_period, 0.1))
        finally:
            # Step down at once; giving the Lease back (an API call) is ``release``'s job,
            # awaited by the owner once this task is done: a cancelled task cannot be
            # relied on to finish awaiting anything.
            self._held = self._held or self.is_leader
            self._set_leader(False)

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    async def try_acquire_or_renew(self) -> bool:
        settings, api = self._settings, self._api
        timeout = max(0.5, min(settings.request_timeout, settings.renew_deadline / 3))
        namespace, name, me = settings.namespace, settings.lease_name, settings.identity
        lease = await self._runner(
            lambda t: api.get_lease(namespace, name, timeout=t), timeout=timeout, action="get the Lease"
        )
        now = self._now()
        duration = int(settings.lease_duration)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "holderIdentity": me,
                    "leaseDurationSeconds": duration,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            try:
                await self._runner(
                    lambda t: api.create_lease(namespace, body, timeout=t), timeout=timeout, action="create the Lease"
                )
            except ApiConflict:  # another replica created it first
                return False
            self._observed, self._observed_at = None, time.monotonic()
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("acquireTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        held_for = float(spec.get("leaseDurationSeconds") or duration)
        if holder and holder != me and time.monotonic() < self._observed_at + held_for:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        patch: dict[str, Any] = {
            "spec": {
                "holderIdentity": me,
                "leaseDurationSeconds": duration,
                "renewTime": now,
                "acquireTime": spec.get("acquireTime") if holder == me else now,
                "leaseTransitions": transitions if holder == me else transitions + 1,
            }
        }
        version = (lease.get("metadata") or {}).get("resourceVersion")
        if version:
            patch["metadata"] = {"resourceVersion": version}
        try:
            await self._runner(
                lambda t: api.patch_lease(namespace, name, patch, timeout=t), timeout=timeout, action="renew the Lease"
            )
        except ApiConflict:  # the Lease changed since we read it: someone else renewed or took it
            return False
        return True

    async def release(self) -> None:
        """Give the Lease up on shutdown so another replica takes over at once, not after it expires.

        Only if we held it when ``run`` ended; best effort, bounded (the API may be gone).
        """
        if not self._held:
            return
        self._held = False
        settings, api = self._settings, self._api
        patch = {"spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": self._now()}}
        try:
            await self._runner(
                lambda t: api.patch_lease(settings.namespace, settings.lease_name, patch, timeout=t),
                timeout=1.0,
                action="release the Lease",
            )
        except ApiError as exc:
            log.info("Lease not released (%s); it expires on its own", exc.kind)
        else:
            log.info("released Lease %s/%s", settings.namespace, settings.lease_name)


