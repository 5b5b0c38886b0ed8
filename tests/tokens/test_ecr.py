"""ECR tokens through boto3's own code, against moto in server mode on loopback.

boto3 reaches moto through its standard ``AWS_ENDPOINT_URL``; the identity comes from the
default credential chain: static keys, or ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``
(``AssumeRoleWithWebIdentity``, as IRSA), then optionally ``roleArn`` (``AssumeRole``). moto
answers a fixed ``expiresAt`` in 2015: the schedule's floor must keep that from spinning.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import copy_of
from webhook.observability.logs import redact
from webhook.policy.model import Source, TokenSource
from webhook.tokens.ecr import EcrProvider
from webhook.tokens.errors import MintError
from webhook.tokens.minter import TokenMinters
from webhook.tokens.schedule import FLOOR, next_refresh

ROLE = "arn:aws:iam::123456789012:role/puller"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """boto3's own configuration variables: moto's endpoint, no shared files, one region."""
    import os

    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return tmp_path


def test_static_keys_mint_an_ecr_token(aws_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "static-secret-canary-key")
    token = EcrProvider(region="us-east-1").mint()
    assert token.username == "AWS"
    assert token.password
    assert token.registry is not None
    assert token.registry.endswith(".dkr.ecr.us-east-1.amazonaws.com"), "from proxyEndpoint"
    assert token.expires_at < time.time(), "moto's fixed expiresAt (2015)"
    assert token.password not in redact(f"pw {token.password}")
    assert "static-secret-canary-key" not in redact("static-secret-canary-key")


def test_web_identity_then_role(aws_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    web_token = aws_env / "token"
    web_token.write_text("eyJhbGciOiJSUzI1NiJ9.web-identity-canary.sig")
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/irsa")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(web_token))
    token = EcrProvider(region="us-east-1", role_arn=ROLE).mint()
    assert token.username == "AWS"
    assert token.password


def test_no_credentials_is_a_mint_error(aws_env: Path) -> None:
    with pytest.raises(MintError, match="ecr: NoCredentialsError"):
        EcrProvider(region="us-east-1").mint()


async def test_the_floor_holds_for_an_answer_from_2015(aws_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "static-secret-canary-key")
    source = TokenSource.model_validate({"provider": "ecr", "ecr": {"region": "us-east-1"}})
    minters = TokenMinters()
    objects = [await minters.source_object(source, timeout=30) for _ in range(5)]
    minter = minters.minter(source)
    assert minter.mints == 1, "an expired answer is not minted again on every use"
    assert all(obj is objects[0] for obj in objects)
    token = minter.token
    assert token is not None
    at = minter.next_mint_at()
    assert at == pytest.approx(token.minted_at + FLOOR)
    assert next_refresh(now=time.time(), expires_at=token.expires_at, draw=0.5) >= time.time() + FLOOR - 0.01
    await asyncio.sleep(0)


async def test_the_copy_is_written_under_the_proxy_endpoint_host(
    aws_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "static-secret-canary-key")
    source = Source.model_validate({"token": {"provider": "ecr", "ecr": {"region": "us-east-1"}}})
    assert source.token is not None
    minters = TokenMinters()
    obj = await minters.source_object(source.token, timeout=30)
    copy = copy_of(obj, source=source, registries=["*.dkr.ecr.*.amazonaws.com"])
    auths = json.loads(copy.config)["auths"]
    (host,) = auths
    assert host.endswith(".dkr.ecr.us-east-1.amazonaws.com")
    assert auths[host]["username"] == "AWS"
    assert copy.source == "token:ecr/proxyEndpoint"
