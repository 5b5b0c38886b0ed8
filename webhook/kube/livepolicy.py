"""The policy ConfigMap as the live control surface: watched, permission-checked, reported on.

A platform team edits one ConfigMap (``kubectl apply``, Argo CD, Flux) and the cluster
follows. Each new version of its ``policy.yaml`` is

1. seen through a watch on the API within milliseconds (:class:`ConfigMapWatch`), not
   through the kubelet's mounted file a minute or two later;
2. validated, then checked against the authorizer (:mod:`webhook.kube.access`): a policy
   whose rules the webhook's RBAC does not cover is rejected whole, and the last good
   one keeps serving;
3. reported where the edit was made: status annotations on the ConfigMap and an Event
   on it (:mod:`webhook.policy.status`), written by the leader only, so N replicas write
   once; every replica evaluates the same document against the same authorizer and so
   serves the same version.

The last accepted policy is kept in the ownership ledger, so a replica that starts while
the ConfigMap holds a rejected version serves the last good one instead of nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from webhook.config import ControlSettings, KubeSettings
from webhook.kube.access import AccessUnknown, CachedReviewer, Reviewer, check_policy
from webhook.kube.control import ControlApi
from webhook.kube.errors import ApiError
from webhook.kube.events import event_body
from webhook.kube.ledger import LedgerStore
from webhook.kube.objects import KubeObject
from webhook.kube.policywatch import ConfigMapWatch
from webhook.kube.runner import Runner
from webhook.observability.logs import redact
from webhook.observability.stats import Stats
from webhook.policy import status as st
from webhook.policy.holder import PolicyHolder
from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.policy.model import PolicyError
from webhook.secrets import ledger as lg
from webhook.waits import wait_for

log = logging.getLogger(__name__)

StatusListener = Callable[[st.PolicyStatus], None]


class StartupError(Exception):
    """No policy can be served at start-up: the ConfigMap is unusable and no last good one is known.

    ``unreadable``: the ConfigMap could not be read at all (forbidden, absent): a caller with
    a mounted policy file (an older chart's RBAC) may fall back to it.
    """

    def __init__(self, message: str, *, unreadable: bool = False) -> None:
        super().__init__(message)
        self.unreadable = unreadable


def copy_names(policy: CompiledPolicy) -> set[str]:
    return {rule.secret for rule in policy.policy.rules if rule.source is not None}


class LivePolicy:
    """Feeds a :class:`PolicyHolder` from the policy ConfigMap; the leader reports on it."""

    def __init__(
        self,
        *,
        api: ControlApi,
        configmap: str,
        settings: ControlSettings,
        kube: KubeSettings,
        stats: Stats,
        ledger: LedgerStore | None = None,
        reviewer: Reviewer | None = None,
    ) -> None:
        assert configmap, "LivePolicy needs a ConfigMap name"
        self._api = api
        #: The policy ConfigMap, in ``kube.namespace``.
        self.configmap = configmap
        self.namespace = kube.namespace
        self.settings = settings
        self._kube = kube
        self._ledger = ledger
        self._reviewer: Reviewer = reviewer or CachedReviewer(
            lambda attrs: api.review_access(attrs, user=None, groups=[], timeout=kube.request_timeout)
        )
        self._runner = Runner(4)
        self.holder: PolicyHolder | None = None
        self.watch = ConfigMapWatch(
            api=api,
            namespace=kube.namespace,
            name=configmap,
            settings=kube,
            stats=stats,
            on_change=self._changed_from_thread,
        )
        self.status: st.PolicyStatus | None = None
        self.listeners: list[StatusListener] = []
        #: Set by the wiring: whether this replica writes the status (the elected leader).
        self.is_leader: Callable[[], bool] = lambda: False
        #: Set by the wiring: copy names whose copies still await cleanup (beyond the ledger's).
        self.retiring: Callable[[], set[str]] = set
        self._serving_text = ""
        self._evaluated = ""
        self._recheck_at: float | None = None
        self._changed_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._reported_missing = False
        self._grace: tuple[str, float] | None = None

    # deciding (blocking: parse, then the authorizer) -------------------------------------

    def _retired_for(self, policy: CompiledPolicy) -> set[str]:
        ledger_names = set(self._ledger.current().names) if self._ledger is not None else set()
        return (ledger_names | self.retiring()) - copy_names(policy)

    def decide(self, obj: KubeObject) -> tuple[CompiledPolicy | None, st.PolicyStatus, str]:
        """``(policy to serve or None, status, text)`` of one ConfigMap version; raises ``AccessUnknown``."""
        data = obj.get("data") or {}
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        serving = self.holder.version if self.holder is not None else ""
        text = data.get(self.settings.policy_key)
        if not isinstance(text, str):
            where = f"{self.namespace}/{self.configmap}"
            missing = f"ConfigMap {where} has no key {self.settings.policy_key}"
            return None, st.rejected(st.digest(""), rv, serving, [missing]), ""
        version = st.digest(text)
        try:
            policy = load_policy(text)
        except PolicyError as exc:
            # Redacted: a YAML error quotes the offending line, which could hold a pasted credential.
            return None, st.rejected(version, rv, serving, [redact(error) for error in exc.errors]), text
        report = check_policy(policy, self._reviewer, retired=self._retired_for(policy))
        if not report.ok:
            return None, st.rejected(version, rv, serving, report.problems()), text
        if report.unverified:
            log.warning("policy %s: permissions not verified (%s)", version, report.unverified)
        return policy, st.accepted(version, rv, len(policy.policy.rules), warnings=report.warnings()), text

    def start_blocking(self) -> PolicyHolder:
        """The first policy, before anything is served: the ConfigMap's if usable, else the last good one.

        Blocking on purpose (the loop is not running yet), retrying an unreachable API
        server for ``startup_timeout``. Raises :class:`StartupError` when there is nothing
        to serve.
        """
        settings = self.settings
        deadline = time.monotonic() + settings.startup_timeout
        while True:
            try:
                obj = self._api.get_configmap(self.namespace, self.configmap, timeout=self._kube.request_timeout)
                last = self._ledger.load() if self._ledger is not None else lg.Ledger()
                decided = self.decide(obj) if obj is not None else None
                break
            except (ApiError, AccessUnknown) as exc:
                transient = isinstance(exc, AccessUnknown) or exc.transient
                if not transient or time.monotonic() > deadline:
                    raise StartupError(f"cannot read the policy ConfigMap: {exc}", unreadable=True) from None
                log.warning("policy not read yet, retrying: %s", exc)
                time.sleep(1.0)
        served = decided[0] if decided is not None else None
        if decided is not None and served is not None:
            _, status, text = decided
            holder = PolicyHolder(served)
            holder.version, self._serving_text = status.version, text
        else:
            if not last.policy_yaml:
                if decided is None:
                    raise StartupError(
                        f"ConfigMap {self.namespace}/{self.configmap} not found and no last good policy in the ledger",
                        unreadable=True,
                    )
                self.status = decided[1]
                self._best_effort_report(obj)
                raise StartupError("policy rejected and no last good one to serve: " + "; ".join(decided[1].errors))
            try:
                policy = load_policy(last.policy_yaml)
            except PolicyError as exc:
                raise StartupError("the last good policy in the ledger is unusable: " + "; ".join(exc.errors)) from None
            holder = PolicyHolder(policy)
            holder.version, self._serving_text = last.policy_version, last.policy_yaml
            if decided is not None:
                errors = list(decided[1].errors)
                status = st.rejected(decided[1].version, decided[1].resource_version, holder.version, errors)
                log.error(
                    "policy %s rejected, serving the last good one %s: %s",
                    status.version,
                    holder.version,
                    "; ".join(errors),
                )
            else:
                status = st.accepted(holder.version, "", len(policy.policy.rules))
                log.warning("policy ConfigMap not found: serving the last good policy %s", holder.version)
        self.holder, self.status, self._evaluated = holder, status, status.version
        if status.state == "Rejected":
            self._recheck_at = time.monotonic() + settings.recheck_seconds
        else:
            log.info("policy %s accepted at start-up: %d rule(s)", status.version, status.rules)
        self._tell(status)
        return holder

    def _best_effort_report(self, obj: KubeObject | None) -> None:
        """At a fatal start-up the status is written anyway (no leader yet): the user must see why."""
        if obj is None or self.status is None:
            return
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        with contextlib.suppress(ApiError):
            self._api.patch_configmap(
                self.namespace,
                self.configmap,
                st.annotation_patch(self.status, rv),
                timeout=self._kube.request_timeout,
            )

    # the loop ---------------------------------------------------------------------------

    def _changed_from_thread(self, obj: KubeObject | None) -> None:
        self._changed_at = time.monotonic()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    def wake(self) -> None:
        """Re-check now (leadership changed, RBAC may have moved). Call on the loop."""
        self._wake.set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.watch.start()

    async def run(self) -> None:
        """Evaluate every new version, re-check rejected ones, report as leader; until cancelled."""
        if self._loop is None:
            self.start()
        try:
            while True:
                timeout = None if self._recheck_at is None else max(0.0, self._recheck_at - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await wait_for(self._wake.wait(), timeout=timeout)
                self._wake.clear()
                try:
                    await self.step()
                except Exception:
                    log.exception("policy ConfigMap step failed")
                    self._recheck_at = time.monotonic() + 2.0
        finally:
            stopped = self.watch.stop()
            await asyncio.to_thread(stopped.join, 2.0)
            self._runner.shutdown()

    async def step(self) -> None:
        obj = self.watch.current()
        if obj is None:
            if self.watch.synced and not self._reported_missing:
                self._reported_missing = True
                log.warning(
                    "policy ConfigMap %s/%s not found: the current policy keeps serving",
                    self.namespace,
                    self.configmap,
                )
            return
        self._reported_missing = False
        text = (obj.get("data") or {}).get(self.settings.policy_key)
        version = st.digest(text) if isinstance(text, str) else st.digest("")
        due = self._recheck_at is not None and time.monotonic() >= self._recheck_at
        if version != self._evaluated or due:
            await self._evaluate(obj)
        await self._report(obj)

    async def _evaluate(self, obj: KubeObject) -> None:
        since = self._changed_at
        try:
            policy, status, text = await asyncio.to_thread(self.decide, obj)
        except AccessUnknown as exc:
            log.warning("policy permissions not checked yet (%s), retrying", exc)
            self._recheck_at = time.monotonic() + 2.0
            return
        permissions = policy is None and any("missing permission" in error for error in status.errors)
        if permissions and self._in_grace(status.version):
            # ``helm upgrade`` applies the ConfigMap before the RBAC objects: give the new
            # grants a moment before calling the policy rejected.
            self._recheck_at = time.monotonic() + 0.5
            return
        previous, self.status, self._evaluated = self.status, status, status.version
        holder = self.holder
        assert holder is not None, "start_blocking() first"
        took = f" {time.monotonic() - since:.3f}s after the change" if since is not None else ""
        if policy is not None:
            self._recheck_at = None
            if status.version != holder.version:
                self._serving_text = text
                holder.accept(policy, version=status.version)
                log.info(
                    "policy %s (resourceVersion %s) accepted%s: %d rule(s)",
                    status.version,
                    status.resource_version,
                    took,
                    status.rules,
                )
        else:
            self._recheck_at = time.monotonic() + self.settings.recheck_seconds if permissions else None
            if previous is None or (previous.state, previous.version, previous.errors) != (
                status.state,
                status.version,
                status.errors,
            ):
                log.error(
                    "policy %s (resourceVersion %s) rejected%s, still serving %s: %s",
                    status.version,
                    status.resource_version,
                    took,
                    holder.version,
                    redact("; ".join(status.errors)),
                )
                holder.refuse(list(status.errors))
        self._tell(status)

    def _in_grace(self, version: str) -> bool:
        now = time.monotonic()
        if self._grace is None or self._grace[0] != version:
            self._grace = (version, now)
        return now - self._grace[1] < self.settings.rbac_grace_seconds

    def _tell(self, status: st.PolicyStatus) -> None:
        for listener in self.listeners:
            try:
                listener(status)
            except Exception:
                log.exception("policy status listener failed")

    async def _report(self, obj: KubeObject) -> None:
        """As leader: the status annotations and, when the outcome changed, an Event; the last good policy."""
        status = self.status
        if status is None or not self.is_leader():
            return
        holder = self.holder
        ledger = self._ledger
        serving_known = holder is not None and bool(self._serving_text)
        if (
            ledger is not None
            and holder is not None
            and serving_known
            and ledger.current().policy_version != holder.version
        ):
            ledger.record(lg.remember_policy(holder.version, self._serving_text))
        metadata = obj.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        if not st.needs_write(annotations, status):
            return
        prior = st.written(annotations)
        rv = str(metadata.get("resourceVersion") or "")
        api, namespace, name = self._api, self.namespace, self.configmap
        patch = st.annotation_patch(status, rv)
        since = self.watch.mark()
        try:
            updated = await self._runner(
                lambda t: api.patch_configmap(namespace, name, patch, timeout=t),
                timeout=self._kube.request_timeout,
                action="write the policy status",
            )
        except ApiError as exc:
            if exc.kind in ("conflict", "not_found"):
                self._wake.set()  # it changed meanwhile: evaluate the new version first
                return
            log.warning("policy status not written: %s", exc)
            self._recheck_at = time.monotonic() + 5.0
            return
        self.watch.put(updated, since=since)
        if prior != (status.state, status.version):
            await self._post_event(status, obj)

    async def _post_event(self, status: st.PolicyStatus, obj: KubeObject) -> None:
        kind, reason, message = status.event()
        metadata = obj.get("metadata") or {}
        namespace = self.namespace
        involved: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": self.configmap,
            "namespace": namespace,
        }
        if metadata.get("uid"):
            involved["uid"] = metadata["uid"]
        body = event_body(
            namespace=namespace,
            involved=involved,
            reason=reason,
            message=redact(message),
            instance=self._kube.identity,
            type_=kind,
        )
        api = self._api
        try:
            await self._runner(
                lambda t: api.create_event(namespace, body, timeout=t),
                timeout=self._kube.request_timeout,
                action="create the policy Event",
            )
        except ApiError as exc:
            log.info("policy Event not recorded (%s)", exc.kind)


def policy_info_metric(registry: Any) -> StatusListener:
    """``pullsecret_injector_policy_info{version,resource_version,state,serving} 1``: the last outcome."""
    from prometheus_client import Gauge

    gauge = Gauge(
        "pullsecret_injector_policy_info",
        "The last policy ConfigMap version evaluated (state Accepted/Rejected) and the version served.",
        ["version", "resource_version", "state", "serving"],
        registry=registry,
    )

    def listener(status: st.PolicyStatus) -> None:
        gauge.clear()
        gauge.labels(status.version, status.resource_version, status.state, status.serving).set(1)

    return listener


__all__ = ["LivePolicy", "StartupError", "copy_names", "policy_info_metric"]
