"""Does a registry have this manifest? One HEAD, with the distribution spec's auth dance.

The mirror ``check`` asks, before rewriting an image to an endpoint, whether the endpoint
would serve it: ``HEAD /v2/<repository>/manifests/<reference>`` answered 200. A rewrite to a
mirror that lacks the image is the ImagePullBackOff that image-rewriting webhooks are known
for; k3s avoids it by falling back per pull, which a rewritten Pod cannot do.

Authentication follows the distribution spec (token auth): a ``401`` with
``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` sends us to the realm for a token
(HTTP Basic with the username and password, or an OAuth2 refresh-token POST for an identity
token), then the HEAD is repeated with ``Authorization: Bearer``; a ``Basic`` challenge is
answered directly. Credentials never appear in a result, a log line or an exception.

It sits on the admission path, so everything is bounded: one overall timeout per probe
(HEAD, token, HEAD), and answers cached per (endpoint, repository, reference) for a short
TTL in a bounded LRU (a definite answer for ``ttl``, an unknown one, such as a timeout, for
``unknown_ttl``, so a hanging registry costs one timeout per TTL and not one per Pod).
Concurrent probes of the same key share one request.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import httpx

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPES: Final = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


class ProbeError(Exception):
    """Base of the probe's own errors (a registry that cannot be asked at all)."""


class AuthChallengeError(ProbeError):
    """A ``WWW-Authenticate`` header we cannot follow."""


