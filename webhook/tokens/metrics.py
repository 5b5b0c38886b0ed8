"""Prometheus metrics of the minters. Labels are the provider name and a result word: never a token."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "pullsecret_injector"
MINT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class TokenMetrics:
    """``..._token_mints_total{provider,result}``, mint duration, ``..._token_expiry_timestamp_seconds``.

    The expiry gauge is labelled by provider and registry (words from the policy),
    so an alert can fire on ``expiry - time() < 600`` for the one source that is failing.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.mints = Counter(
            f"{PREFIX}_token_mints",
            "Token mints, by provider and result (ok, error, timeout).",
            ["provider", "result"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_token_mint_duration_seconds",
            "Time one token mint took, by provider.",
            ["provider"],
            buckets=MINT_BUCKETS,
            registry=registry,
        )
        self.expiry = Gauge(
            f"{PREFIX}_token_expiry_timestamp_seconds",
            "Unix time at which the token currently written into the copies expires.",
            ["provider", "registry"],
            registry=registry,
        )

    def minted(self, provider: str, result: str, seconds: float) -> None:
        self.mints.labels(provider, result).inc()
        self.duration.labels(provider).observe(seconds)

    def expires(self, provider: str, registry: str, at: float) -> None:
        self.expiry.labels(provider, registry).set(at)
