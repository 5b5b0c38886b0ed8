"""One line saying where a rule's credential comes from, for ``check`` and ``validate`` (offline)."""

from __future__ import annotations

from webhook.policy.model import Source, TokenSource


def _identity(token: TokenSource) -> str:
    """Which identity the provider will use: what an operator must set up on the cloud side."""
    if token.provider == "gcp":
        ref = token.gcp.credentials_from if token.gcp is not None else None
        if ref is None:
            return "the webhook's Application Default Credentials (metadata server / Workload Identity)"
        return f"the key or external_account config in Secret {ref.namespace}/{ref.name} key {ref.key}"
    if token.provider == "ecr":
        role = token.ecr.role_arn if token.ecr is not None else None
        chain = "boto3's default credential chain"
        return f"{chain}, assuming {role}" if role else chain
    if token.provider == "acr":
        acr = token.acr
        if acr is not None and acr.tenant_id and acr.client_id:
            return f"workload identity federation (tenant {acr.tenant_id}, client {acr.client_id})"
        return "the managed identity"
    assert token.exec is not None
    return f"the credential provider plugin {token.exec.command[0]}"


def explain_source(source: Source) -> str:
    """``token from gcp for europe-docker.pkg.dev, minted at runtime (...)``; no secret material."""
    if source.token is not None:
        token = source.token
        where = token.registry or "the ECR proxyEndpoint host"
        line = f"token from {token.provider} for {where}, minted at runtime with {_identity(token)}"
        if token.also_for:
            line += f"; also for {', '.join(token.also_for)}"
        return line
    if source.credentials is not None:
        creds = source.credentials
        ref = creds.password_from
        line = f"credentials for {creds.registry} (user {creds.username}) from Secret {ref.namespace}/{ref.name}"
        if creds.also_for:
            line += f"; also for {', '.join(creds.also_for)}"
        return line
    assert source.secret is not None
    line = f"copied from Secret {source.secret.namespace}/{source.secret.name}"
    if source.secret.also_for:
        line += f"; keeps auth hosts {', '.join(source.secret.also_for)}"
    return line
