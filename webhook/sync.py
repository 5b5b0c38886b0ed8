"""Keeping the managed Secrets in sync: at admission, in the background, on one replica.

Three actors share one core (:class:`SecretSync`: what a copy should be, and how to make
the API agree with a bounded number of calls):

* :class:`Ensurer`, the handler's ``SecretEnsurer``: before a Pod CREATE is answered,
  every Secret it gets injected exists and is current in its namespace. When the watch
  caches already show the copy current, that costs no API call at all. Otherwise create,
  take 409 as "someone else was faster" and compare, patch only our own copies. All of
  it within ``ensure_timeout``: past it the Pod is answered anyway (with a warning) and
  the work is handed to the background.
* :class:`Reconciler`: triggered by watch events (debounced) and a periodic resync. On
  the leader it updates every copy when a source changes, recreates deleted copies and
  deletes copies no rule allows any more (``cleanup``). On every replica it finishes the
  admissions it had to hand off, because when the API was down nobody else knows about
  them.
* :class:`LeaseElector`: leader election on a ``coordination.k8s.io/v1`` Lease. The
  official client ships ``kubernetes.leaderelection``, but its model does not fit here:
  ``run()`` blocks a thread forever in ``time.sleep`` loops with no way to stop it, the
  leading callback runs in a thread that cannot be cancelled when the lease is lost (so
  a deposed leader keeps reconciling next to the new one), ``Config`` calls
  ``sys.exit`` on bad values, the lock uses the global default client with no request
  timeouts (a hung API server stalls renewal past the deadline) and ``replace``, not
  ``patch``. This is the same algorithm as client-go's (observed-record time on the
  local monotonic clock, renew deadline shorter than the lease), in asyncio, with
  optimistic concurrency through ``metadata.resourceVersion`` on the patch.

:class:`KubeRuntime` wires it all for :mod:`webhook.server`. The namespace policy is the
security boundary throughout: :func:`grant_for` is the one function that says whether a
namespace may hold a copy, and a namespace no rule admits never gets one, whatever asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from webhook.dockercfg import (
    Copy,
    SourceError,
    build_copy,
    is_current,
    is_managed,
    needs_recreate,
    update_patch,
)
from webhook.handler import EnsureResult
from webhook.kube import (
    ApiError,
    EventRecorder,
    Key,
    KubeApi,
    KubeObject,
    KubeSettings,
    NamespaceCache,
    Runner,
    SecretCache,
    SecretTarget,
    Stats,
    build_api_client,
    load_configuration,
    namespace_labels,
)
from webhook.logs import redact
from webhook.policy import CompiledPolicy, Rule, Source

log = logging.getLogger(__name__)

PolicyFn = Callable[[], CompiledPolicy]
T = TypeVar("T")
Outcome = Literal["current", "created", "updated", "unmanaged", "dry-run"]


# --------------------------------------------------------------------------- the policy side


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """The rules that give Secret ``name`` to one namespace (all share one source)."""

    rules: tuple[Rule, ...]

    @property
    def source(self) -> Source:
        source = self.rules[0].source
        assert source is not None
        return source

    @property
    def registries(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(pattern for rule in self.rules for pattern in rule.registries))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self.rules)


class _PolicyIndex:
    """Rules with a source, by Secret name, for the policy object last seen."""

    _GRANTS_LIMIT = 4096

    def __init__(self) -> None:
        self._policy: CompiledPolicy | None = None
        self._by_name: dict[str, list[tuple[int, Rule]]] = {}
        self._grants: dict[tuple[str, frozenset[int]], Grant | None] = {}

    def by_name(self, policy: CompiledPolicy) -> dict[str, list[tuple[int, Rule]]]:
        if policy is not self._policy:
            by_name: dict[str, list[tuple[int, Rule]]] = {}
            for index, rule in enumerate(policy.policy.rules):
                if rule.source is not None:
                    by_name.setdefault(rule.secret, []).append((index, rule))
            self._policy, self._by_name, self._grants = policy, by_name, {}
        return self._by_name

    def grant(self, policy: CompiledPolicy, name: str, admitted: frozenset[int]) -> Grant | None:
        """The :class:`Grant` of ``name`` for the rules ``admitted``, one object per distinct answer.

        Namespaces admitted by the same rules share a Grant: the desired copy is memoized
        on its identity (:class:`SecretSync`), so it is built once, not once per admission.
        """
        candidates = self.by_name(policy).get(name)
        if not candidates:
            return None
        key = (name, admitted)
        try:
            return self._grants[key]
        except KeyError:
            pass
        rules = tuple(rule for index, rule in candidates if index in admitted)
        grant = Grant(rules) if rules else None
        if len(self._grants) >= self._GRANTS_LIMIT:
            self._grants.clear()
        self._grants[key] = grant
        return grant


_index = _PolicyIndex()


def managed_names(policy: CompiledPolicy) -> set[str]:
    """The Secret names this policy writes (rules with a ``source``)."""
    return set(_index.by_name(policy))


def grant_for(policy: CompiledPolicy, namespace: str, name: str, labels: Mapping[str, str] | None) -> Grant | None:
    """Whether ``namespace`` may hold a copy of ``name``, and from which rules. The security boundary.

    ``labels`` ``None`` means unknown: rules with a namespace selector then do not apply.
    """
    if name not in _index.by_name(policy):
        return None
    return _index.grant(policy, name, policy.admitted_rules(namespace, labels))


def source_target(source: Source) -> tuple[str, str]:
    """``(namespace, name)`` of the Secret a source reads."""
    if source.secret is not None:
        return source.secret.namespace, source.secret.name
    assert source.credentials is not None
    ref = source.credentials.password_from
    return ref.namespace, ref.name


def watch_targets(policy: CompiledPolicy, *, extra_names: Iterable[str] = ()) -> set[SecretTarget]:
    """What to watch for ``policy``: each copy name cluster-wide, each source Secret in its namespace."""
    targets: set[SecretTarget] = {(None, name) for name in managed_names(policy) | set(extra_names)}
    for entries in _index.by_name(policy).values():
        source = entries[0][1].source
        assert source is not None
        targets.add(source_target(source))
    return targets


# --------------------------------------------------------------------------- the shared core


class _Deadline:
    """The time left for one unit of work; each API call gets what remains, none starts after the end."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self, action: str) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise ApiError("timeout", action=action)
        return left


