"""ACR refresh tokens through azure-identity's own code, against a loopback Entra ID and registry.

One HTTPS server on 127.0.0.1 (certificate from the project's own CA code) plays both:
Entra ID (OpenID discovery and the v2.0 token endpoint, where azure-identity's
``WorkloadIdentityCredential`` posts the federated ServiceAccount token as a client
assertion) and the registry's ``/oauth2/exchange``. azure-identity is pointed at it with its
own ``AZURE_AUTHORITY_HOST``; TLS trusts the test CA through ``REQUESTS_CA_BUNDLE`` (azure-core)
and ``SSL_CERT_FILE`` (the exchange).
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.builders import JsonHandler
from webhook.observability.logs import redact
from webhook.tls.pki import build_ca, build_serving_cert
from webhook.tokens.acr import USERNAME, AcrProvider
from webhook.tokens.errors import MintError

TENANT = "72f988bf-0000-0000-0000-000000000000"
CLIENT = "11111111-2222-3333-4444-555555555555"


def jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@dataclass
class Entra:
    url: str = ""
    refresh_lifetime: int = 4500  # 75 min: what ACR was seen to answer, not the documented 3 h
    seen: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)
    refresh_tokens: list[str] = field(default_factory=list)
    fail_exchange: bool = False


@pytest.fixture
def entra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Entra]:
    ca_cert, ca_key = build_ca(common_name="psi-test-ca")
    cert, key = build_serving_cert(
        ca_cert_pem=ca_cert, ca_key_pem=ca_key, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    (tmp_path / "ca.crt").write_bytes(ca_cert)
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    state = Entra()

    class Handler(JsonHandler):
        _json = JsonHandler.send_json

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
                base = f"{state.url}/{TENANT}"
                self._json(
                    200,
                    {
                        "token_endpoint": f"{base}/oauth2/v2.0/token",
                        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                        "issuer": f"{base}/v2.0",
                        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    },
                )
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            form = urllib.parse.parse_qs(self.read_body().decode())
            state.seen.append((path, form))
            if path == f"/{TENANT}/oauth2/v2.0/token":
                if form.get("client_assertion_type") != ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]:
                    self._json(400, {"error": "invalid_client"})
                    return
                self._json(
                    200,
                    {"token_type": "Bearer", "expires_in": 3600, "access_token": jwt({"aud": "acr", "n": time.time()})},
                )
            elif path == "/oauth2/exchange":
                if state.fail_exchange or form.get("grant_type") != ["access_token"]:
                    self._json(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                    return
                token = jwt({"exp": int(time.time()) + state.refresh_lifetime, "canary": "acr-refresh-canary"})
                state.refresh_tokens.append(token)
                self._json(200, {"refresh_token": token})
            else:
                self._json(404, {"error": "not_found"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    state.url = f"https://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    federated = tmp_path / "azure-token"
    federated.write_text(jwt({"sub": "system:serviceaccount:psi:psi", "aud": "api://AzureADTokenExchange"}))
    for name, value in {
        "AZURE_AUTHORITY_HOST": state.url,
        "AZURE_FEDERATED_TOKEN_FILE": str(federated),
        "REQUESTS_CA_BUNDLE": str(tmp_path / "ca.crt"),
        "SSL_CERT_FILE": str(tmp_path / "ca.crt"),
        "NO_PROXY": "127.0.0.1",
    }.items():
        monkeypatch.setenv(name, value)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def registry_of(state: Entra) -> str:
    return state.url.removeprefix("https://")


def test_workload_identity_then_exchange(entra: Entra) -> None:
    provider = AcrProvider(registry=registry_of(entra), tenant_id=TENANT, client_id=CLIENT)
    before = time.time()
    token = provider.mint()
    assert token.username == USERNAME == "00000000-0000-0000-0000-000000000000"
    assert token.password == entra.refresh_tokens[-1]
    # the expiry is the refresh token's own exp (75 min here), not a documented 3 h
    assert before + 4500 - 5 <= token.expires_at <= time.time() + 4500 + 5
    token_call = next(form for path, form in entra.seen if path.endswith("/oauth2/v2.0/token"))
    assert token_call["client_id"] == [CLIENT]
    assert token_call["scope"] == ["https://containerregistry.azure.net/.default"]
    exchange = next(form for path, form in entra.seen if path == "/oauth2/exchange")
    assert exchange["service"] == [registry_of(entra)]
    assert exchange["tenant"] == [TENANT]
    assert token.password not in redact(f"refresh {token.password}")
    assert exchange["access_token"][0] not in redact(f"aad {exchange['access_token'][0]}")


def test_a_refused_exchange_is_a_mint_error_without_tokens(entra: Entra) -> None:
    entra.fail_exchange = True
    with pytest.raises(MintError, match="oauth2/exchange answered 401") as caught:
        AcrProvider(registry=registry_of(entra), tenant_id=TENANT, client_id=CLIENT).mint()
    aad = next(form for path, form in entra.seen if path == "/oauth2/exchange")["access_token"][0]
    assert aad not in str(caught.value)
