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

from webhook.ops.findings import WebhookProbe

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