class SecretSync:
    """What a copy should be (from the caches) and how to make the API agree (bounded calls)."""

    def __init__(
        self,
        *,
        api: KubeApi,
        runner: Runner,
        secrets: SecretCache,
        namespaces: NamespaceCache,
        stats: Stats,
    ) -> None:
        self._api = api
        self._runner = runner
        self.secrets = secrets
        self.namespaces = namespaces
        self._stats = stats
        self._memo: dict[tuple[Any, ...], Copy] = {}
        #: ``id(grant)`` -> ``(grant, name, source object, copy)``: the copy built from that very
        #: cached source object (the store replaces an object on every change, never edits it).
        self._copies: dict[int, tuple[Grant, str, KubeObject, Copy]] = {}
        #: ``(namespace, name)`` -> ``(uid, resourceVersion, copy)`` of a copy found current.
        self._verdicts: dict[Key, tuple[str, str, Copy]] = {}

    _MEMO_LIMIT = 1024
    _VERDICTS_LIMIT = 65536

    def current_in_cache(self, namespace: str, name: str, grant: Grant) -> bool:
        """Whether the caches alone show the copy of ``name`` in ``namespace`` current for ``grant``.

        Synchronous and free of API calls: the warm path of every admission. False means
        "not shown current" (source or copy not cached, a source problem, a stale or foreign
        copy): :meth:`desired` and :meth:`converge` then work it out, with API calls if need be.
        """
        known, source_obj = self.secrets.lookup(*source_target(grant.source))
        if not known or source_obj is None:
            return False
        known, existing = self.secrets.lookup(namespace, name)
        if not known or existing is None:
            return False
        try:
            base = self._base_copy(name, grant, source_obj)
        except SourceError:
            return False
        metadata = existing.get("metadata") or {}
        uid, version = str(metadata.get("uid") or ""), str(metadata.get("resourceVersion") or "")
        key = (namespace, name)
        verdict = self._verdicts.get(key)
        if version and verdict is not None and verdict[2] is base and verdict[1] == version and verdict[0] == uid:
            return True
        if not is_current(existing, base):
            return False
        if version:
            if len(self._verdicts) >= self._VERDICTS_LIMIT:
                self._verdicts.clear()
            self._verdicts[key] = (uid, version, base)
        return True

    def _base_copy(self, name: str, grant: Grant, source_obj: KubeObject | None) -> Copy:
        """The copy ``grant`` gives (namespace left empty), memoized; raises ``SourceError``."""
        entry = self._copies.get(id(grant))
        if entry is not None and entry[0] is grant and entry[2] is source_obj and entry[1] == name:
            return entry[3]
        data = source_obj.get("data") if source_obj is not None else None
        memo_key = (
            name,
            grant.names,
            grant.registries,
            grant.source,
            None if source_obj is None else source_obj.get("type"),
            None if not isinstance(data, dict) else tuple(sorted(data.items())),
        )
        cached = self._memo.get(memo_key)
        if cached is None:
            cached = build_copy(
                name=name,
                namespace="",
                source=grant.source,
                rules=grant.names,
                registries=grant.registries,
                source_secret=source_obj,
            )
            if len(self._memo) >= self._MEMO_LIMIT:
                self._memo.clear()
            self._memo[memo_key] = cached
        if source_obj is not None:
            if len(self._copies) >= self._MEMO_LIMIT:
                self._copies.clear()
            self._copies[id(grant)] = (grant, name, source_obj, cached)
        return cached

    async def _call(self, action: str, deadline: _Deadline, call: Callable[[float], T]) -> T:
        """One API call with what remains of ``deadline`` (none is started past it)."""
        return await self._runner(call, timeout=deadline.remaining(action), action=action)

    async def _source_object(self, source: Source, deadline: _Deadline) -> KubeObject | None:
        namespace, name = source_target(source)
        known, obj = self.secrets.lookup(namespace, name)
        if known:
            return obj
        return await self._get(namespace, name, deadline)

    async def desired(self, namespace: str, name: str, grant: Grant, deadline: _Deadline) -> Copy:
        """The copy ``grant`` gives ``namespace``; raises ``SourceError`` or ``ApiError``."""
        source_obj = await self._source_object(grant.source, deadline)
        return dataclasses.replace(self._base_copy(name, grant, source_obj), namespace=namespace)

    async def _get(self, namespace: str, name: str, deadline: _Deadline) -> KubeObject | None:
        api = self._api
        return await self._call(
            f"get Secret {namespace}/{name}", deadline, lambda t: api.get_secret(namespace, name, timeout=t)
        )

    async def converge(self, desired: Copy, *, deadline: _Deadline, dry_run: bool) -> Outcome:
        """Make the Secret in the API equal ``desired``, never touching one that is not ours.

        From the cache when it knows the Secret (no call when current), else one GET.
        Create; 409 means another replica or the reconciler was faster: read it back and
        compare. Patch carries the observed resourceVersion, so it cannot land on a
        Secret that changed (into an unmanaged one, say) since we looked.
        """
        namespace, name = desired.namespace, desired.name
        api = self._api
        known, existing = self.secrets.lookup(namespace, name)
        if not known:
            existing = await self._get(namespace, name, deadline)
        for _ in range(4):
            if existing is None:
                if dry_run:
                    return "dry-run"
                manifest = desired.manifest()
                try:
                    created = await self._call(
                        f"create Secret {namespace}/{name}",
                        deadline,
                        lambda t: api.create_secret(namespace, manifest, timeout=t),  # noqa: B023
                    )
                except ApiError as exc:
                    if exc.kind != "conflict":
                        self._stats.write("create", "error")
                        raise
                    self._stats.write("create", "conflict")
                    existing = await self._get(namespace, name, deadline)
                    continue
                self._stats.write("create", "ok")
                self.secrets.put(created)
                log.info("created Secret %s/%s", namespace, name)
                return "created"
            if not is_managed(existing):
                return "unmanaged"
            if is_current(existing, desired):
                return "current"
            if dry_run:
                return "dry-run"
            if needs_recreate(existing):
                await self.delete(existing, deadline=deadline)
                existing = None
                continue
            patch = update_patch(existing, desired)
            try:
                updated = await self._call(
                    f"update Secret {namespace}/{name}",
                    deadline,
                    lambda t: api.patch_secret(namespace, name, patch, timeout=t),  # noqa: B023
                )
            except ApiError as exc:
                if exc.kind not in ("conflict", "not_found"):
                    self._stats.write("update", "error")
                    raise
                self._stats.write("update", "conflict")
                existing = await self._get(namespace, name, deadline)
                continue
            self._stats.write("update", "ok")
            self.secrets.put(updated)
            log.info("updated Secret %s/%s", namespace, name)
            return "updated"
        raise ApiError("conflict", action=f"update Secret {namespace}/{name}: it keeps changing")

    async def delete(self, existing: KubeObject, *, deadline: _Deadline) -> None:
        """Delete a managed copy, only if it is still the object we looked at."""
        metadata = existing.get("metadata") or {}
        namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
        if not is_managed(existing):  # the invariant, checked where the call is made
            raise ApiError("forbidden", action=f"delete Secret {namespace}/{name}: not managed by us")
        api = self._api
        uid, version = metadata.get("uid"), metadata.get("resourceVersion")
        try:
            await self._call(
                f"delete Secret {namespace}/{name}",
                deadline,
                lambda t: api.delete_secret(namespace, name, uid=uid, resource_version=version, timeout=t),
            )
        except ApiError:
            self._stats.write("delete", "error")
            raise
        self._stats.write("delete", "ok")
        self.secrets.forget(namespace, name)
        log.info("deleted Secret %s/%s", namespace, name)


