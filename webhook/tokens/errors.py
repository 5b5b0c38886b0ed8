"""The token errors, one hierarchy, so callers catch what they can act on.

Every message is written without secret material (tokens, keys, subject tokens, a
plugin's output): they end up in logs, Events and admission warnings. The redactor is the
second line of defence, not the first.
"""

from __future__ import annotations

from webhook.secrets.dockerconfig import SourceError


class TokenError(SourceError):
    """A token source could not produce a credential. A :class:`SourceError`, so the sync paths report it."""

    reason = "TokenUnavailable"


class ProviderUnavailable(TokenError):
    """The provider's SDK (an optional extra) is not installed: the message is the ``pip install`` line."""

    reason = "TokenProviderUnavailable"


class MintError(TokenError):
    """The provider answered, or failed to, without a usable token."""

    reason = "TokenMintFailed"


class MintTimeout(MintError):
    """Minting took longer than allowed (a hung metadata server or plugin)."""

    reason = "TokenMintTimeout"


class ExecPluginError(MintError):
    """A credential-provider plugin failed: exit status, malformed response, no entry for the registry."""


class TokenExpired(TokenError):
    """No token is valid now: never minted, or the last good one expired while minting kept failing."""

    reason = "TokenExpired"
