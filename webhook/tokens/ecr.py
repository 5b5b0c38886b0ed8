"""Amazon ECR authorization tokens, through boto3's own default credential chain.

The chain is boto3's, so every documented way to give the webhook an AWS identity works
unchanged: IRSA / EKS Pod Identity style ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``
(``AssumeRoleWithWebIdentity``), environment keys, instance profiles. With ``roleArn`` that
identity first assumes the role (``sts:AssumeRole``), so one webhook can pull from several
accounts. ``GetAuthorizationToken`` answers ``authorizationToken`` (base64 ``AWS:<password>``),
``expiresAt`` (the real expiry, usually 12 h) and ``proxyEndpoint`` (the registry URL).
"""

from __future__ import annotations

import base64
import binascii
import time
import urllib.parse
from typing import Any

from webhook.observability.logs import register_secret
from webhook.tokens.base import Token, utc_timestamp
from webhook.tokens.errors import MintError, ProviderUnavailable
from webhook.tokens.extras import missing_extra

SESSION_NAME = "pullsecret-injector"


def _client_config() -> Any:
    from botocore.config import Config

    return Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})


class EcrProvider:
    """Mints an ECR authorization token; one instance per token source."""

    name = "ecr"

    def __init__(self, *, region: str | None = None, role_arn: str | None = None) -> None:
        problem = missing_extra("ecr")
        if problem is not None:
            raise ProviderUnavailable(problem)
        self._region = region
        self._role_arn = role_arn

    def _session(self) -> Any:
        import boto3

        session = boto3.session.Session(region_name=self._region)
        if self._role_arn is None:
            return session
        answer = session.client("sts", config=_client_config()).assume_role(
            RoleArn=self._role_arn, RoleSessionName=SESSION_NAME
        )
        credentials = answer["Credentials"]
        for key in ("SecretAccessKey", "SessionToken"):
            register_secret(credentials[key])
        return boto3.session.Session(
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
            region_name=self._region,
        )

    def mint(self) -> Token:
        from botocore.exceptions import BotoCoreError, ClientError

        minted_at = time.time()
        try:
            session = self._session()
            frozen = session.get_credentials()
            if frozen is not None:
                current = frozen.get_frozen_credentials()
                if current.secret_key:
                    register_secret(current.secret_key)
                if current.token:
                    register_secret(current.token)
            answer = session.client("ecr", config=_client_config()).get_authorization_token()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise MintError(f"ecr: {error.get('Code', 'ClientError')} ({exc.operation_name})") from None
        except BotoCoreError as exc:
            raise MintError(f"ecr: {type(exc).__name__}") from None
        data = (answer.get("authorizationData") or [None])[0]
        if not data or "authorizationToken" not in data:
            raise MintError("ecr: GetAuthorizationToken returned no authorizationData")
        register_secret(data["authorizationToken"])
        try:
            decoded = base64.b64decode(data["authorizationToken"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise MintError("ecr: the authorizationToken is not base64 of user:password") from None
        username, sep, password = decoded.partition(":")
        if not sep or not password:
            raise MintError("ecr: the authorizationToken is not base64 of user:password")
        register_secret(password)
        expires = data.get("expiresAt")
        expires_at = utc_timestamp(expires) if expires is not None else minted_at
        endpoint = str(data.get("proxyEndpoint") or "")
        registry = urllib.parse.urlsplit(endpoint).netloc or endpoint or None
        return Token(
            username=username, password=password, minted_at=minted_at, expires_at=expires_at, registry=registry
        )
