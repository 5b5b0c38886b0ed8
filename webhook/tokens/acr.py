"""Azure Container Registry refresh tokens: an Entra ID token, exchanged at the registry.

azure-identity gets the Entra ID (AAD) access token: ``WorkloadIdentityCredential`` when
``tenantId`` and ``clientId`` are given (the federated ServiceAccount token file of
``AZURE_FEDERATED_TOKEN_FILE``, exchanged at ``AZURE_AUTHORITY_HOST``), else
``ManagedIdentityCredential``. The registry's ``POST /oauth2/exchange``
(``grant_type=access_token``) turns it into an ACR refresh token, used as the password of
the fixed username ``00000000-0000-0000-0000-000000000000``. Its expiry is the JWT's own
``exp`` (observed lifetimes differ from the documented 3 h), else the AAD token's.

The exchange uses the standard library's TLS with the default trust store, which honours
``SSL_CERT_FILE`` (a private CA for an on-premises authority or registry).
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from webhook.observability.logs import redact, register_secret
from webhook.tokens.base import Token, jwt_expiry
from webhook.tokens.errors import MintError, ProviderUnavailable
from webhook.tokens.extras import missing_extra

USERNAME = "00000000-0000-0000-0000-000000000000"
SCOPE = "https://containerregistry.azure.net/.default"
HTTP_TIMEOUT = 10.0
_PUBLIC_AUTHORITIES = ("login.microsoftonline.com", "login.chinacloudapi.cn", "login.microsoftonline.us")


class AcrProvider:
    """Mints an ACR refresh token for one registry; one instance per token source."""

    name = "acr"

    def __init__(self, *, registry: str, tenant_id: str | None = None, client_id: str | None = None) -> None:
        problem = missing_extra("acr")
        if problem is not None:
            raise ProviderUnavailable(problem)
        self._registry = registry
        self._tenant_id = tenant_id
        self._client_id = client_id
        self._credential: Any = None

    def _build_credential(self) -> Any:
        from azure.identity import ManagedIdentityCredential, WorkloadIdentityCredential

        authority = os.environ.get("AZURE_AUTHORITY_HOST", "")
        # Instance discovery asks the public cloud whether an authority is real; an authority the
        # operator configured explicitly (private cloud, Azure Stack) is trusted as it is.
        custom = bool(authority) and urllib.parse.urlsplit(authority).hostname not in _PUBLIC_AUTHORITIES
        if self._tenant_id and self._client_id:
            return WorkloadIdentityCredential(
                tenant_id=self._tenant_id, client_id=self._client_id, disable_instance_discovery=custom
            )
        return ManagedIdentityCredential(client_id=self._client_id)

    def _exchange(self, aad_token: str) -> str:
        form: dict[str, str] = {"grant_type": "access_token", "service": self._registry, "access_token": aad_token}
        if self._tenant_id:
            form["tenant"] = self._tenant_id
        request = urllib.request.Request(
            f"https://{self._registry}/oauth2/exchange",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=HTTP_TIMEOUT, context=ssl.create_default_context()
            ) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise MintError(f"acr: {self._registry}/oauth2/exchange answered {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise MintError(f"acr: {self._registry}/oauth2/exchange failed: {redact(str(exc))[:200]}") from None
        token = body.get("refresh_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise MintError(f"acr: {self._registry}/oauth2/exchange returned no refresh_token")
        register_secret(token)
        return token

    def mint(self) -> Token:
        from azure.core.exceptions import AzureError

        minted_at = time.time()
        try:
            if self._credential is None:
                self._credential = self._build_credential()
            aad = self._credential.get_token(SCOPE)
        except AzureError as exc:
            raise MintError(f"acr: Entra ID token: {type(exc).__name__}: {redact(str(exc))[:300]}") from None
        except (OSError, ValueError) as exc:
            raise MintError(f"acr: Entra ID token: {type(exc).__name__}") from None
        register_secret(aad.token)
        refresh = self._exchange(aad.token)
        expires_at = jwt_expiry(refresh) or float(aad.expires_on)
        return Token(username=USERNAME, password=refresh, minted_at=minted_at, expires_at=expires_at)
