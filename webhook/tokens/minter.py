"""One minter per distinct token source, shared by every namespace and copy that uses it.

A thousand namespaces pulling from one registry need one token, not a thousand: the
:class:`TokenMinters` registry keys minters by the canonical source, and every copy is
built from the minter's current token.

A minter is lazy (nothing is minted for a source no copy has asked for) and then keeps its
token fresh on its own schedule (:mod:`.schedule`): at about half the remaining lifetime.
Each new token calls ``on_refresh`` (the reconciler's ``notify``), so the copies are patched
in place well before the old token expires. A failed mint keeps the last good token,
which the copies keep holding until it expires, retries with backoff, and reports
(``on_failure``: a Warning Event; metrics; a log line without secrets).

Minting at admission (:meth:`TokenMinters.source_object`) shares the mint in flight and
waits only as long as the caller's budget: past it the caller admits with a warning and
the mint finishes anyway, for the reconciler to pick up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from webhook.policy.model import SecretKeyRef, TokenSource
from webhook.secrets.dockerconfig import credentials_auths, dockerconfigjson_secret, encode_config
from webhook.tokens import schedule as sched
from webhook.tokens.base import Provider, Token
from webhook.tokens.errors import MintError, MintTimeout, TokenError
from webhook.tokens.metrics import TokenMetrics
from webhook.tokens.providers import build_provider, describe, source_key
from webhook.waits import wait_for

log = logging.getLogger(__name__)

MINTED_AT_ANNOTATION = "pullsecret-injector.io/minted-at"
EXPIRES_AT_ANNOTATION = "pullsecret-injector.io/expires-at"
#: Hard bound of one mint in the background (each SDK call has its own, shorter, timeout).
MINT_TIMEOUT = 60.0

KubeObject = dict[str, Any]
ReadValue = Callable[[SecretKeyRef], Awaitable[str]]
OnFailure = Callable[[TokenSource, TokenError, Token | None], None]


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_watch_target(source: TokenSource) -> tuple[str, str] | None:
    """The Secret a token source reads (``gcp.credentialsFrom``), to be watched; ``None`` for none."""
    ref = source.gcp.credentials_from if source.gcp is not None else None
    return None if ref is None else (ref.namespace, ref.name)


def token_hosts(source: TokenSource, token: Token) -> list[str]:
    """The ``auths`` keys of the copy: the registry (or the provider's) and each ``alsoFor`` host."""
    primary = source.registry or token.registry
    if primary is None:
        raise MintError(f"{describe(source)}: the provider named no registry and the policy sets none")
    return list(dict.fromkeys([primary, *source.also_for]))


def token_object(source: TokenSource, token: Token) -> KubeObject:
    """The minted credential as a ``kubernetes.io/dockerconfigjson`` Secret, as a source Secret looks.

    The copy is then built from it exactly as from a copied source (least-privilege filter,
    kubectl-exact encoding), and its annotations carry ``minted-at`` / ``expires-at``.
    """
    auths = {}
    for host in token_hosts(source, token):
        auths.update(credentials_auths(registry=host, username=token.username, password=token.password))
    metadata = {
        "name": f"token-{source.provider}",
        "annotations": {
            MINTED_AT_ANNOTATION: rfc3339(token.minted_at),
            EXPIRES_AT_ANNOTATION: rfc3339(token.expires_at),
        },
    }
    return dockerconfigjson_secret(metadata, encode_config(auths))


def _parse_rfc3339(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def holds_newer_token(existing: Mapping[str, Any], desired_annotations: Mapping[str, str], now: float) -> bool:
    """Whether a copy holds a token minted no earlier than ours that is still valid.

    Every replica mints its own token for admissions; without this rule a replica whose
    token differs from the one the leader wrote would rewrite the copy on each admission,
    and the leader would rewrite it back. The newest valid token wins, and nobody writes.
    Only the token annotations are read here; the caller checks everything else.
    """
    annotations = (existing.get("metadata") or {}).get("annotations") or {}
    theirs = _parse_rfc3339(annotations.get(MINTED_AT_ANNOTATION))
    expires = _parse_rfc3339(annotations.get(EXPIRES_AT_ANNOTATION))
    ours = _parse_rfc3339(desired_annotations.get(MINTED_AT_ANNOTATION))
    if theirs is None or expires is None or ours is None:
        return False
    return theirs >= ours and expires > now + sched.FLOOR


class TokenMinter:
    """The token of one source: the last good one, the mint in flight, the refresh loop."""

    def __init__(
        self,
        *,
        source: TokenSource,
        read_value: ReadValue | None,
        on_refresh: Callable[[], None],
        on_failure: OnFailure,
        metrics: Callable[[], TokenMetrics | None],
        schedule: sched.Schedule = sched.DEFAULT,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.source = source
        self._read_value = read_value
        self._on_refresh = on_refresh
        self._on_failure = on_failure
        self._metrics = metrics
        self._schedule = schedule
        self._clock = clock
        self._draw = draw
        self.token: Token | None = None
        self.last_error: TokenError | None = None
        self.failures = 0
        self.mints = 0
        self._provider: Provider | None = None
        self._provider_input: str | None = None
        self._inflight: asyncio.Task[Token] | None = None
        self._changed = asyncio.Event()
        self._next_retry: float | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def provider(self) -> str:
        return self.source.provider

    def valid(self) -> Token | None:
        """The last good token while it has not expired.

        A token answered already expired (moto's fixed 2015 ``expiresAt``, a plugin's
        ``cacheDuration: "0"``) counts as valid for the schedule's floor after its mint:
        otherwise every admission would mint again, the spin the floor exists to prevent.
        """
        token = self.token
        if token is None:
            return None
        now = self._clock()
        return token if token.expires_at > now or now - token.minted_at < self._schedule.floor else None

    def next_mint_at(self) -> float | None:
        """Wall-clock time of the next scheduled mint (``None``: not minted yet, nothing scheduled)."""
        if self.failures and self._next_retry is not None:
            return self._next_retry
        if self.token is None:
            return None
        return sched.next_refresh(
            now=self.token.minted_at, expires_at=self.token.expires_at, draw=self._jitter, schedule=self._schedule
        )

    _jitter = 0.5

    async def _credentials(self) -> str | None:
        options = self.source.gcp
        ref = options.credentials_from if options is not None else None
        if ref is None:
            return None
        if self._read_value is None:
            raise MintError(f"{describe(self.source)}: credentialsFrom cannot be read (no cluster)")
        return await self._read_value(ref)

    async def _provider_for_mint(self) -> Provider:
        credentials = await self._credentials()
        if self._provider is None or credentials != self._provider_input:
            self._provider = build_provider(self.source, credentials=credentials)
            self._provider_input = credentials
        return self._provider

    async def _mint(self) -> Token:
        """One mint (in a worker thread), its bookkeeping, metrics and reports."""
        started = time.monotonic()
        result = "ok"
        try:
            provider = await self._provider_for_mint()
            token = await wait_for(asyncio.to_thread(provider.mint), timeout=MINT_TIMEOUT)
        except TimeoutError:
            result = "timeout"
            error: TokenError = MintTimeout(f"{describe(self.source)}: not minted within {MINT_TIMEOUT:g}s")
            self._failed(error)
            raise error from None
        except TokenError as exc:
            result = "error"
            self._failed(exc)
            raise
        finally:
            metrics = self._metrics()
            if metrics is not None:
                metrics.minted(self.provider, result, time.monotonic() - started)
        self.token, self.last_error, self.failures, self._next_retry = token, None, 0, None
        self.mints += 1
        self._jitter = self._draw()
        metrics = self._metrics()
        if metrics is not None:
            metrics.expires(self.provider, self.source.registry or token.registry or "", token.expires_at)
        if token.expires_at <= token.minted_at:
            log.warning("%s: the provider answered a token that is already expired", describe(self.source))
        else:
            log.info(
                "%s: minted, expires at %s (in %.0fs)",
                describe(self.source),
                rfc3339(token.expires_at),
                token.expires_at - token.minted_at,
            )
        self._changed.set()
        self._on_refresh()
        return token

    def _failed(self, error: TokenError) -> None:
        self.failures += 1
        self.last_error = error
        now = self._clock()
        last = self.valid()
        delay = sched.retry_delay(
            failures=self.failures,
            draw=self._draw(),
            now=now,
            expires_at=last.expires_at if last is not None else None,
            schedule=self._schedule,
        )
        self._next_retry = now + delay
        keeping = (
            f"the last good token stays in the copies until {rfc3339(last.expires_at)}"
            if last is not None
            else "no valid token"
        )
        log.warning("%s: mint failed (%s); %s; retrying in %.1fs", describe(self.source), error, keeping, delay)
        self._changed.set()
        self._on_failure(self.source, error, last)

    def mint_shared(self) -> asyncio.Task[Token]:
        """The mint in flight, or a new one: concurrent callers share one provider call."""
        task = self._inflight
        if task is None or task.done():
            task = self._inflight = asyncio.create_task(self._mint())
            task.add_done_callback(_consume_exception)
        return task

    async def ensure(self, timeout: float) -> Token:
        """A valid token, minting (shared, not cancelled by our timeout) if there is none."""
        token = self.valid()
        if token is not None:
            return token
        if (
            self.last_error is not None
            and self._next_retry is not None
            and self._clock() < self._next_retry
            and (self._inflight is None or self._inflight.done())
        ):
            # In backoff after a failure: every copy asking (a reconcile pass over 1,000 of them)
            # must not turn into a mint each; the refresh loop retries on schedule.
            raise self.last_error
        task = self.mint_shared()
        try:
            return await wait_for(asyncio.shield(task), timeout=max(0.0, timeout))
        except TimeoutError:
            raise MintTimeout(
                f"{describe(self.source)} not minted within {timeout:.1f}s; finishing in the background"
            ) from None

    async def run(self) -> None:
        """Refresh forever: sleep until the scheduled time (or a change), mint, repeat."""
        while True:
            at = self.next_mint_at()
            self._changed.clear()
            timeout = None if at is None else max(0.0, at - self._clock())
            if timeout is None or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await wait_for(self._changed.wait(), timeout=timeout)
                    continue  # state changed: compute the next time again
            with contextlib.suppress(TokenError):
                await self.mint_shared()


def _consume_exception(task: asyncio.Task[Token]) -> None:
    if not task.cancelled():
        task.exception()


class TokenMinters:
    """The minters of every token source in use, keyed by :func:`source_key`."""

    def __init__(
        self,
        *,
        read_value: ReadValue | None = None,
        on_refresh: Callable[[], None] = lambda: None,
        on_failure: OnFailure | None = None,
        metrics: TokenMetrics | None = None,
        schedule: sched.Schedule = sched.DEFAULT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._read_value = read_value
        self._on_refresh = on_refresh
        self._on_failure = on_failure or (lambda source, error, last: None)
        self.metrics = metrics
        self._schedule = schedule
        self._clock = clock
        self.minters: dict[str, TokenMinter] = {}
        self._objects: dict[tuple[str, int], KubeObject] = {}
        self._running = False

    def minter(self, source: TokenSource) -> TokenMinter:
        key = source_key(source)
        found = self.minters.get(key)
        if found is None:
            found = self.minters[key] = TokenMinter(
                source=source,
                read_value=self._read_value,
                on_refresh=self._on_refresh,
                on_failure=self._on_failure,
                metrics=lambda: self.metrics,
                schedule=self._schedule,
                clock=self._clock,
            )
            if self._running:
                self._start(found)
        return found

    def _start(self, minter: TokenMinter) -> None:
        if minter.task is None or minter.task.done():
            minter.task = asyncio.create_task(minter.run(), name=f"token-minter-{minter.provider}")

    def _object(self, source: TokenSource, token: Token) -> KubeObject:
        """One object per (source, token): the copy memo keys on its identity."""
        key = (source.model_dump_json(by_alias=True), id(token))
        found = self._objects.get(key)
        if found is None:
            if len(self._objects) > 1024:
                self._objects.clear()
            found = self._objects[key] = token_object(source, token)
            found["_token"] = token  # kept alive with the object: ``id(token)`` is never reused meanwhile
        return found

    def cached_object(self, source: TokenSource) -> KubeObject | None:
        """The source object of the current valid token, without minting (the warm admission path)."""
        token = self.minter(source).valid()
        return None if token is None else self._object(source, token)

    async def source_object(self, source: TokenSource, *, timeout: float) -> KubeObject:
        """The source object of a valid token, minting within ``timeout`` if need be.

        Raises :class:`TokenError`: ``MintTimeout`` past the budget (the mint goes on), or
        the provider's error (when the last good token, if any, has expired).
        """
        token = await self.minter(source).ensure(timeout)
        return self._object(source, token)

    def retain(self, sources: Iterable[TokenSource]) -> None:
        """Stop the minters of sources the policy no longer has."""
        keep = {source_key(source) for source in sources}
        for key in list(self.minters):
            if key not in keep:
                minter = self.minters.pop(key)
                if minter.task is not None:
                    minter.task.cancel()

    async def run(self) -> None:
        """Run every minter's refresh loop (new ones start as they are created) until cancelled."""
        self._running = True
        for minter in self.minters.values():
            self._start(minter)
        try:
            await asyncio.Event().wait()
        finally:
            self._running = False
            for minter in self.minters.values():
                if minter.task is not None:
                    minter.task.cancel()
