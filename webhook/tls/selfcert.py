"""Self-managed certificates (``--cert-mode self``): a CA and a serving certificate kept in a
Secret of the webhook's own namespace, and the caBundle of its MutatingWebhookConfiguration
kept in step.

Rotation never leaves the API server without a CA it trusts for the certificate being
served, in this order:

1. a new CA is generated and *added* to the bundle (``ca.crt`` holds every CA still
   trusted, the signing one first) while the old serving certificate keeps serving;
2. the webhook configuration's caBundle is patched to that bundle;
3. only when the caBundle the API server uses already holds the new CA is a serving
   certificate issued by it, and every replica loads it from the Secret, without a restart.

Replicas race at start-up and at renewal; the Secret is created once (409: take the
winner's) and updated with its resourceVersion (409: read again, re-plan). The planning is
pure (:func:`plan`), the I/O is a handful of calls through :class:`CertApi`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography import x509

from webhook.backoff import Backoff
from webhook.config import BackoffSettings
from webhook.kube.errors import ApiConflict, ApiError
from webhook.secrets.dockerconfig import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from webhook.tls.pki import (
    build_bundle,
    build_ca,
    build_serving_cert,
    load_certificates,
    merge_ca_bundle,
    needs_renewal,
    private_key_matches_certificate,
    service_dns_names,
)

log = logging.getLogger(__name__)

KEYS = ("ca.crt", "ca.key", "tls.crt", "tls.key")


class CertApi(Protocol):
    """The API calls self mode needs (implemented by :class:`webhook.kube.client.KubeApi`)."""

    def get_secret(self, namespace: str, name: str, *, timeout: float) -> dict[str, Any] | None: ...

    def create_secret(self, namespace: str, body: dict[str, Any], *, timeout: float) -> dict[str, Any]: ...

    def replace_secret(self, namespace: str, name: str, body: dict[str, Any], *, timeout: float) -> dict[str, Any]: ...

    def get_webhook_config(self, name: str, *, timeout: float) -> dict[str, Any] | None: ...

    def patch_webhook_config(self, name: str, patch: list[dict[str, Any]], *, timeout: float) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class CertState:
    """What the Secret holds: the trusted CAs (signing CA first), its key, the serving pair."""

    ca_bundle: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_secret(cls, secret: dict[str, Any]) -> CertState | None:
        data = secret.get("data") or {}
        try:
            values = [base64.b64decode(data[k]) for k in KEYS]
            state = cls(*values)
            load_certificates(state.ca_bundle)
            load_certificates(state.cert)
        except (KeyError, ValueError, TypeError):
            return None
        if not private_key_matches_certificate(state.cert, state.key):
            return None
        return state

    def secret_data(self) -> dict[str, str]:
        values = (self.ca_bundle, self.ca_key, self.cert, self.key)
        return {k: base64.b64encode(v).decode() for k, v in zip(KEYS, values, strict=True)}

    @property
    def signing_ca(self) -> x509.Certificate:
        return load_certificates(self.ca_bundle)[0]


def _issued_by(cert_pem: bytes, ca: x509.Certificate) -> bool:
    cert = load_certificates(cert_pem)[0]
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # wrong issuer name, bad signature, other key type: all mean "not issued by"
        return False
    return True


def _covers(cert_pem: bytes, names: list[str]) -> bool:
    cert = load_certificates(cert_pem)[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(names) <= set(san.get_values_for_type(x509.DNSName))


def _ca_in(bundle_pem: bytes | None, ca: x509.Certificate) -> bool:
    if not bundle_pem:
        return False
    try:
        return any(c == ca for c in load_certificates(bundle_pem))
    except ValueError:
        return False


def plan(
    *,
    current: CertState | None,
    service: str,
    namespace: str,
    trusted_bundle: bytes | None,
    now: datetime | None = None,
    ca_valid_for: timedelta = timedelta(days=3650),
    cert_valid_for: timedelta = timedelta(days=365),
) -> CertState | None:
    """The state to write next, or ``None`` when the current one is right.

    ``trusted_bundle`` is the caBundle the API server is configured with right now: a
    serving certificate from a new CA is only issued once that bundle trusts the CA.
    """
    now = now or datetime.now(UTC)
    names = service_dns_names(service, namespace)
    if current is None:
        first = build_bundle(
            service=service, namespace=namespace, ca_valid_for=ca_valid_for, cert_valid_for=cert_valid_for, now=now
        )
        return CertState(first.ca_cert_pem, first.ca_key_pem, first.cert_pem, first.key_pem)

    # Step 1: a CA near its end is replaced, the old one staying trusted in the bundle.
    if needs_renewal(_pem(current.signing_ca), now=now):
        ca_pem, ca_key = build_ca(valid_for=ca_valid_for, now=now)
        return CertState(merge_ca_bundle(current.ca_bundle, ca_pem, now=now), ca_key, current.cert, current.key)

    signing = current.signing_ca
    # Expired CAs leave the bundle (merge is idempotent for the signing CA, which stays first).
    bundle = merge_ca_bundle(current.ca_bundle, _pem(signing), now=now)
    stale = (
        needs_renewal(current.cert, now=now)
        or not _issued_by(current.cert, signing)
        or not _covers(current.cert, names)
    )
    if not stale:
        return None if bundle == current.ca_bundle else CertState(bundle, current.ca_key, current.cert, current.key)

    expired = load_certificates(current.cert)[0].not_valid_after_utc <= now
    if not expired and not _ca_in(trusted_bundle, signing):
        # Step 3 waits until the API server trusts the signing CA (step 2).
        return None if bundle == current.ca_bundle else CertState(bundle, current.ca_key, current.cert, current.key)
    cert, key = build_serving_cert(
        ca_cert_pem=_pem(signing), ca_key_pem=current.ca_key, dns_names=names, valid_for=cert_valid_for, now=now
    )
    return CertState(bundle, current.ca_key, cert, key)


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


class SelfCertManager:
    """Keeps the Secret and the caBundle right; all methods are blocking (run in a thread)."""

    def __init__(
        self,
        *,
        api: CertApi,
        namespace: str,
        secret_name: str,
        service: str,
        webhook_config: str,
        timeout: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._secret_name = secret_name
        self._service = service
        self._webhook_config = webhook_config
        self._timeout = timeout
        self._clock = clock

    def ensure(self) -> CertState:
        """One pass: make the Secret right, then the caBundle, then (if it waited) the cert."""
        state = self._ensure_secret()
        if self._ensure_ca_bundle(state.ca_bundle):
            state = self._ensure_secret()  # the bundle is trusted now: the serving cert may switch
        return state

    def _ensure_secret(self) -> CertState:
        for _ in range(5):
            secret = self._api.get_secret(self._namespace, self._secret_name, timeout=self._timeout)
            current = CertState.from_secret(secret) if secret is not None else None
            if secret is not None and current is None:
                log.warning("certificate Secret %s/%s unusable: replacing it", self._namespace, self._secret_name)
            trusted = self._trusted_bundle()
            wanted = plan(
                current=current,
                service=self._service,
                namespace=self._namespace,
                trusted_bundle=trusted,
                now=self._clock(),
            )
            if wanted is None:
                assert current is not None
                return current
            try:
                if secret is None:
                    self._api.create_secret(self._namespace, self._body(wanted, None), timeout=self._timeout)
                    log.info("created certificate Secret %s/%s", self._namespace, self._secret_name)
                else:
                    version = secret["metadata"].get("resourceVersion")
                    self._api.replace_secret(
                        self._namespace, self._secret_name, self._body(wanted, version), timeout=self._timeout
                    )
                    log.info("updated certificate Secret %s/%s", self._namespace, self._secret_name)
            except ApiConflict:
                continue  # another replica won: read theirs and plan again
            return wanted
        raise ApiConflict(action=f"update Secret {self._namespace}/{self._secret_name}")

    def _body(self, state: CertState, resource_version: str | None) -> dict[str, Any]:
        labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
        metadata: dict[str, Any] = {"name": self._secret_name, "namespace": self._namespace, "labels": labels}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": metadata,
            "data": state.secret_data(),
        }

    def _trusted_bundle(self) -> bytes | None:
        config = self._api.get_webhook_config(self._webhook_config, timeout=self._timeout)
        if config is None:
            return None
        bundles = {
            str((w.get("clientConfig") or {}).get("caBundle") or "")
            for w in config.get("webhooks") or []
            if isinstance(w, dict)
        }
        # Trusted only when every entry carries the same, non-empty bundle (they are patched together).
        if len(bundles) != 1 or "" in bundles:
            return None
        return base64.b64decode(bundles.pop())

    def _ensure_ca_bundle(self, bundle: bytes) -> bool:
        """Patch every webhook entry's caBundle to ``bundle``; True when something changed."""
        config = self._api.get_webhook_config(self._webhook_config, timeout=self._timeout)
        if config is None:
            log.warning(
                "MutatingWebhookConfiguration %s not found: caBundle not set (it is installed with the chart)",
                self._webhook_config,
            )
            return False
        encoded = base64.b64encode(bundle).decode()
        patch: list[dict[str, Any]] = []
        for index, webhook in enumerate(config.get("webhooks") or []):
            client = webhook.get("clientConfig") or {}
            if client.get("caBundle") == encoded:
                continue
            # `test` pins the entry we mean even if the list changed between read and patch.
            patch.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.get("name")})
            patch.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded})
        if not patch:
            return False
        self._api.patch_webhook_config(self._webhook_config, patch, timeout=self._timeout)
        log.info("caBundle of MutatingWebhookConfiguration %s updated", self._webhook_config)
        return True


async def keep_current(
    manager: SelfCertManager,
    *,
    initial: CertState,
    apply: Callable[[CertState], None],
    interval: float = 600.0,
    backoff: Backoff | None = None,
) -> None:
    """Re-check every ``interval`` seconds (in a thread) and hand a changed pair to ``apply``.

    After a failed check the next comes sooner (``backoff``: from 10 s up to ``interval``),
    so a renewal that met a passing API outage is not put off for a whole interval.
    """
    backoff = backoff or Backoff(BackoffSettings(initial=min(10.0, interval), maximum=interval))
    last = initial
    delay = interval
    while True:
        await asyncio.sleep(delay)
        try:
            state = await asyncio.to_thread(manager.ensure)
        except ApiError as exc:
            delay = backoff.failure()
            log.warning("certificate check failed, retrying in %.0fs: %s", delay, exc)
        else:
            backoff.reset()
            delay = interval
            if (state.cert, state.key) != (last.cert, last.key):
                apply(state)
                log.info("serving certificate switched without a restart")
            last = state