class TokenRefused(ProbeError):
    """The token endpoint refused our credentials: the node, with the same ones, would be refused too."""


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """Credentials for one registry, as a ``.dockerconfigjson`` entry holds them (values hidden from repr)."""

    username: str = ""
    password: str = field(default="", repr=False)
    #: An OAuth2 refresh token (Docker's ``identitytoken``): exchanged at the realm for access.
    identity_token: str = field(default="", repr=False)
    #: A bearer token sent as is (Docker's ``registrytoken``).
    registry_token: str = field(default="", repr=False)

    @classmethod
    def from_auth(cls, auth: str) -> RegistryAuth:
        """From the ``auth`` field: base64 of ``username:password``."""
        try:
            username, _, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return cls()
        return cls(username=username, password=password)

    @property
    def basic(self) -> str | None:
        if not self.username and not self.password:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``present``: True (200), False (404, or refused with our credentials), None (unknown)."""

    present: bool | None
    detail: str
    cached: bool = False

    def as_cached(self) -> ProbeResult:
        return ProbeResult(self.present, self.detail, cached=True)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ``("bearer", {"realm": ..., "service": ...})``."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        raise AuthChallengeError("empty WWW-Authenticate header")
    params: dict[str, str] = {}
    for match in _CHALLENGE_PARAM.finditer(rest):
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


Key = tuple[str, str, str, str]


class ManifestProbe:
    """Asks registries for manifests; one instance per process (it holds the HTTP pool and caches)."""

    def __init__(
        self,
        *,
        timeout: float = 1.0,
        ttl: float = 30.0,
        unknown_ttl: float = 5.0,
        max_entries: int = 1024,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.timeout = timeout
        self.ttl = ttl
        self.unknown_ttl = unknown_ttl
        self.max_entries = max_entries
        self._client = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self._cache: OrderedDict[Key, tuple[float, ProbeResult]] = OrderedDict()
        self._tokens: OrderedDict[tuple[str, str, str, str], tuple[float, str]] = OrderedDict()
        self._inflight: dict[Key, asyncio.Task[ProbeResult]] = {}
        #: Requests actually sent (HEADs and token requests), for tests and metrics.
        self.requests = 0

    async def aclose(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self._client.aclose()

    def forget(self) -> None:
        self._cache.clear()
        self._tokens.clear()

    async def has_manifest(
        self, base_url: str, repository: str, reference: str, auth: RegistryAuth | None = None
    ) -> ProbeResult:
        """Whether ``base_url`` (``https://host:port``) serves ``repository`` at ``reference`` (tag or digest).

        Never raises for a registry problem and never takes longer than ``timeout`` (plus
        scheduling): the answer is ``present=None`` with the reason.
        """
        key: Key = (base_url, repository, reference, _auth_identity(auth))
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None:
            expires, result = hit
            if expires > now:
                self._cache.move_to_end(key)
                return result.as_cached()
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._probe(base_url, repository, reference, auth))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return await asyncio.shield(task)

    def _done(self, key: Key, task: asyncio.Task[ProbeResult]) -> None:
        # Cached here, not by the caller: an answer arriving after its admission gave up (the
        # budget) still serves the next Pod.
        self._inflight.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._remember(key, task.result())

    def _remember(self, key: Key, result: ProbeResult) -> None:
        ttl = self.ttl if result.present is not None else self.unknown_ttl
        if ttl <= 0:
            return
        self._cache[key] = (time.monotonic() + ttl, result)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    async def _probe(self, base_url: str, repository: str, reference: str, auth: RegistryAuth | None) -> ProbeResult:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._probe_unbounded(base_url, repository, reference, auth)
        except TimeoutError:
            return ProbeResult(None, f"no answer within {self.timeout:g}s")
        except httpx.HTTPError as exc:
            return ProbeResult(None, "unreachable" if isinstance(exc, httpx.TransportError) else type(exc).__name__)
        except TokenRefused as exc:
            return ProbeResult(False, str(exc))
        except ProbeError as exc:
            return ProbeResult(None, str(exc))

    async def _probe_unbounded(
        self, base_url: str, repository: str, reference: str, auth: RegistryAuth | None
    ) -> ProbeResult:
        url = f"{base_url}/v2/{repository}/manifests/{reference}"
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        scope = f"repository:{repository}:pull"
        token_key = (base_url, scope, _auth_identity(auth), "")
        cached_token = self._token(token_key)
        if auth is not None and auth.registry_token:
            headers["Authorization"] = f"Bearer {auth.registry_token}"
        elif cached_token is not None:
            headers["Authorization"] = f"Bearer {cached_token}"
        response = await self._head(url, headers)
        # Follow the challenge once: when nothing was sent, or only a cached token (maybe expired).
        retry = "Authorization" not in headers or (cached_token is not None and not (auth and auth.registry_token))
        if response.status_code == 401 and retry:
            challenge = response.headers.get("www-authenticate")
            if not challenge:
                return ProbeResult(False, "401 without a WWW-Authenticate challenge")
            scheme, params = parse_challenge(challenge)
            if scheme == "basic":
                basic = auth.basic if auth is not None else None
                if basic is None:
                    return ProbeResult(False, "401: the registry wants credentials and the rules give none")
                headers["Authorization"] = basic
            elif scheme == "bearer":
                token = await self._fetch_token(params, scope, auth)
                self._store_token(token_key, token)
                headers["Authorization"] = f"Bearer {token}"
            else:
                raise AuthChallengeError(f"unsupported auth scheme {scheme!r}")
            response = await self._head(url, headers)
        status = response.status_code
        if status == 200:
            return ProbeResult(True, "present")
        if status == 404:
            return ProbeResult(False, "absent (404)")
        if status in (401, 403):
            return ProbeResult(False, f"refused ({status}) with the credentials the rules give")
        return ProbeResult(None, f"HTTP {status}")

    async def _head(self, url: str, headers: Mapping[str, str]) -> httpx.Response:
        self.requests += 1
        return await self._client.head(url, headers=dict(headers))

    async def _fetch_token(self, params: Mapping[str, str], scope: str, auth: RegistryAuth | None) -> str:
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise AuthChallengeError("Bearer challenge without an http(s) realm")
        service = params.get("service", "")
        self.requests += 1
        if auth is not None and auth.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": auth.identity_token, "scope": scope}
            form.update({"service": service, "client_id": "pullsecret-injector"})
            response = await self._client.post(realm, data=form)
        else:
            query = {"scope": scope, **({"service": service} if service else {})}
            headers = {}
            basic = auth.basic if auth is not None else None
            if basic is not None:
                headers["Authorization"] = basic
            response = await self._client.get(realm, params=query, headers=headers)
        if response.status_code in (401, 403):
            raise TokenRefused(f"token refused ({response.status_code}) for the credentials the rules give")
        if response.status_code != 200:
            raise AuthChallengeError(f"token endpoint answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise AuthChallengeError("token endpoint answered no JSON") from None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthChallengeError("token endpoint answered no token")
        return token

    def _token(self, key: tuple[str, str, str, str]) -> str | None:
        hit = self._tokens.get(key)
        if hit is None or hit[0] <= time.monotonic():
            return None
        return hit[1]

    def _store_token(self, key: tuple[str, str, str, str], token: str) -> None:
        self._tokens[key] = (time.monotonic() + min(self.ttl, 50.0), token)
        while len(self._tokens) > self.max_entries:
            self._tokens.popitem(last=False)


def _auth_identity(auth: RegistryAuth | None) -> str:
    """A cache-key part that separates credentials without holding them (a short digest)."""
    if auth is None:
        return ""
    import hashlib

    material = "\0".join((auth.username, auth.password, auth.identity_token, auth.registry_token))
    return hashlib.sha256(material.encode()).hexdigest()[:16]
