"""The HTTP transport: a thin ASGI layer in front of :class:`webhook.admission.handler.Handler`.

``POST /mutate`` is the hot path of every Pod creation in the cluster, so it is served by
a small ASGI endpoint that checks size and content type, decodes the review's view (the
fields the hot path reads, ``webhook/admission/view.py``) and, only when the answer is
not a remembered one, the whole review with orjson, and encodes the answer with orjson;
everything else (``/healthz``, ``/readyz``) is a FastAPI app.
The transport never decides anything about a Pod: a malformed review is a 400 (the
client's bug), and whatever the handler does, the server answers.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, MutableMapping
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from webhook.admission.handler import Handler, Remembered
from webhook.admission.view import ReviewView, decode_view
from webhook.admission.wire import (
    AdmissionReview,
    AdmissionReviewResponse,
    ReviewError,
    build_response,
    identity,
    parse_review,
)
from webhook.config import ServerSettings
from webhook.drain import CloseWhenDraining

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

#: The keyword defaults below are the settings' own (``webhook.config``): written there once.
_DEFAULTS = ServerSettings()
MUTATE_PATH = "/mutate"


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def within(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    """``async with asyncio.timeout(seconds): return await coro``, arming the timer only if needed.

    Reading a body uvicorn already holds and answering a review that needs no API call both
    complete without ever yielding to the event loop, and a timer for them is pure overhead
    (two per request: about 20 us, a twentieth of a whole request over TLS). So ``coro`` first
    runs up to its first suspension; only if it suspends does the rest run under
    ``asyncio.timeout_at`` with the deadline counted from this call, as before.
    """
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        pending = coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    async with asyncio.timeout_at(deadline):
        return await _resume(coro, pending)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], pending: Any) -> Generator[Any, Any, T]:
    """Continue ``coro`` after its first suspension exactly as ``await coro`` would (``yield from``)."""
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # cancellation (or anything thrown in) goes to the coroutine
            try:
                pending = coro.throw(exc)
            except StopIteration as done:
                result: T = done.value
                return result
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as done:
                result = done.value
                return result


class Readiness:
    """Ready once a policy is loaded, and not ready again as soon as shutdown begins."""

    def __init__(self) -> None:
        self.started = False
        self.stopping = False

    @property
    def ready(self) -> bool:
        return self.started and not self.stopping


class MutateEndpoint:
    """ASGI app for ``POST /mutate`` wrapped around the rest of the application."""

    def __init__(
        self,
        *,
        handler: Handler,
        fallback: ASGIApp,
        max_body_bytes: int = _DEFAULTS.max_body_bytes,
        admission_timeout: float = _DEFAULTS.admission_timeout,
        read_timeout: float = _DEFAULTS.read_timeout,
        on_transport_error: Callable[[int], None] | None = None,
        on_internal_error: Callable[[str], None] | None = None,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self._handler = handler
        self._draining = draining
        self._fallback = fallback
        self._max = max_body_bytes
        self._admission_timeout = admission_timeout
        self._read_timeout = read_timeout
        self._on_error = on_transport_error
        self._on_internal_error = on_internal_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != MUTATE_PATH:
            await self._fallback(scope, receive, send)
            return
        if scope["method"] != "POST":
            await self._plain(send, 405, "use POST", extra=[(b"allow", b"POST")])
            return
        content_type = b""
        content_length: int | None = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    await self._plain(send, 400, "invalid Content-Length")
                    return
        if content_type != b"application/json" and (
            content_type.split(b";", 1)[0].strip().lower() != b"application/json"
        ):
            await self._plain(send, 415, "Content-Type must be application/json")
            return
        if content_length is not None and content_length > self._max:
            await self._plain(send, 413, f"body larger than {self._max} bytes")
            return
        try:
            body = await within(self._read_body(receive), self._read_timeout)
        except _TooLarge:
            await self._plain(send, 413, f"body larger than {self._max} bytes")
            return
        except _Disconnected:
            return
        except TimeoutError:
            await self._plain(send, 408, f"body not received within {self._read_timeout:g}s")
            return
        # Most reviews are answered from the view of the few fields they need (no full decode,
        # no coroutine, no deadline); the others are decoded whole and awaited under the
        # admission deadline.
        view = decode_view(body)
        now = None if view is None else self._answer_now(view)
        if isinstance(now, bytes):
            answer = now
        elif now is not None:
            answer = await self._answer(now.review, self._handler.finish(now))  # Secrets to ensure first
        else:
            try:
                review = parse_review(body)
            except ReviewError as exc:
                await self._plain(send, 400, str(exc))
                return
            answer = await self._answer(review, self._handler.handle(review))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        if self._draining():
            # Shutting down: the client must not send the next review on this connection (webhook/drain.py).
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def _answer(
        self, review: AdmissionReview | ReviewView, answering: Coroutine[Any, Any, AdmissionReviewResponse]
    ) -> bytes:
        """The handler's answer to ``review`` (``answering``), or an ``allowed`` one if it fails or overruns.

        The handler keeps its own budget for API calls; this deadline is the backstop that
        keeps every answer well inside the API server's ``timeoutSeconds`` whatever happens.
        """
        try:
            return orjson.dumps(await within(answering, self._admission_timeout))
        except TimeoutError:
            log.warning(
                "admission overran %.1fs; allowing the Pod unchanged",
                self._admission_timeout,
                extra={"uid": identity(review)[1]},
            )
            return self._allowed_unchanged(review, "timeout", "pullsecret-injector: timed out, nothing injected")
        except Exception:
            return self._handler_failed(review)

    def _answer_now(self, view: ReviewView) -> bytes | Remembered | None:
        """The handler's remembered answer (:meth:`Handler.answer_now`), encoded; else what it said.

        A failure here is not answered: the complete path, which has the whole review, does that.
        """
        try:
            now = self._handler.answer_now(view)
        except Exception:
            log.exception("admission fast path failed; answering from the whole review")
            return None
        return now if now is None or isinstance(now, Remembered) else orjson.dumps(now)

    def _handler_failed(self, review: AdmissionReview | ReviewView) -> bytes:
        # Fail open with the uid we have: a bug here must never stop Pods cluster-wide.
        # The traceback names code, not data (the handler never puts secrets in exceptions).
        log.exception("admission handler failed; allowing the Pod unchanged", extra={"uid": identity(review)[1]})
        return self._allowed_unchanged(review, "exception", "pullsecret-injector: internal error, nothing injected")

    def _allowed_unchanged(self, review: AdmissionReview | ReviewView, reason: str, warning: str) -> bytes:
        if self._on_internal_error is not None:
            self._on_internal_error(reason)
        return orjson.dumps(build_response(review=review, warnings=[warning]))

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._max:
                raise _TooLarge
            if not message.get("more_body", False):
                # The whole body in one message (what uvicorn hands over for every review): no join.
                return chunk if not chunks else b"".join([*chunks, chunk])
            chunks.append(chunk)

    async def _plain(self, send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        if self._on_error is not None:
            self._on_error(status)
        body = (text + "\n").encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        if status == 413 or self._draining():
            # The rest of an oversized body is not read, or the server is shutting down:
            # tell the client not to reuse the connection.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
        await send({"type": "http.response.body", "body": body})


def create_app(
    *,
    handler: Handler,
    readiness: Readiness,
    max_body_bytes: int = _DEFAULTS.max_body_bytes,
    admission_timeout: float = _DEFAULTS.admission_timeout,
    read_timeout: float = _DEFAULTS.read_timeout,
    on_transport_error: Callable[[int], None] | None = None,
    on_internal_error: Callable[[str], None] | None = None,
) -> ASGIApp:
    """The full application: the mutate endpoint in front of a FastAPI app for health.

    From the moment ``readiness`` is stopping, every answer carries ``Connection: close``
    (webhook/drain.py says why): the endpoint adds it itself, which on the hot path is
    cheaper than one more ASGI layer, and the health app is wrapped.
    """
    api = FastAPI(title="pullsecret-injector", docs_url=None, redoc_url=None, openapi_url=None)

    @api.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @api.get("/readyz", response_class=PlainTextResponse)
    async def readyz() -> PlainTextResponse:
        if readiness.ready:
            return PlainTextResponse("ok")
        return PlainTextResponse("not ready", status_code=503)

    def draining() -> bool:
        return readiness.stopping

    return MutateEndpoint(
        handler=handler,
        fallback=CloseWhenDraining(api, draining=draining),
        draining=draining,
        max_body_bytes=max_body_bytes,
        admission_timeout=admission_timeout,
        read_timeout=read_timeout,
        on_transport_error=on_transport_error,
        on_internal_error=on_internal_error,
    )
