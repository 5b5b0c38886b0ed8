"""Wires the Kubernetes side for :mod:`webhook.server`: clients, watches, ensurer, reconciler, election."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypedDict, Unpack

from webhook.config import KubeSettings, RecoverySettings
from webhook.kube.caches import NamespaceCache, SecretCache
from webhook.kube.client import KubeApi, build_api_client, load_configuration
from webhook.kube.events import EventRecorder
from webhook.kube.ledger import DurablePending, LedgerStore
from webhook.kube.objects import Key, KubeObject, namespace_labels
from webhook.kube.peering import LeaseElector
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats
from webhook.policy.matching import CompiledPolicy
from webhook.policy.model import SecretKeyRef, TokenSource
from webhook.secrets import ledger as lg
from webhook.secrets.desired import is_managed
from webhook.secrets.dockerconfig import SourceNotFound, secret_value
from webhook.secrets.ensurer import Ensurer
from webhook.secrets.grants import PolicyFn
from webhook.secrets.reconciler import Reconciler
from webhook.secrets.sync import SecretSync
from webhook.tokens.base import Token
from webhook.tokens.errors import TokenError
from webhook.tokens.minter import TokenMinters, rfc3339
from webhook.tokens.providers import describe

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the runtime


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
        ledger: LedgerStore | None = None,
        recovery: RecoverySettings | None = None,
        pods: Any = None,
    ) -> None:
        self.settings = settings
        #: The ownership ledger (issue 11): copies made and debts owed, kept in the cluster.
        self.ledger = ledger
        #: Called with the new leadership (the live policy's status writer listens).
        self.leadership_listeners: list[Callable[[bool], None]] = []
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
        # issue 13: one minter per distinct token source; a new token wakes the reconciler.
        self.tokens = TokenMinters(
            read_value=self._read_token_credentials,
            on_refresh=self._token_refreshed,
            on_failure=self._token_failed,
        )
        self.sync = SecretSync(
            api=api,
            runner=self.runner,
            secrets=self.secrets,
            namespaces=self.namespaces,
            stats=self.stats,
            tokens=self.tokens,
            limits=settings.cache_limits,
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
            pending=DurablePending(ledger) if ledger is not None else None,
        )
        self.ensurer = Ensurer(
            sync=self.sync,
            policy=policy,
            settings=settings,
            stats=self.stats,
            events=self.events,
            handoff=self.reconciler.handoff,
            persist=ledger.flush if ledger is not None else None,
        )
        self._started = asyncio.Event()
        self._closed = False
        if ledger is not None:
            ledger.on_change = self._ledger_changed
        # --- fail-open recovery (issue 12): the leader deletes stuck fail-open Pods of controllers
        self.recovery: Any = None
        self._pods_api = pods
        if recovery is not None and recovery.enabled and pods is not None:
            from webhook.recovery.loop import FailOpenRecovery

            self.recovery = FailOpenRecovery(
                pods=pods,
                events_api=api,
                runner=self.runner,
                policy=policy,
                namespace=self.namespaces.get,
                is_leader=lambda: self.elector.is_leader,
                settings=recovery,
                kube=settings,
                stats=self.stats,
                ledger=ledger,  # the deletion budget outlives a restart and a change of leader
            )
        # --- end of fail-open recovery

    # watch callbacks arrive on watch threads: hop onto the loop -------------------

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _secret_event(self, key: Key, before: KubeObject | None, after: KubeObject | None) -> None:
        self._call_soon(self.reconciler.secret_changed, key, after)
        if self.ledger is not None:
            self._call_soon(self._observe_copies, key[1])

    # the ownership ledger (leader: the copies; any replica: its debts, via DurablePending) ----

    def _ledger_changed(self) -> None:
        """Another replica owes a copy, or the leader recorded copies: watch their names, reconcile."""
        self._call_soon(self._apply_policy)

    def _observe_copies(self, name: str) -> None:
        """As leader, record the managed copies named ``name`` that the synced cluster-wide watch shows."""
        ledger = self.ledger
        if ledger is None or not self.elector.is_leader or (None, name) not in self.secrets.targets():
            return
        known, _ = self.secrets.lookup("", name)
        if not known:
            return
        keys = frozenset(key for key, obj in self.secrets.named(name) if is_managed(obj))
        if keys != ledger.current().copies_named(name):
            ledger.record(lg.observe(name, keys))

    def _observe_all(self) -> None:
        for namespace, name in self.secrets.targets():
            if namespace is None:
                self._observe_copies(name)

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

    # issue 13: minted tokens ---------------------------------------------------------

    def _token_refreshed(self) -> None:
        """A minter has a new token (on the loop): the reconciler patches the copies in place."""
        self.reconciler.notify()

    def _token_failed(self, source: TokenSource, error: TokenError, last: Token | None) -> None:
        keeping = (
            f"the last good token stays in the copies until {rfc3339(last.expires_at)}"
            if last is not None
            else "no valid token to keep"
        )
        self.stats.error(error.reason)
        self.events.warn(
            namespace=self.settings.namespace,
            secret=f"token-{source.provider}",
            reason=error.reason,
            message=f"{describe(source)}: {error}; {keeping}; retrying with backoff",
        )

    async def _read_token_credentials(self, ref: SecretKeyRef) -> str:
        """``gcp.credentialsFrom``: from the watch cache, else one GET; registered with the redactor."""
        known, obj = self.secrets.lookup(ref.namespace, ref.name)
        if not known:
            api = self._api
            obj = await self.runner(
                lambda t: api.get_secret(ref.namespace, ref.name, timeout=t),
                timeout=self.settings.request_timeout,
                action=f"get Secret {ref.namespace}/{ref.name}",
            )
        what = f"Secret {ref.namespace}/{ref.name} (credentialsFrom)"
        if obj is None:
            raise SourceNotFound(f"{what} not found")
        return secret_value(obj, ref.key, what=what)

    def _leadership_changed(self, leader: bool) -> None:
        if leader:
            self.reconciler.notify()
            if self.ledger is not None:
                self._observe_all()
        for listener in self.leadership_listeners:
            listener(leader)

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
        names = self.sync.grants.managed_names(policy)
        if self.settings.cleanup:
            # Names the ledger remembers count as watched before: their copies outlive a restart.
            remembered = set(self.ledger.current().names) if self.ledger is not None else set()
            self._retired |= (self._watched_names | remembered) - names
        self._retired -= names
        self._watched_policy, self._watched_names = policy, names
        self.tokens.retain(rule.source.token for rule in policy.policy.rules if rule.source and rule.source.token)
        self.secrets.sync_targets(self.sync.grants.watch_targets(policy, extra_names=self._retired))

    def _drop_retired(self) -> None:
        """A retired name whose managed copies are all gone needs no watch any more."""
        done = set()
        remembered = set(self.ledger.current().names) if self.ledger is not None else set()
        for name in self._retired:
            known, _ = self.secrets.lookup("", name)
            if known and not any(is_managed(obj) for _, obj in self.secrets.named(name)):
                if name in remembered:
                    # Only the leader clears a name from the ledger; until then keep watching it.
                    self._observe_copies(name)
                    continue
                done.add(name)
        if done:
            self._retired -= done
            self.secrets.sync_targets(self.sync.grants.watch_targets(self._policy(), extra_names=self._retired))

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
        if self.ledger is not None:
            if not self.ledger.synced and self.ledger.watch.current() is None:
                with contextlib.suppress(Exception):  # unreadable now: the watch catches up
                    await asyncio.to_thread(self.ledger.load)
            self.ledger.watch.start()
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
        # (The ledger is not waited for: it matters to cleanup, not to admissions.)
        return self.namespaces.synced and self.secrets.synced()

    async def run(self) -> None:
        """The background jobs, until cancelled; then everything is stopped."""
        await self._started.wait()
        jobs: list[Coroutine[Any, Any, None]] = [self.events.run(), self.reconciler.run(), self.tokens.run()]
        if self.ledger is not None:
            jobs.append(self.ledger.run())
        if self._elect:
            jobs.append(self.elector.run())
        if self.recovery is not None:  # issue 12: fail-open recovery
            jobs.append(self.recovery.run())
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
        if self.ledger is not None:
            watches.append(self.ledger.watch.stop())

        def join() -> None:
            for watch in watches:
                watch.join(2.0)

        await asyncio.to_thread(join)
        self.runner.shutdown()
        self._api.close()
        self._watch_api.close()
        if self._pods_api is not None:  # issue 12: fail-open recovery
            self._pods_api.close()


class RuntimeOptions(TypedDict, total=False):
    """The optional parts of a runtime, as the builders pass them on to :class:`KubeRuntime` untouched.

    Declared once so that an option added to the runtime (the ledger, fail-open recovery
    came that way) reaches every builder without being written into each signature again;
    the defaults are :class:`KubeRuntime`'s.
    """

    stats: Stats | None
    elect: bool
    ledger: LedgerStore | None
    recovery: RecoverySettings | None


def build_kube_runtime(*, settings: KubeSettings, policy: PolicyFn, **options: Unpack[RuntimeOptions]) -> KubeRuntime:
    """The runtime for ``serve``: ``settings.kubeconfig`` if given, else the in-cluster service account."""
    configuration = load_configuration(kubeconfig=settings.kubeconfig)
    return build_runtime_from_configuration(configuration=configuration, policy=policy, settings=settings, **options)


def build_runtime_from_configuration(
    *, configuration: Any, policy: PolicyFn, settings: KubeSettings, **options: Unpack[RuntimeOptions]
) -> KubeRuntime:
    """The runtime on an explicit client ``Configuration`` (tests point it at an emulator)."""
    # Two clients, two connection pools: the watches hold their connections for minutes and
    # must never starve (or be starved by) the short calls of the admission path.
    api = KubeApi(build_api_client(configuration=copy.deepcopy(configuration), pool_size=settings.workers))
    watch_api = KubeApi(build_api_client(configuration=copy.deepcopy(configuration), pool_size=64))
    pods = None
    recovery = options.get("recovery")
    if recovery is not None and recovery.enabled:  # issue 12: fail-open recovery, its own small pool
        from webhook.kube.pods import PodApi

        pods = PodApi(build_api_client(configuration=copy.deepcopy(configuration), pool_size=2))
    return KubeRuntime(api=api, watch_api=watch_api, policy=policy, settings=settings, pods=pods, **options)
