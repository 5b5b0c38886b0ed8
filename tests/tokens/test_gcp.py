"""Google tokens, minted by google-auth's own code against loopback Google servers.

* the metadata server (ADC on GKE/GCE), reached through google-auth's ``GCE_METADATA_HOST``
  / ``GCE_METADATA_IP``: google-auth reads the host once at import, so these mints run in a
  fresh interpreter with the variables set, as the webhook process does in production;
* a service-account key JSON whose ``token_uri`` is the loopback OAuth endpoint;
* an ``external_account`` config (Workload Identity Federation) with a file-sourced
  subject token, exchanged at the loopback STS, impersonating a service account through the
  loopback IAM Credentials ``generateAccessToken``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.tokens.google_servers import SA_EMAIL, TOKEN_PATH, GoogleServers
from webhook.observability.logs import redact
from webhook.tokens.errors import MintError, TokenError
from webhook.tokens.gcp import USERNAME, GcpProvider, parse_credentials_json

_MINT_SCRIPT = """
import json, logging, sys
from webhook.observability.logs import configure
configure(level="DEBUG", fmt="text")
logging.getLogger("google").setLevel(logging.DEBUG)
from webhook.tokens.gcp import GcpProvider
from webhook.tokens.errors import TokenError
try:
    token = GcpProvider().mint()
except TokenError as exc:
    print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
else:
    logging.getLogger("canary").debug("minted %s for %s", token.password, token.username)
    print(json.dumps({"username": token.username, "password": token.password,
                      "minted_at": token.minted_at, "expires_at": token.expires_at}))
"""


@pytest.fixture
def google() -> Iterator[GoogleServers]:
    servers = GoogleServers(lifetime=3600).start()
    try:
        yield servers
    finally:
        servers.stop()


def metadata_env(servers: GoogleServers, tmp_path: Path) -> dict[str, str]:
    """The webhook's environment on a VM: google-auth's own variables pointing at the loopback server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_"))}
    env.update(
        GCE_METADATA_HOST=servers.host,
        GCE_METADATA_IP=servers.host,
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),  # no gcloud ADC file can be picked up instead
        NO_PROXY="127.0.0.1",
    )
    return env


def mint_in_fresh_process(env: dict[str, str]) -> tuple[dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-c", _MINT_SCRIPT], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_adc_mints_from_the_metadata_server(google: GoogleServers, tmp_path: Path) -> None:
    google.lifetime = 1234
    before = time.time()
    answer, stderr = mint_in_fresh_process(metadata_env(google, tmp_path))
    assert answer["username"] == USERNAME == "oauth2accesstoken"
    assert answer["password"] == google.issued[-1]
    expires_at = answer["expires_at"]
    assert isinstance(expires_at, float)
    # the expiry is the server's expires_in, not "about an hour"
    assert before + 1234 - 5 <= expires_at <= time.time() + 1234 + 5
    token_requests = [s for s in google.seen if s.path.startswith(TOKEN_PATH)]
    assert token_requests, "the token came from the metadata token endpoint"
    assert all(s.headers.get("metadata-flavor") == "Google" for s in google.seen)
    assert "scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform.read-only" in token_requests[-1].path
    # the canary: DEBUG logging of google-auth and ours, and the token logged on purpose, all redacted
    assert google.issued[-1] not in stderr
    assert "[REDACTED]" in stderr


def test_a_failing_metadata_server_is_a_mint_error_without_secrets(google: GoogleServers, tmp_path: Path) -> None:
    google.fail = True
    answer, _ = mint_in_fresh_process(metadata_env(google, tmp_path))
    assert answer["type"] == "MintError"
    assert str(answer["error"]).startswith("gcp: RefreshError")


def _key_json(servers: GoogleServers) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "example-project",
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": SA_EMAIL,
            "client_id": "1234567890",
            "token_uri": f"{servers.url}/token",
        }
    )


def test_a_service_account_key_mints_through_its_token_uri(google: GoogleServers) -> None:
    google.lifetime = 600
    text = _key_json(google)
    token = GcpProvider(info=parse_credentials_json(text)).mint()
    assert token.username == USERNAME
    assert token.password == google.issued[-1]
    assert token.lifetime == pytest.approx(600, abs=5)
    (grant,) = [s for s in google.seen if s.path == "/token"]
    assert "assertion=" in grant.body  # a signed JWT, RFC 7523
    # the private key never survives redaction, line by line
    pem_line = json.loads(text)["private_key"].splitlines()[1]
    assert pem_line not in redact(f"oops {pem_line}")


def test_federation_with_impersonation(google: GoogleServers, tmp_path: Path) -> None:
    google.lifetime = 777
    subject = tmp_path / "token"
    subject.write_text("eyJhbGciOiJSUzI1NiJ9.subject-token-canary-payload.signature")
    config = {
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/k8s/providers/cluster",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"{google.url}/v1/token",
        "service_account_impersonation_url": (
            f"{google.url}/v1/projects/-/serviceAccounts/{SA_EMAIL}:generateAccessToken"
        ),
        "credential_source": {"file": str(subject)},
    }
    token = GcpProvider(info=parse_credentials_json(json.dumps(config))).mint()
    assert token.username == USERNAME
    assert token.password == google.issued[-1], "the impersonated token, not the federated one"
    assert token.lifetime == pytest.approx(777, abs=5), "expireTime of generateAccessToken"
    sts = next(s for s in google.seen if s.path == "/v1/token")
    assert "subject-token-canary-payload" in sts.body
    iam = next(s for s in google.seen if s.path.endswith(":generateAccessToken"))
    assert iam.headers["authorization"].startswith("Bearer sts-federated-")
    assert "subject-token-canary-payload" not in redact(f"read {subject.read_text()}")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not json", id="not-json"),
        pytest.param('{"type": "authorized_user"}', id="user-credentials"),
        pytest.param("[1]", id="not-object"),
    ],
)
def test_bad_credentials_json(text: str) -> None:
    with pytest.raises(MintError) as caught:
        parse_credentials_json(text)
    assert isinstance(caught.value, TokenError)
