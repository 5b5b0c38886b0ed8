"""Admission-time ensuring: the copies a Pod gets exist and are current before it is answered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from webhook import waits
from webhook.admission.handler import EnsureResult
from webhook.config import KubeSettings
from webhook.kube.errors import ApiError
from webhook.kube.events import EventRecorder
from webhook.kube.objects import Key
from webhook.observability.logs import redact
from webhook.observability.stats import Stats
from webhook.policy.matching import CompiledPolicy
from webhook.policy.model import Rule
from webhook.secrets.dockerconfig import SourceError
from webhook.secrets.grants import PolicyFn
from webhook.secrets.sync import CopyWorker, SecretSync, _Deadline

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- admission


class Ensurer(CopyWorker):
    """The handler's ``SecretEnsurer``: copies exist and are current before the Pod is answered."""

    def __init__(
        self,
        *,
        sync: SecretSync,
        policy: PolicyFn,
        settings: KubeSettings,
        stats: Stats,
        events: EventRecorder,
        handoff: Callable[[Key], None],
        persist: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        super().__init__(sync=sync, policy=policy, settings=settings, stats=stats, events=events)
        self._handoff = handoff
        #: Makes handed-off work durable (the ownership ledger) before the Pod is answered,
        #: so a replica killed right after the answer leaves its debt for another to finish.
        self._persist = persist
        self._inflight: dict[tuple[str, str, bool], asyncio.Task[tuple[bool, str | None]]] = {}

    async def ensure(self, *, namespace: str, secrets: Mapping[str, Rule], dry_run: bool) -> EnsureResult:
        budget = self._settings.ensure_timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        policy = self._policy()
        labels = await self._sync.namespaces.labels(namespace) if policy.uses_selectors else None
        pending = [name for name in secrets if not self._current_in_cache(policy, namespace, name, labels, dry_run)]
        if not pending:
            return EnsureResult()  # the warm path: no task, no thread, no API call
        deadline = _Deadline(max(0.0, budget - (loop.time() - started)))
        tasks: dict[str, asyncio.Task[tuple[bool, str | None]]] = {}
        for name in pending:
            key = (namespace, name, dry_run)
            task = self._inflight.get(key)
            if task is None:
                # One call chain per Secret, shared by concurrent admissions (a Deployment
                # scaled to 50 in a new namespace creates one copy, not 50 attempts).
                task = asyncio.create_task(
                    self._guarded(namespace, name, self._ensure_one(policy, namespace, name, labels, deadline, dry_run))
                )
                self._inflight[key] = task
                task.add_done_callback(self._forget_inflight)
            tasks[name] = task
        remaining = budget - (loop.time() - started)
        if tasks:
            await asyncio.wait(set(tasks.values()), timeout=max(0.0, remaining))
        result = EnsureResult()
        for name, task in tasks.items():
            if not task.done():
                self._stats.ensure("timeout")
                result.failed.append(name)
                result.warnings.append(
                    f"Secret {name} not confirmed in {namespace} within {budget:g}s (API slow); finishing in background"
                )
                if not dry_run:
                    self._handoff((namespace, name))
                continue
            if task.cancelled() or task.exception() is not None:
                self._stats.ensure("failed")
                result.failed.append(name)
                result.warnings.append(f"Secret {name} could not be checked in {namespace}")
                continue
            ok, warning = task.result()
            if not ok:
                result.failed.append(name)
            if warning:
                result.warnings.append(redact(warning))
        return result

    def _current_in_cache(
        self, policy: CompiledPolicy, namespace: str, name: str, labels: Mapping[str, str] | None, dry_run: bool
    ) -> bool:
        """The caches show the copy current (and no call chain for it is in flight): nothing to do."""
        if (namespace, name, dry_run) in self._inflight:
            return False
        try:
            grant = self._sync.grants.grant_for(policy, namespace, name, labels)
            if grant is None or not self._sync.current_in_cache(namespace, name, grant):
                return False
        except Exception:
            log.exception("checking Secret %s/%s in the cache failed unexpectedly", namespace, name)
            return False  # the full path decides, and reports
        self._stats.ensure("fast")
        return True

    async def _persisted(self, deadline: _Deadline) -> None:
        """Wait (within the admission's deadline) until the debt just handed off is durable."""
        if self._persist is None:
            return
        with contextlib.suppress(TimeoutError, ApiError):
            await waits.wait_for(self._persist(), timeout=deadline.remaining("record the debt"))

    def _forget_inflight(self, task: asyncio.Task[tuple[bool, str | None]]) -> None:
        for key, value in list(self._inflight.items()):
            if value is task:
                del self._inflight[key]

    async def _guarded(
        self, namespace: str, name: str, work: Coroutine[Any, Any, tuple[bool, str | None]]
    ) -> tuple[bool, str | None]:
        try:
            return await work
        except Exception:
            # A bug, not an API answer: never let it fail the admission, and say so in the log.
            log.exception("ensuring Secret %s/%s failed unexpectedly", namespace, name)
            self._stats.error("internal")
            return False, f"Secret {name} could not be checked in {namespace} (internal error)"

    async def _ensure_one(
        self,
        policy: CompiledPolicy,
        namespace: str,
        name: str,
        labels: Mapping[str, str] | None,
        deadline: _Deadline,
        dry_run: bool,
    ) -> tuple[bool, str | None]:
        grant = self._sync.grants.grant_for(policy, namespace, name, labels)
        if grant is None:
            # The handler only asks for admitted rules; this is the boundary checked again.
            self._stats.ensure("failed")
            return False, f"Secret {name}: no rule admits namespace {namespace}, not created"
        try:
            desired = await self._sync.desired(namespace, name, grant, deadline)
            outcome = await self._sync.converge(desired, deadline=deadline, dry_run=dry_run)
        except SourceError as exc:
            self._stats.error(exc.reason)
            self._stats.ensure("failed")
            if not dry_run:
                # The Pod is admitted naming this Secret: it must appear as soon as the source
                # is fixed (the source's watch event triggers the reconciler), not never.
                self._handoff((namespace, name))
                await self._persisted(deadline)
                self._events.warn(namespace=namespace, secret=name, reason=exc.reason, message=f"Secret {name}: {exc}")
            return False, f"Secret {name} not provided: {exc}"
        except ApiError as exc:
            self._stats.error(exc.kind)
            self._stats.ensure("failed")
            if dry_run:
                return False, f"Secret {name} could not be checked in {namespace} ({exc.kind})"
            self._handoff((namespace, name))
            self._events.warn(
                namespace=namespace,
                secret=name,
                reason="SecretNotProvided",
                message=f"Secret {name} could not be provided: {exc}; retrying in the background",
            )
            return False, f"Secret {name} not yet in {namespace} ({exc.kind}); retrying in background"
        if outcome == "unmanaged":
            self._stats.ensure("unmanaged")
            if not dry_run:
                self._events.warn(
                    namespace=namespace,
                    secret=name,
                    reason="SecretNotManaged",
                    message=f"Secret {name} exists and is not managed by pullsecret-injector: left untouched",
                )
            return True, f"Secret {name} in {namespace} is not managed by pullsecret-injector: left untouched"
        self._stats.ensure({"current": "fast", "dry-run": "dry_run"}.get(outcome, "written"))
        return True, None


