"""From a policy ``token`` source to the provider that mints it (SDKs imported only when used)."""

from __future__ import annotations

from typing import cast

from webhook.policy.model import TokenSource
from webhook.tokens.base import Provider
from webhook.tokens.errors import ProviderUnavailable
from webhook.tokens.exec_provider import ExecProvider, parse_go_duration
from webhook.tokens.extras import missing_extra


def source_key(source: TokenSource) -> str:
    """One minter per distinct value of this key: the whole source, canonically serialized."""
    return source.model_dump_json(by_alias=True, exclude={"also_for"})


def describe(source: TokenSource) -> str:
    """For messages and ``check``: which provider, for which registry (no secret material)."""
    where = source.registry or "the ECR proxyEndpoint"
    return f"token from {source.provider} for {where}"


def build_provider(source: TokenSource, *, credentials: str | None = None) -> Provider:
    """The provider for ``source``; ``credentials`` is the content ``gcp.credentialsFrom`` names.

    Raises :class:`ProviderUnavailable` when the SDK is missing (the message is the
    ``pip install`` line), :class:`~webhook.tokens.errors.MintError` for bad credentials.
    """
    problem = missing_extra(source.provider)
    if problem is not None:
        raise ProviderUnavailable(problem)
    if source.provider == "gcp":
        from webhook.tokens.gcp import DEFAULT_SCOPES, GcpProvider, parse_credentials_json

        options = source.gcp
        scopes = options.scopes if options is not None else DEFAULT_SCOPES
        info = parse_credentials_json(credentials) if credentials is not None else None
        return GcpProvider(scopes=scopes, info=info)
    if source.provider == "ecr":
        from webhook.tokens.ecr import EcrProvider

        ecr = source.ecr
        return cast(
            Provider,
            EcrProvider(
                region=ecr.region if ecr is not None else None, role_arn=ecr.role_arn if ecr is not None else None
            ),
        )
    if source.provider == "acr":
        from webhook.tokens.acr import AcrProvider

        acr = source.acr
        assert source.registry is not None  # the model requires it for acr
        return cast(
            Provider,
            AcrProvider(
                registry=source.registry,
                tenant_id=acr.tenant_id if acr is not None else None,
                client_id=acr.client_id if acr is not None else None,
            ),
        )
    options_exec = source.exec
    assert options_exec is not None  # the model requires it for exec
    assert source.registry is not None
    return ExecProvider(
        command=options_exec.command,
        args=options_exec.args,
        env=dict(options_exec.env),
        registry=source.registry,
        default_cache_duration=parse_go_duration(options_exec.default_cache_duration),
        timeout=parse_go_duration(options_exec.timeout),
    )
