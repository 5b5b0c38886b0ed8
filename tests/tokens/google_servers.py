"""Loopback servers speaking Google's protocols, for google-auth's own code to talk to.

One threaded HTTP server on 127.0.0.1 answers, by path:

* the GCE metadata server: ``GET /`` (google-auth's ping, answered with
  ``Metadata-Flavor: Google``), ``.../service-accounts/default/token`` (``access_token``,
  ``expires_in``), ``.../service-accounts/default/?recursive=true``, ``project/project-id``;
  every request must carry ``Metadata-Flavor: Google``, as on a real VM;
* an OAuth token endpoint for service-account keys (``POST /token``: the signed JWT grant);
* Google STS (``POST /v1/token``: the token exchange of Workload Identity Federation);
* IAM Credentials (``POST /v1/projects/-/serviceAccounts/<email>:generateAccessToken``).

Each token issued is fresh (``issued``), lives ``lifetime`` seconds, and ``fail`` makes
every token answer a 500, so tests can see refreshes and failures. google-auth reaches it
through its own variables (``GCE_METADATA_HOST`` / ``GCE_METADATA_IP``) or URLs in the
credentials JSON: nothing is patched.
"""

from __future__ import annotations

import itertools
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer

from tests.builders import JsonHandler

SA_EMAIL = "puller@example-project.iam.gserviceaccount.com"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
# google-auth asks by "default" first, then by the e-mail the account info answered.
_ACCOUNT_TOKEN = re.compile(r"/computeMetadata/v1/instance/service-accounts/[^/]+/token")
_ACCOUNT_INFO = re.compile(r"/computeMetadata/v1/instance/service-accounts/[^/]+/")


@dataclass
class Seen:
    """One request as the server saw it (for assertions on the protocol)."""

    method: str
    path: str
    headers: dict[str, str]
    body: str


@dataclass
class GoogleServers:
    """The loopback server; ``start()`` binds it, ``stop()`` shuts it down."""

    lifetime: int = 3600
    prefix: str = "ya29.loopback-"
    fail: bool = False
    issued: list[str] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1), init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def issue(self) -> str:
        with self._lock:
            token = f"{self.prefix}{next(self._counter):04d}-{threading.get_ident() % 9973:04d}"
            self.issued.append(token)
            return token

    def start(self) -> GoogleServers:
        owner = self

        class Handler(JsonHandler):
            def _answer(self, status: int, payload: object, *, flavor: bool = True) -> None:
                self.send_json(status, payload, headers={"Metadata-Flavor": "Google"} if flavor else None)

            def _record(self) -> Seen:
                body = self.read_body().decode()
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                owner.seen.append(seen)
                return seen

            def do_GET(self) -> None:
                self._record()
                path = urllib.parse.urlsplit(self.path).path
                if self.headers.get("Metadata-Flavor") != "Google":
                    self._answer(403, {"error": "Missing Metadata-Flavor: Google"}, flavor=False)
                    return
                if path == "/":
                    self._answer(200, b"")
                elif _ACCOUNT_TOKEN.fullmatch(path):
                    if owner.fail:
                        self._answer(500, {"error": "metadata server failing (test)"})
                        return
                    self._answer(
                        200, {"access_token": owner.issue(), "expires_in": owner.lifetime, "token_type": "Bearer"}
                    )
                elif _ACCOUNT_INFO.fullmatch(path):
                    self._answer(200, {"email": SA_EMAIL, "aliases": ["default"], "scopes": []})
                elif path == "/computeMetadata/v1/project/project-id":
                    self._answer(200, b"example-project")
                else:
                    self._answer(404, {"error": f"no {path}"})

            def do_POST(self) -> None:
                seen = self._record()
                path = urllib.parse.urlsplit(self.path).path
                if owner.fail:
                    self._answer(500, {"error": "server failing (test)"}, flavor=False)
                    return
                if path == "/token":  # service-account key: RFC 7523 JWT bearer grant
                    form = urllib.parse.parse_qs(seen.body)
                    if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
                        self._answer(400, {"error": "unsupported_grant_type"}, flavor=False)
                        return
                    self._answer(
                        200,
                        {"access_token": owner.issue(), "expires_in": owner.lifetime, "token_type": "Bearer"},
                        flavor=False,
                    )
                elif path == "/v1/token":  # Google STS, RFC 8693 token exchange
                    form = urllib.parse.parse_qs(seen.body)
                    if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:token-exchange"] or not form.get(
                        "subject_token"
                    ):
                        self._answer(400, {"error": "invalid_request"}, flavor=False)
                        return
                    self._answer(
                        200,
                        {
                            "access_token": "sts-federated-" + owner.issue(),
                            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                            "token_type": "Bearer",
                            "expires_in": 900,
                        },
                        flavor=False,
                    )
                elif path.startswith("/v1/projects/-/serviceAccounts/") and path.endswith(":generateAccessToken"):
                    auth = self.headers.get("Authorization", "")
                    if not auth.startswith("Bearer sts-federated-"):
                        self._answer(401, {"error": "not a federated token"}, flavor=False)
                        return
                    expire = datetime.now(UTC) + timedelta(seconds=owner.lifetime)
                    self._answer(
                        200,
                        {"accessToken": owner.issue(), "expireTime": expire.strftime("%Y-%m-%dT%H:%M:%SZ")},
                        flavor=False,
                    )
                else:
                    self._answer(404, {"error": f"no {path}"}, flavor=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="google-loopback", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
