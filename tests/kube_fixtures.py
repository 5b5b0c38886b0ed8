"""A Kubernetes API on loopback for tests: kmock's emulator, taught three things it lacks.

The code under test talks to it with the real ``kubernetes`` client over HTTP; nothing of
the client or of our code is patched. What this module adds to kmock 0.8, and why:

* **Namespaces.** kmock parses ``/api/v1/namespaces[/<name>]`` as the namespace prefix of
  a namespaced path (listing namespaces is even a 500), so the Namespace resource itself
  cannot be served. Requests for exactly those paths are rewritten to a stand-in plural
  (``x-namespaces``) before kmock sees them; the objects and watch events are unchanged.
* **Field selectors.** kmock ignores ``fieldSelector``. Our watches select Secrets by
  ``metadata.name`` (what RBAC ``resourceNames`` can authorize), so the emulator honours
  that one selector by setting the request's name (``object.__setattr__``: kmock matches
  reactions by request identity, so the request must stay the same object), and refuses
  any other selector with a 400 so a test would notice; except ``status.phase`` on a list
  (fail-open recovery lists the Pending Pods so), which is served by filtering the items.
* **Paginated lists.** kmock ignores ``limit`` and ``continue`` and answers every list in
  one piece, so our paged lists would never see a second page. A list with ``limit`` is
  served a page at a time here, with a ``metadata.continue`` token (the offset) while more
  remain; ``expire_continues`` makes that many of the next continued lists a 410 Expired,
  as a real API server answers once the token's snapshot is compacted away.
* **Faults.** :class:`Fault` delays and/or fails matching requests *before* kmock stores
  anything (kmock's own reactions run after its bookkeeping, so a "500" there would
  still create the object, unlike a failing API server). A delay ends early when the
  fixture releases the faults at teardown (:meth:`Apiserver.release_faults`), so an API
  that hangs "forever" (a delay no test waits out) does not hold up the shutdown below.

Other differences worth knowing: kmock has no resourceVersion, uid or generateName; a
create answers 200, not 201; PUT is not supported (we only patch); patches are recursive
merges (``null`` deletes a key, as in a strategic-merge patch of a map); watches replay
every existing object as ADDED and ignore ``resourceVersion`` and ``timeoutSeconds``;
listing a resource it has never stored an object of is a 404 (the ``apiserver`` fixture
declares the resources we use); kmock's own reactions run *after* it has stored a write.
Its aiohttp test server waits up to 60 s at shutdown for any connection still open, so
a client that leaves a watch connection open (or pooled) shows up as a slow teardown.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import kmock
from kubernetes import client as k8s

from tests.builders import b64
from tests.processes import free_port
from webhook.kube.client import USER_AGENT

NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(/[^/]+)?")
NAMESPACES = kmock.resource("", "v1", "x-namespaces")
SECRETS = kmock.resource("", "v1", "secrets")
EVENTS = kmock.resource("", "v1", "events")
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")


@dataclass
class Fault:
    """Make matching requests slow and/or fail, as a struggling API server would."""

    method: str | None = None  # "GET", "POST", ...; None: any
    path: str = ".*"  # a regex on the URL path
    delay: float = 0.0
    status: int | None = None  # answer this status instead of serving the request
    times: int | None = None  # None: until removed
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return (self.method is None or self.method == method) and re.fullmatch(self.path, path) is not None


@attrs.define(kw_only=True)
class Apiserver(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator plus Namespaces, name field selectors and faults."""

    faults: list[Fault] = attrs.field(factory=list)
    #: Set at teardown: every delay still running ends at once (see :meth:`release_faults`).
    released: asyncio.Event = attrs.field(factory=asyncio.Event)
    #: Answer this many of the next lists carrying a ``continue`` token with 410 Expired.
    expire_continues: int = 0
    #: Lists served with a ``limit`` (pages), and how many of them carried a ``continue`` token.
    pages_served: int = 0
    continued_pages: int = 0

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = NAMESPACE_PATH.fullmatch(raw_request.path)
        if match:
            url = raw_request.rel_url
            stand_in = url.with_path("/api/v1/x-namespaces" + (match.group(1) or "")).with_query(url.query)
            raw_request = raw_request.clone(rel_url=stand_in)
        response: aiohttp.web.StreamResponse = await super().__call__(raw_request)
        return response

    def release_faults(self) -> None:
        """End every fault's delay now (and those to come): the test is over, nobody waits for them."""
        self.released.set()

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        path, method = request.url.path, str(request.method.value).upper()
        for fault in self.faults:
            if fault.matches(method, path):
                fault.hits += 1
                if fault.delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.released.wait(), fault.delay)
                if fault.status is not None:
                    raise kmock.KubernetesError(status=fault.status, reason="Injected", message="injected fault")
                break
        selector = request.params.get("fieldSelector")
        if selector and request.action in (kmock.action.LIST, kmock.action.WATCH):
            key, _, value = selector.partition("=")
            if key == "metadata.name" and "," not in value:
                object.__setattr__(request, "name", value)
            elif key != "status.phase" or "," in value or request.action != kmock.action.LIST:
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="unsupported field selector")
        response: aiohttp.web.StreamResponse = await super()._handle(request)
        return response

    async def _serve_list(self, request: Any) -> Any:
        listing: dict[str, Any] = await super()._serve_list(request)  # type: ignore[assignment]
        key, _, phase = str(request.params.get("fieldSelector") or "").partition("=")
        if key == "status.phase":
            listing["items"] = [item for item in listing["items"] if (item.get("status") or {}).get("phase") == phase]
        limit, token = request.params.get("limit"), request.params.get("continue")
        if not limit and not token:
            return listing
        offset = 0
        if token:
            if self.expire_continues > 0:
                self.expire_continues -= 1
                raise kmock.KubernetesError(status=410, reason="Expired", message="continue token expired")
            offset = int(token)
            self.continued_pages += 1
        self.pages_served += 1
        items = listing["items"][offset:]
        metadata = dict(listing.get("metadata") or {})
        if limit and len(items) > int(limit):
            items = items[: int(limit)]
            metadata["continue"] = str(offset + int(limit))
        return {**listing, "metadata": metadata, "items": items}

    # What the tests look at ------------------------------------------------------

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        key = (SECRETS, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        raw: dict[str, Any] = self.objects[key].raw
        return raw

    def secrets_named(self, name: str) -> dict[str, dict[str, Any]]:
        """Live Secrets called ``name``, by namespace."""
        found: dict[str, dict[str, Any]] = {}
        for (resource, namespace, obj_name), obj in list(self.objects.items()):
            if resource == SECRETS and obj_name == name and namespace and not obj.deleted:
                found[namespace] = obj.raw
        return found

    def events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Events posted so far (kmock keeps them under a ``None`` name: no generateName)."""
        return [
            request.data
            for request in self
            if request.resource == EVENTS
            and request.action == kmock.action.CREATE
            and (namespace is None or request.namespace == namespace)
        ]

    def ours(self) -> list[Any]:
        """Requests made by the code under test (the test arranges the cluster with kmock's own client)."""
        return [request for request in self if request.headers.get("User-Agent", "").startswith(USER_AGENT)]

    def writes(self, resource: Any = SECRETS) -> list[Any]:
        """Create, update and delete requests of the code under test for ``resource``."""
        actions = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)
        return [request for request in self.ours() if request.resource == resource and request.action in actions]

    def request_count(self) -> int:
        return len(self.ours())


def decoded(secret: Mapping[str, Any], key: str = ".dockerconfigjson") -> bytes:
    return base64.b64decode(secret["data"][key])


class Cluster:
    """Arranging the cluster's state over HTTP (so watches see it), as users and GitOps would."""

    def __init__(self, apiserver: Apiserver) -> None:
        self.api = apiserver

    async def _send(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with self.api.request(method, path, json=body) as response:
            data: dict[str, Any] = await response.json()
            if response.status >= 400:
                raise AssertionError(f"{method} {path}: {response.status} {data.get('message')}")
            return data

    async def namespace(self, name: str, **labels: str) -> None:
        await self._send("POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}})

    async def label_namespace(self, name: str, **labels: str | None) -> None:
        await self._send("PATCH", f"/api/v1/namespaces/{name}", {"metadata": {"labels": labels}})

    async def delete_namespace(self, name: str) -> None:
        await self._send("DELETE", f"/api/v1/namespaces/{name}")

    async def secret(
        self,
        namespace: str,
        name: str,
        data: Mapping[str, str | bytes],
        *,
        type: str = "kubernetes.io/dockerconfigjson",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(labels or {}),
                "annotations": dict(annotations or {}),
            },
            "type": type,
            "data": {key: b64(value) for key, value in data.items()},
        }
        await self._send("POST", f"/api/v1/namespaces/{namespace}/secrets", body)

    async def update_secret(self, namespace: str, name: str, data: Mapping[str, str | bytes]) -> None:
        patch = {"data": {key: b64(value) for key, value in data.items()}}
        await self._send("PATCH", f"/api/v1/namespaces/{namespace}/secrets/{name}", patch)

    async def delete_secret(self, namespace: str, name: str) -> None:
        await self._send("DELETE", f"/api/v1/namespaces/{namespace}/secrets/{name}")


def client_configuration(host: str) -> k8s.Configuration:
    configuration = k8s.Configuration()
    configuration.host = host
    return configuration


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    return free_port()
