"""Google Artifact Registry / Container Registry access tokens, through ``google-auth``.

Three identities, all google-auth's own code paths:

* none configured: Application Default Credentials of the webhook process. On GKE or GCE
  that is the metadata server (``/computeMetadata/v1/instance/service-accounts/default/token``
  with ``Metadata-Flavor: Google``; google-auth honours ``GCE_METADATA_HOST`` /
  ``GCE_METADATA_IP``); elsewhere ``GOOGLE_APPLICATION_CREDENTIALS``.
* ``credentialsFrom`` holding a service-account key JSON (``"type": "service_account"``):
  a signed JWT exchanged at the key's ``token_uri``.
* ``credentialsFrom`` holding an ``external_account`` config (Workload Identity
  Federation): a subject token read from a file (a projected Kubernetes ServiceAccount
  token), exchanged at Google's STS (``token_url``), optionally impersonating a service
  account (``service_account_impersonation_url``, IAM Credentials ``generateAccessToken``).

The registry username is always ``oauth2accesstoken``; the expiry is the one the server
gave (``expires_in``, or ``expireTime`` when impersonating), never "about an hour".
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from webhook.observability.logs import redact, register_secret
from webhook.tokens.base import Token, utc_timestamp
from webhook.tokens.errors import MintError, ProviderUnavailable
from webhook.tokens.extras import missing_extra

USERNAME = "oauth2accesstoken"
DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform.read-only",)
#: No single HTTP exchange of a mint may take longer (google-auth's own default is 120 s).
HTTP_TIMEOUT = 10.0


def _describe(exc: BaseException) -> str:
    """An SDK error, short and redacted (a server's error body may echo what it was sent)."""
    return f"{type(exc).__name__}: {redact(str(exc))[:300]}"


def register_credentials_info(info: Mapping[str, Any]) -> None:
    """Register the secret parts of a credentials JSON: the private key, and the subject token file's content."""
    for key in ("private_key", "private_key_id", "client_secret", "refresh_token"):
        value = info.get(key)
        if isinstance(value, str):
            register_secret(value)
    source = info.get("credential_source")
    if isinstance(source, Mapping) and isinstance(source.get("file"), str):
        with contextlib.suppress(OSError):  # google-auth reports a missing file itself
            register_secret(Path(source["file"]).read_text().strip())


def parse_credentials_json(text: str) -> dict[str, Any]:
    """The ``credentialsFrom`` value: a JSON object of ``type`` service_account or external_account."""
    register_secret(text)
    try:
        info = json.loads(text)
    except ValueError:
        raise MintError("credentialsFrom is not JSON (a service-account key or an external_account config)") from None
    if not isinstance(info, dict) or info.get("type") not in ("service_account", "external_account"):
        raise MintError("credentialsFrom must be a service_account key or an external_account config")
    register_credentials_info(info)
    return info


class GcpProvider:
    """Mints a GAR/GCR access token; one instance per token source, reused across mints."""

    name = "gcp"

    def __init__(self, *, scopes: Sequence[str] = DEFAULT_SCOPES, info: Mapping[str, Any] | None = None) -> None:
        problem = missing_extra("gcp")
        if problem is not None:
            raise ProviderUnavailable(problem)
        self._scopes = list(scopes)
        self._info = dict(info) if info is not None else None
        self._credentials: Any = None
        self._lock = threading.Lock()

    def _request(self) -> Any:
        import google.auth.transport.requests as transport

        class BoundedRequest(transport.Request):
            """google-auth's requests transport, with every exchange bounded in time."""

            def __call__(
                self,
                url: str,
                method: str = "GET",
                body: Any = None,
                headers: Any = None,
                timeout: float | None = None,
                **kwargs: Any,
            ) -> Any:
                limit = HTTP_TIMEOUT if timeout is None else min(timeout, HTTP_TIMEOUT)
                return super().__call__(  # type: ignore[no-untyped-call]
                    url, method=method, body=body, headers=headers, timeout=limit, **kwargs
                )

        return BoundedRequest()

    def _load(self, request: Any) -> Any:
        import google.auth

        if self._info is None:
            credentials, _project = google.auth.default(scopes=self._scopes, request=request)
            return credentials
        register_credentials_info(self._info)
        # Each type loaded explicitly (not google.auth.load_credentials_from_dict): only the two
        # types we validated can be built, never whatever a JSON in a Secret says.
        if self._info.get("type") == "service_account":
            from google.oauth2 import service_account

            return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                self._info, scopes=self._scopes
            )
        from google.auth import identity_pool

        return identity_pool.Credentials.from_info(self._info, scopes=self._scopes)  # type: ignore[no-untyped-call]

    def mint(self) -> Token:
        import google.auth.exceptions

        with self._lock:
            minted_at = time.time()
            try:
                request = self._request()
                if self._credentials is None:
                    self._credentials = self._load(request)
                elif self._info is not None:
                    register_credentials_info(self._info)  # the subject token file was rotated: a new secret
                self._credentials.refresh(request)
            except google.auth.exceptions.GoogleAuthError as exc:
                raise MintError(f"gcp: {_describe(exc)}") from None
            except (OSError, ValueError) as exc:
                raise MintError(f"gcp: {_describe(exc)}") from None
            token, expiry = self._credentials.token, self._credentials.expiry
            if not isinstance(token, str) or not token:
                raise MintError("gcp: no access token in the answer")
            register_secret(token)
            expires_at = utc_timestamp(expiry) if expiry is not None else minted_at
            return Token(username=USERNAME, password=token, minted_at=minted_at, expires_at=expires_at)