# --------------------------------------------------------------------------- admission


class Ensurer:
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
    ) -> None:
        self._sync = sync
        self._policy = policy
        self._settings = settings
        self._stats = stats
        self._events = events
        self._handoff = handoff
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
                task = asyncio.create_task(self._ensure_one(policy, namespace, name, labels, deadline, dry_run))
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
            grant = grant_for(policy, namespace, name, labels)
            if grant is None or not self._sync.current_in_cache(namespace, name, grant):
                return False
        except Exception:
            log.exception("checking Secret %s/%s in the cache failed unexpectedly", namespace, name)
            return False  # the full path decides, and reports
        self._stats.ensure("fast")
        return True

    def _forget_inflight(self, task: asyncio.Task[tuple[bool, str | None]]) -> None:
        for key, value in list(self._inflight.items()):
            if value is task:
                del self._inflight[key]

    async def _ensure_one(
        self,
        policy: CompiledPolicy,
        namespace: str,
        name: str,
        labels: Mapping[str, str] | None,
        deadline: _Deadline,
        dry_run: bool,
    ) -> tuple[bool, str | None]:
        try:
            return await self._ensure_one_unguarded(policy, namespace, name, labels, deadline, dry_run)
        except Exception:
            # A bug, not an API answer: never let it fail the admission, and say so in the log.
            log.exception("ensuring Secret %s/%s failed unexpectedly", namespace, name)
            self._stats.error("internal")
            return False, f"Secret {name} could not be checked in {namespace} (internal error)"

    async def _ensure_one_unguarded(
        self,
        policy: CompiledPolicy,
        namespace: str,
        name: str,
        labels: Mapping[str, str] | None,
        deadline: _Deadline,
        dry_run: bool,
    ) -> tuple[bool, str | None]:
        grant = grant_for(policy, namespace, name, labels)
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


