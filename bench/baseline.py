"""The bare ASGI + orjson baseline the real server is compared with.

It does the least any webhook must do: read the whole body, decode it with orjson, and
answer an AdmissionReview (``allowed: true`` with the request's uid, no patch). It is served
exactly like ``pullsecret-injector serve`` serves: one process, uvloop, httptools, the same
:class:`~webhook.tls.context.ReloadingSSLContext`, no access log, no proxy-headers middleware,
lifespan off, the same keep-alive.
So the ratio of the two throughputs is what the webhook's own work costs on top of HTTP+TLS.

With ``--patch-secret NAME`` it answers with the JSON patch that adds ``NAME`` to the
Pod's ``imagePullSecrets`` instead (the answer ours gives in the common case, without any
of the work): :mod:`bench.apiserver` uses it to tell what applying a patch costs the API
server from what our webhook's work costs.

Run: ``python -m bench.baseline --port 8443 --tls-cert tls.crt --tls-key tls.key``.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from webhook.tls.context import ReloadingSSLContext, install_into_uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]


def make_app(patch_secret: str | None = None) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The bare app; with ``patch_secret``, one that also adds that pull secret to every Pod."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        """POST anything: decode the body, answer a fixed allowed AdmissionReview; GET: ``ok``."""
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
            await send({"type": "http.response.body", "body": b"ok\n"})
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        review = orjson.loads(b"".join(chunks))
        response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
        if patch_secret is not None:
            spec = (review["request"].get("object") or {}).get("spec") or {}
            ref: dict[str, Any] = {"name": patch_secret}
            if spec.get("imagePullSecrets"):
                ops: list[dict[str, Any]] = [{"op": "add", "path": "/spec/imagePullSecrets/-", "value": ref}]
            else:
                ops = [{"op": "add", "path": "/spec/imagePullSecrets", "value": [ref]}]
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(orjson.dumps(ops)).decode()
        answer = orjson.dumps({"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(answer)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


baseline_app = make_app()


def make_server(host: str, port: int, tls_cert: Path, tls_key: Path, patch_secret: str | None = None) -> uvicorn.Server:
    """uvicorn configured as :func:`webhook.server.serve` configures it."""
    config = uvicorn.Config(
        make_app(patch_secret),
        host=host,
        port=port,
        loop="none",
        http="httptools",
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        server_header=False,
        proxy_headers=False,
    )
    install_into_uvicorn(config, ReloadingSSLContext(tls_cert, tls_key))
    return uvicorn.Server(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", type=Path, required=True)
    parser.add_argument("--tls-key", type=Path, required=True)
    parser.add_argument("--patch-secret", help="answer with a patch adding this imagePullSecret")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(make_server(args.host, args.port, args.tls_cert, args.tls_key, args.patch_secret).serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
