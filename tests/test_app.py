"""The HTTP transport: in-process through ASGI, and over a real TLS socket on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest

from tests.builders import golden_review
from tests.servers import serve_in_thread
from webhook.admission.handler import EnsureResult, Handler
from webhook.admission.wire import AdmissionReview
from webhook.app import Readiness, create_app
from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.policy.model import Rule

POLICY = load_policy("rules: [{name: hub, registries: [docker.io], secret: hub-pull}]")
GOLDEN_CASE = "pod-without-annotations"


def _review() -> AdmissionReview:
    return golden_review(GOLDEN_CASE)


def _handler(policy: CompiledPolicy = POLICY) -> Handler:
    return Handler(policy=lambda: policy)


@pytest.fixture
def client() -> httpx.AsyncClient:
    readiness = Readiness()
    readiness.started = True
    app = create_app(handler=_handler(), readiness=readiness, max_body_bytes=64 * 1024)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webhook")


async def test_mutate_answers_with_a_patch_that_applies(client: httpx.AsyncClient) -> None:
    review = _review()
    response = await client.post("/mutate", json=review)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["response"]["uid"] == review["request"]["uid"]
    patch = json.loads(base64.b64decode(body["response"]["patch"]))
    pod = jsonpatch.apply_patch(review["request"]["object"], patch)
    assert pod["spec"]["imagePullSecrets"] == [{"name": "hub-pull"}]


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"content": b"[]", "headers": {"content-type": "application/json"}}, 400, "not a JSON object"),
        ({"json": {"apiVersion": "v1", "kind": "AdmissionReview", "request": {"uid": "u"}}}, 400, "apiVersion"),
        ({"json": {"apiVersion": "admission.k8s.io/v1", "kind": "Pod", "request": {"uid": "u"}}}, 400, "kind"),
        ({"json": {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}}, 400, "request is missing"),
        ({"json": {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}}, 400, "uid"),
        ({"content": b"{}", "headers": {"content-type": "text/plain"}}, 415, "application/json"),
        ({"content": b"{}"}, 415, "application/json"),
        ({"content": b"x" * (64 * 1024 + 1), "headers": {"content-type": "application/json"}}, 413, "larger than"),
    ],
    ids=[
        "bad-json",
        "not-object",
        "bad-version",
        "bad-kind",
        "no-request",
        "no-uid",
        "text-plain",
        "no-type",
        "too-large",
    ],
)
async def test_bad_requests_get_a_clear_4xx(
    client: httpx.AsyncClient, kwargs: dict[str, Any], status: int, reason: str
) -> None:
    response = await client.post("/mutate", **kwargs)
    assert response.status_code == status
    assert reason in response.text
    assert "\n" not in response.text.strip()  # one line


async def test_content_type_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/mutate", content=json.dumps(_review()).encode(), headers={"content-type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 200


async def test_get_on_mutate_is_405(client: httpx.AsyncClient) -> None:
    response = await client.get("/mutate")
    assert response.status_code == 405


async def test_health_and_readiness() -> None:
    readiness = Readiness()
    app = create_app(handler=_handler(), readiness=readiness)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 503
        readiness.started = True
        assert (await c.get("/readyz")).status_code == 200
        readiness.stopping = True
        assert (await c.get("/readyz")).status_code == 503
        assert (await c.get("/healthz")).status_code == 200


@pytest.mark.parametrize("stopping", [False, True], ids=["serving", "draining"])
async def test_every_answer_closes_the_connection_once_draining(stopping: bool) -> None:
    """From SIGTERM on (readiness stopping), reviews, refusals and health answers all say ``Connection: close``."""
    readiness = Readiness()
    readiness.started = True
    readiness.stopping = stopping
    app = create_app(handler=_handler(), readiness=readiness)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as c:
        answers = [
            await c.post("/mutate", json=_review()),
            await c.post("/mutate", content=b"{", headers={"content-type": "application/json"}),
            await c.get("/healthz"),
        ]
    assert [r.status_code for r in answers] == [200, 400, 200]
    assert [r.headers.get("connection") for r in answers] == (["close"] * 3 if stopping else [None] * 3)


async def test_handler_bug_fails_open_with_the_uid() -> None:
    def broken() -> CompiledPolicy:
        raise RuntimeError("boom")

    readiness = Readiness()
    readiness.started = True
    app = create_app(handler=Handler(policy=broken), readiness=readiness)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as c:
        review = _review()
        response = await c.post("/mutate", json=review)
    assert response.status_code == 200
    body = response.json()["response"]
    assert body == {"uid": review["request"]["uid"], "allowed": True, "warnings": [body["warnings"][0]]}
    assert "internal error" in body["warnings"][0]


class _Ensurer:
    """Records each ensure; ``mode``: ``"ok"``, ``"slow"`` (overruns the deadline) or ``"broken"``."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls: list[tuple[str, list[str]]] = []

    async def ensure(self, *, namespace: str, secrets: Mapping[str, Rule], dry_run: bool) -> EnsureResult:
        self.calls.append((namespace, sorted(secrets)))
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "broken":
            raise RuntimeError("boom")
        return EnsureResult()