# --------------------------------------------------------------------------- the background


class Reconciler:
    """Keeps every copy right: on the leader all of them, elsewhere the handed-off ones.

    ``tracked`` holds every managed copy seen (by the watch or written by us) until it is
    deleted *by us* or its namespace goes away: a copy someone else deletes stays tracked,
    and so is recreated. ``pending`` holds admissions that could not finish in time.
    """

    def __init__(
        self,
        *,
        sync: SecretSync,
        policy: PolicyFn,
        settings: KubeSettings,
        stats: Stats,
        events: EventRecorder,
        is_leader: Callable[[], bool],
        retired: Callable[[], set[str]],
    ) -> None:
        self._sync = sync
        self._policy = policy
        self._settings = settings
        self._stats = stats
        self._events = events
        self._is_leader = is_leader
        self._retired = retired
        self.tracked: set[Key] = set()
        self.pending: set[Key] = set()
        self._wake = asyncio.Event()
        self._dirty_since: float | None = None
        #: The oldest change not yet applied (kept across failed passes), for ``Stats.current_lag``.
        self._behind_since: float | None = None
        self._retry_delay = 1.0
        self._warned_unmanaged: set[Key] = set()
        self._failures: dict[Key, str] = {}
        self.passes = 0

    def notify(self) -> None:
        """Something changed: run a pass soon. Call on the event loop."""
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
            self._stats.behind(self._behind_since or self._dirty_since)
        self._wake.set()

    def handoff(self, key: Key) -> None:
        self.pending.add(key)
        self.notify()

    def secret_changed(self, key: Key, after: KubeObject | None) -> None:
        if after is not None and is_managed(after):
            self.tracked.add(key)
            self._warned_unmanaged.discard(key)
        self.notify()

    async def run(self) -> None:
        """Passes on watch events (debounced), on retries and every ``resync_seconds``, until cancelled."""
        await self.run_pass()
        while True:
            timeout = self._settings.resync_seconds
            if self.pending:
                timeout = min(timeout, self._retry_delay)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            except TimeoutError:
                if self._dirty_since is None:
                    self._dirty_since = time.monotonic()
            self._wake.clear()
            await asyncio.sleep(self._settings.debounce)
            try:
                clean = await self.run_pass()
            except Exception:
                # A bug must not end reconciliation for the life of the process.
                log.exception("reconcile pass failed")
                self._stats.error("internal")
                clean = False
            self._retry_delay = 1.0 if clean else min(self._retry_delay * 2, 30.0)

    async def run_pass(self) -> bool:
        """One pass over every copy we know of; True when nothing failed."""
        dirty_since, self._dirty_since = self._dirty_since, None
        self._behind_since = self._behind_since or dirty_since
        self._wake.clear()
        leader = self._is_leader()
        policy = self._policy()
        keys = set(self.pending)
        if leader:
            for name in managed_names(policy) | self._retired():
                for key, obj in self._sync.secrets.named(name):
                    if is_managed(obj):
                        self.tracked.add(key)
            keys |= self.tracked
        semaphore = asyncio.Semaphore(self._settings.reconcile_concurrency)

        async def one(key: Key) -> bool:
            async with semaphore:
                return await self._reconcile(key, policy, leader)

        results = await asyncio.gather(*(one(key) for key in sorted(keys)))
        clean = all(results)
        self.passes += 1
        lag = time.monotonic() - dirty_since if dirty_since is not None else None
        self._stats.reconciled(lag=lag, clean=clean and leader)
        # Caught up only when this pass went through and nothing new came in meanwhile.
        if clean and self._dirty_since is None:
            self._behind_since = None
        self._stats.behind(self._behind_since or self._dirty_since)
        if keys:
            log.debug("reconcile pass: %d copies, %s", len(keys), "clean" if clean else "with errors")
        return clean

    def _log_failure(self, key: Key, kind: str, message: str) -> None:
        """WARNING when a copy starts failing (or fails differently), DEBUG while it keeps failing alike."""
        level = logging.DEBUG if self._failures.get(key) == kind else logging.WARNING
        if len(self._failures) > 65536:
            self._failures.clear()
        self._failures[key] = kind
        log.log(level, "%s", message)

    async def _reconcile(self, key: Key, policy: CompiledPolicy, leader: bool) -> bool:
        namespace, name = key
        deadline = _Deadline(self._settings.request_timeout)
        namespaces = self._sync.namespaces
        try:
            ns_obj = namespaces.get(namespace)
            if ns_obj is None:  # not (yet) seen by the watch: ask, never conclude from silence
                ns_obj = await namespaces.fetch(namespace, timeout=self._settings.request_timeout)
            if ns_obj is None or (ns_obj.get("status") or {}).get("phase") == "Terminating":
                # Gone or going: its Secrets go with it; nothing to create or clean up.
                self.tracked.discard(key)
                self.pending.discard(key)
                return True
            labels = namespace_labels(ns_obj)
            grant = grant_for(policy, namespace, name, labels)
            known, existing = self._sync.secrets.lookup(namespace, name)
            if grant is None:
                if leader and self._settings.cleanup and known and existing is not None and is_managed(existing):
                    await self._sync.delete(existing, deadline=deadline)
                self.tracked.discard(key)
                self.pending.discard(key)
                return True
            if not leader and key not in self.pending:
                return True
            desired = await self._sync.desired(namespace, name, grant, deadline)
            outcome = await self._sync.converge(desired, deadline=deadline, dry_run=False)
        except SourceError as exc:
            self._stats.error(exc.reason)
            self._events.warn(namespace=namespace, secret=name, reason=exc.reason, message=f"Secret {name}: {exc}")
            self._log_failure(key, exc.reason, f"Secret {namespace}/{name} not reconciled: {exc}")
            return False
        except ApiError as exc:
            self._stats.error(exc.kind)
            self._log_failure(key, exc.kind, f"Secret {namespace}/{name} not reconciled: {exc}")
            if key in self.pending:
                self._events.warn(
                    namespace=namespace,
                    secret=name,
                    reason="SecretNotProvided",
                    message=f"Secret {name} could not be provided: {exc}; retrying",
                )
            return False
        self.pending.discard(key)
        self._failures.pop(key, None)
        if outcome == "unmanaged":
            self.tracked.discard(key)
            if key not in self._warned_unmanaged:
                self._warned_unmanaged.add(key)
                log.warning("Secret %s/%s exists and is not managed by pullsecret-injector: left untouched", *key)
        else:
            self.tracked.add(key)
        return True


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
                delay = settings.retry_period if self.is_leader else settings.retry_period * random.uniform(1.0, 1.2)
                await asyncio.sleep(delay)
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
            except ApiError as exc:
                if exc.kind == "conflict":
                    return False
                raise
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
        except ApiError as exc:
            if exc.kind == "conflict":
                return False
            raise
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


