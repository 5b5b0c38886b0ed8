"""What every provider returns, and what a provider is."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from webhook.observability.logs import register_secret


@dataclass(frozen=True, slots=True)
class Token:
    """One minted registry credential and its real lifetime (Unix seconds, wall clock).

    ``registry`` is where the provider says the credential is for (ECR's
    ``proxyEndpoint``), or ``None``; the policy's ``registry`` wins when it is set.
    """

    username: str
    password: str = field(repr=False)
    minted_at: float
    expires_at: float
    registry: str | None = None

    def __post_init__(self) -> None:
        # Registered where it is born: every path out of the process passes the redactor.
        register_secret(self.password)
        register_secret(f"{self.username}:{self.password}")

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.minted_at


class Provider(Protocol):
    """Mints a :class:`Token`; blocking (SDK calls), run in a worker thread by the minter.

    Raises :class:`~webhook.tokens.errors.MintError` (or a subclass) with a message that
    holds no secret material.
    """

    name: str

    def mint(self) -> Token: ...


def utc_timestamp(value: datetime) -> float:
    """A datetime as Unix seconds; naive ones are UTC (google-auth's ``expiry`` is naive UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified (we only schedule with it), or ``None``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