async def test_a_remembered_answer_with_secrets_to_ensure_is_ensured_every_time() -> None:
    """The second Pod of a template is answered from the body's view, and its Secret is still ensured."""
    managed = load_policy(
        "rules: [{name: hub, registries: [docker.io], secret: hub-pull, source: {secret: {namespace: ops, name: hub}}}]"
    )
    ensurer = _Ensurer()
    readiness = Readiness()
    readiness.started = True
    handler = Handler(policy=lambda: managed, ensurer=ensurer)
    app = create_app(handler=handler, readiness=readiness, admission_timeout=0.5)
    answers = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as c:
        for uid, mode in [("first", "ok"), ("second", "ok"), ("slow", "slow"), ("broken", "broken")]:
            review = _review()
            review["request"]["uid"] = uid
            ensurer.mode = mode
            response = await c.post("/mutate", json=review)
            assert response.status_code == 200
            answers.append(response.json()["response"])
    assert len(handler.answers) == 1  # one template: every review after the first is answered from the view
    assert ensurer.calls == [(review["request"]["namespace"], ["hub-pull"])] * 4
    assert [a["uid"] for a in answers] == ["first", "second", "slow", "broken"]
    assert answers[1]["patch"] == answers[0]["patch"]
    # Overrunning the deadline, or failing, on the remembered path fails open like the complete path.
    for answer, reason in [(answers[2], "timed out"), (answers[3], "internal error")]:
        assert "patch" not in answer
        assert answer["allowed"] is True
        assert reason in answer["warnings"][0]


def test_real_tls_socket_on_loopback(tmp_path: Path) -> None:
    """The server speaks TLS with our certificate; a client that trusts our CA gets a patch."""
    with serve_in_thread(_handler(), tmp_path) as running:
        context = ssl.create_default_context(cafile=str(running.ca_file))
        with httpx.Client(verify=context, base_url=running.url) as c:
            review = _review()
            response = c.post("/mutate", json=review)
            assert response.status_code == 200
            assert response.json()["response"]["patchType"] == "JSONPatch"
            assert c.get("/healthz").text == "ok"
        # A client that does not trust our CA is refused during the handshake.
        with httpx.Client(verify=True, base_url=running.url) as untrusting, pytest.raises(httpx.ConnectError):
            untrusting.get("/healthz")
        # v1beta1 over the wire too.
        with httpx.Client(verify=context, base_url=running.url) as c:
            beta = _review()
            beta["apiVersion"] = "admission.k8s.io/v1beta1"
            assert c.post("/mutate", json=beta).json()["apiVersion"] == "admission.k8s.io/v1beta1"
