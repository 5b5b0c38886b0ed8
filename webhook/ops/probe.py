"""Contact a webhook the way the API server does: TLS verified against the configuration's caBundle.

A broken caBundle is the classic silent failure: with ``failurePolicy: Ignore`` the API
server's call fails TLS and the Pod is admitted unmutated. The only faithful test is the
one the API server performs, a handshake that trusts *only* the caBundle and checks the
certificate's SAN against the host it dials, so that is what :func:`probe_url` does (with
the standard library's verifier, which is OpenSSL's). Readiness is ``GET /readyz``.

A ``clientConfig.service`` webhook is reachable only inside the cluster; for it, readiness
comes from the Service's Endpoints (ready addresses) and the certificate is not checked.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from webhook.ops.snapshot import WebhookProbe

TIMEOUT = 5.0


def _ca_context(ca_bundle: str) -> ssl.SSLContext | str:
    try:
        pem = base64.b64decode(ca_bundle, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return "the caBundle is not base64-encoded PEM"
    # PROTOCOL_TLS_CLIENT: hostname checked, certificate required, and no system CAs: only the bundle.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=pem)
    except ssl.SSLError:
        return "the caBundle holds no usable CA certificate"
    return context


def probe_url(url: str, ca_bundle: str | None) -> WebhookProbe:
    """Handshake with ``url`` trusting only ``ca_bundle`` (base64 PEM), then ``GET /readyz``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 443
    target = f"{parts.scheme}://{parts.netloc}"
    verified: bool | None = None
    detail = ""
    context: ssl.SSLContext | str = "no caBundle" if not ca_bundle else _ca_context(ca_bundle)
    if isinstance(context, str):
        verified, detail = False, context
    else:
        try:
            with (
                socket.create_connection((host, port), timeout=TIMEOUT) as sock,
                context.wrap_socket(sock, server_hostname=host),
            ):
                verified = True
        except ssl.SSLCertVerificationError as exc:
            verified, detail = False, str(exc.verify_message or exc.reason)
        except ssl.SSLError as exc:
            verified, detail = False, f"TLS error {exc.reason}"
        except OSError as exc:
            return WebhookProbe(
                target,
                None,
                f"{target} unreachable ({exc.strerror or type(exc).__name__})",
                False,
                f"{target} unreachable ({exc.strerror or type(exc).__name__})",
            )
    # Readiness is asked even when the certificate does not verify: both answers matter.
    ready_context = context if verified else ssl._create_unverified_context()  # noqa: S323
    assert isinstance(ready_context, ssl.SSLContext)
    try:
        connection = http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=ready_context)
        try:
            connection.request("GET", "/readyz")
            status = connection.getresponse().status
        finally:
            connection.close()
    except (OSError, http.client.HTTPException) as exc:
        return WebhookProbe(target, verified, detail, False, f"GET {target}/readyz failed ({type(exc).__name__})")
    return WebhookProbe(target, verified, detail, status == 200, f"GET {target}/readyz answered {status}")


def probe_endpoints(service: dict[str, Any], endpoints: dict[str, Any] | None) -> WebhookProbe:
    """Readiness of a ``clientConfig.service`` webhook from its Endpoints."""
    target = f"service {service.get('namespace')}/{service.get('name')}"
    if endpoints is None:
        return WebhookProbe(target, None, "", False, f"{target} has no Endpoints (no Service, or no selector)")
    ready = sum(len(subset.get("addresses") or []) for subset in endpoints.get("subsets") or [])
    not_ready = sum(len(subset.get("notReadyAddresses") or []) for subset in endpoints.get("subsets") or [])
    detail = f"{target}: {ready} ready, {not_ready} not ready endpoint(s)"
    return WebhookProbe(
        target,
        None,
        "the serving certificate of a service webhook is reachable only inside the cluster",
        ready > 0,
        detail,
    )


def cert_secret_names(pod: dict[str, Any]) -> list[str]:
    """The Secrets a webhook Pod takes its serving certificate from: ``--cert-secret`` (self mode) or a volume."""
    names: list[str] = []
    spec = pod.get("spec") or {}
    for container in spec.get("containers") or []:
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        for index, arg in enumerate(argv):
            if arg.startswith("--cert-secret="):
                names.append(arg.split("=", 1)[1])
            elif arg == "--cert-secret" and index + 1 < len(argv):
                names.append(argv[index + 1])
    for volume in spec.get("volumes") or []:
        secret = volume.get("secret") or {}
        if secret.get("secretName"):
            names.append(str(secret["secretName"]))
    return list(dict.fromkeys(names))


def verify_service_certificate(
    service: dict[str, Any], ca_bundle: str | None, secrets: dict[str, dict[str, Any] | None]
) -> tuple[bool | None, str]:
    """Whether ``ca_bundle`` verifies the serving certificate found in the webhook Pod's Secrets.

    Checked as the API server does for a service webhook: the chain to the bundle, validity,
    serverAuth, and the name ``<service>.<namespace>.svc`` it dials. Only ``tls.crt`` is read;
    the key in the same Secret is registered with the redactor and otherwise ignored.
    """
    from webhook.observability.logs import register_secret
    from webhook.tls.pki import CertificateVerificationError, verify_chain

    if not ca_bundle:
        return False, "no caBundle"
    try:
        bundle = base64.b64decode(ca_bundle, validate=True)
    except binascii.Error:
        return False, "the caBundle is not base64-encoded PEM"
    dns_name = f"{service.get('name')}.{service.get('namespace')}.svc"
    for name, secret in secrets.items():
        data = (secret or {}).get("data") or {}
        if "tls.key" in data:
            register_secret(str(data["tls.key"]))
        raw = data.get("tls.crt")
        if not isinstance(raw, str):
            continue
        try:
            cert = base64.b64decode(raw, validate=True)
        except binascii.Error:
            return False, f"Secret {name}: tls.crt is not base64"
        try:
            verify_chain(cert, bundle, dns_name=dns_name)
        except CertificateVerificationError as exc:
            return False, f"Secret {name} for {dns_name}: {exc}"
        return True, f"Secret {name} for {dns_name}"
    return None, "no serving certificate found in the webhook Pods' Secrets (no --cert-secret, no Secret volume)"