# --------------------------------------------------------------------------- the runtime


def default_identity() -> str:
    """The Pod name (``POD_NAME``, from the downward API), else host and pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class KubeRuntime:
    """Everything Kubernetes, assembled: caches, ensurer, reconciler, elector, Events.

    ``start`` (the server's ``on_start``) starts the watches and waits, bounded, for their
    first lists; ``run`` (a ``background`` job) runs the elector, the reconciler and the
    Event queue until cancelled, then stops the watches and gives up the Lease.
    """

    def __init__(
        self,
        *,
        api: KubeApi,
        watch_api: KubeApi,
        policy: PolicyFn,
        settings: KubeSettings,
        stats: Stats | None = None,
        elect: bool = True,
    ) -> None:
        self.settings = settings
        self.stats = stats or Stats()
        self._api, self._watch_api = api, watch_api
        self._policy = policy
        self._loop: asyncio.AbstractEventLoop | None = None
        self.runner = Runner(settings.workers)
        self.secrets = SecretCache(api=watch_api, settings=settings, stats=self.stats, on_change=self._secret_event)
        self.namespaces = NamespaceCache(
            api=api, runner=self.runner, settings=settings, stats=self.stats, on_change=self._namespace_event
        )
        self.events = EventRecorder(api=api, runner=self.runner, settings=settings, stats=self.stats)
        self.sync = SecretSync(
            api=api, runner=self.runner, secrets=self.secrets, namespaces=self.namespaces, stats=self.stats
        )
        self.elector = LeaseElector(
            api=api, runner=self.runner, settings=settings, stats=self.stats, on_change=self._leadership_changed
        )
        self._elect = elect
        self._retired: set[str] = set()
        self._watched_policy: CompiledPolicy | None = None
        self._watched_names: set[str] = set()
        self.reconciler = Reconciler(
            sync=self.sync,
            policy=self._current_policy,
            settings=settings,
            stats=self.stats,
            events=self.events,
            is_leader=lambda: self.elector.is_leader,
            retired=lambda: set(self._retired),
        )
        self.ensurer = Ensurer(
            sync=self.sync,
            policy=policy,
            settings=settings,
            stats=self.stats,
            events=self.events,
            handoff=self.reconciler.handoff,
        )
        self._started = asyncio.Event()
        self._closed = False

    # watch callbacks arrive on watch threads: hop onto the loop -------------------

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _secret_event(self, key: Key, before: KubeObject | None, after: KubeObject | None) -> None:
        self._call_soon(self.reconciler.secret_changed, key, after)

    def _namespace_event(self, key: Key, before: KubeObject | None, after: KubeObject | None) -> None:
        # Labels decide which rules admit a namespace; the phase tells a terminating one.
        changed = (
            before is None
            or after is None
            or namespace_labels(before) != namespace_labels(after)
            or before.get("status") != after.get("status")
        )
        if changed:
            self._call_soon(self.reconciler.notify)

    def _leadership_changed(self, leader: bool) -> None:
        if leader:
            self.reconciler.notify()

    # policy -----------------------------------------------------------------------

    def _current_policy(self) -> CompiledPolicy:
        policy = self._policy()
        if policy is not self._watched_policy:
            self.refresh_targets()
        self._drop_retired()
        return policy

    def refresh_targets(self) -> None:
        """Watch what the current policy needs; keep retired names until their copies are cleaned up."""
        policy = self._policy()
        names = managed_names(policy)
        if self.settings.cleanup:
            self._retired |= self._watched_names - names
        self._retired -= names
        self._watched_policy, self._watched_names = policy, names
        self.secrets.sync_targets(watch_targets(policy, extra_names=self._retired))

    def _drop_retired(self) -> None:
        """A retired name whose managed copies are all gone needs no watch any more."""
        done = set()
        for name in self._retired:
            known, _ = self.secrets.lookup("", name)
            if known and not any(is_managed(obj) for _, obj in self.secrets.named(name)):
                done.add(name)
        if done:
            self._retired -= done
            self.secrets.sync_targets(watch_targets(self._policy(), extra_names=self._retired))

    def policy_changed(self, accepted: bool, errors: list[str]) -> None:
        """A ``PolicyHolder`` listener: re-target the watches and reconcile."""
        if not accepted:
            return
        if self._loop is None:
            self.refresh_targets()
            return
        self._call_soon(self._apply_policy)

    def _apply_policy(self) -> None:
        self.refresh_targets()
        self.reconciler.notify()

    # lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the watches and wait (at most ``sync_timeout``) for their first lists."""
        self._loop = asyncio.get_running_loop()
        self.namespaces.start()
        self.refresh_targets()
        deadline = time.monotonic() + self.settings.sync_timeout
        while time.monotonic() < deadline and not self.synced:
            await asyncio.sleep(0.02)
        if self.synced:
            log.info("kubernetes caches synced: %d Secret watch(es)", len(self.secrets.targets()))
        else:
            log.warning(
                "kubernetes caches not synced after %.0fs: serving, with API calls on the admission path",
                self.settings.sync_timeout,
            )
        self._started.set()

    @property
    def synced(self) -> bool:
        return self.namespaces.synced and self.secrets.synced()

    async def run(self) -> None:
        """The background jobs, until cancelled; then everything is stopped."""
        await self._started.wait()
        jobs: list[Coroutine[Any, Any, None]] = [self.events.run(), self.reconciler.run()]
        if self._elect:
            jobs.append(self.elector.run())
        tasks = [asyncio.create_task(job) for job in jobs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.elector.release()
            await self.close()

    async def close(self) -> None:
        """Stop the watches (closing their connections) and the worker threads."""
        if self._closed:
            return
        self._closed = True
        watches = self.secrets.stop() + self.namespaces.stop()

        def join() -> None:
            for watch in watches:
                watch.join(2.0)

        await asyncio.to_thread(join)
        self.runner.shutdown()
        self._api.close()
        self._watch_api.close()


def build_kube_runtime(
    *,
    kubeconfig: Path | None,
    policy: PolicyFn,
    namespace: str,
    ensure_timeout: float,
    cleanup: bool,
    lease_name: str,
    resync_seconds: float,
    identity: str | None = None,
    stats: Stats | None = None,
) -> KubeRuntime:
    """The runtime for ``serve``: kubeconfig if given, else the in-cluster service account."""
    settings = KubeSettings(
        namespace=namespace,
        ensure_timeout=ensure_timeout,
        cleanup=cleanup,
        lease_name=lease_name,
        identity=identity or default_identity(),
        resync_seconds=resync_seconds,
    )
    configuration = load_configuration(kubeconfig=kubeconfig)
    return build_runtime_from_configuration(configuration=configuration, policy=policy, settings=settings, stats=stats)


def build_runtime_from_configuration(
    *, configuration: Any, policy: PolicyFn, settings: KubeSettings, stats: Stats | None = None, elect: bool = True
) -> KubeRuntime:
    """The runtime on an explicit client ``Configuration`` (tests point it at an emulator)."""
    # Two clients, two connection pools: the watches hold their connections for minutes and
    # must never starve (or be starved by) the short calls of the admission path.
    api = KubeApi(build_api_client(configuration=copy.deepcopy(configuration), pool_size=settings.workers))
    watch_api = KubeApi(build_api_client(configuration=copy.deepcopy(configuration), pool_size=64))
    return KubeRuntime(api=api, watch_api=watch_api, policy=policy, settings=settings, stats=stats, elect=elect)


__all__ = [
    "Ensurer",
    "Grant",
    "KubeRuntime",
    "LeaseElector",
    "Reconciler",
    "SecretSync",
    "build_kube_runtime",
    "build_runtime_from_configuration",
    "default_identity",
    "grant_for",
    "managed_names",
    "watch_targets",
]
