"""Certificates for the webhook's TLS endpoint, built with ``cryptography``.

The Kubernetes API server only talks to admission webhooks over HTTPS, and it
verifies the webhook's serving certificate against the ``caBundle`` in the
``MutatingWebhookConfiguration``.  This module holds the *pure* pieces of that
story: building a small private CA and a serving certificate it signs, deciding
when to renew, merging CA bundles so a rotation never breaks in-flight traffic,
and verifying that a certificate actually chains to a bundle before anyone
publishes it.  No I/O at all: writing them to files is :mod:`webhook.tls.certs`'s,
keeping them in a Secret :mod:`webhook.tls.selfcert`'s, so everything here can be
tested, and trusted, without a disk or a cluster.

Design notes (the *why*):

* ECDSA P-256 keys: small, fast handshakes, accepted by every supported
  Kubernetes version (Go's ``crypto/tls``).
* The serving certificate carries every name in the SubjectAltName extension.
  Go has ignored the Common Name for host verification since 1.15, so a
  CN-only certificate is rejected by the API server.
* The CA has ``path_length=0``: it signs leaves only, so a leaked serving key
  can never be used to mint further certificates.
* ``not_valid_before`` is back-dated by a few minutes so a freshly issued
  certificate is not "not yet valid" on an API server whose clock is slightly
  behind ours.
* Rotation is two-phase: first publish a ``caBundle`` that trusts both the old
  and the new CA (:func:`merge_ca_bundle`), *then* switch the serving
  certificate.  Clients that still hold the old bundle keep working with the
  old certificate, clients with the new bundle accept both.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

__all__ = [
    "CA_CERT_FILE",
    "CLOCK_SKEW",
    "DEFAULT_CA_COMMON_NAME",
    "DEFAULT_CA_VALIDITY",
    "DEFAULT_CERT_VALIDITY",
    "DEFAULT_RENEW_FRACTION",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "CertBundle",
    "CertificateVerificationError",
    "build_bundle",
    "build_ca",
    "build_serving_cert",
    "certificate_fingerprint",
    "load_certificates",
    "merge_ca_bundle",
    "needs_renewal",
    "not_after",
    "private_key_matches_certificate",
    "service_dns_names",
    "verify_chain",
]

DEFAULT_CA_COMMON_NAME = "pullsecret-injector-ca"
#: The CA lives long because replacing it requires re-publishing the caBundle.
DEFAULT_CA_VALIDITY = timedelta(days=3650)
#: The serving certificate is cheap to replace (only the pod sees its key).
DEFAULT_CERT_VALIDITY = timedelta(days=365)
#: Renew once less than a third of the lifetime is left: plenty of margin for a
#: failed renewal to be retried and noticed before anything expires.
DEFAULT_RENEW_FRACTION = 1 / 3
#: Tolerated clock skew between us and the API server.
CLOCK_SKEW = timedelta(minutes=5)

CA_CERT_FILE = "ca.crt"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"


class CertificateVerificationError(ValueError):
    """A certificate does not chain to the given CA bundle (or is otherwise unusable)."""


@dataclass(frozen=True, slots=True)
class CertBundle:
    """A CA and a serving certificate it signed, all PEM encoded.

    The private keys are excluded from ``repr`` so that logging a bundle (or an
    exception that carries one) can never leak key material.
    """

    ca_cert_pem: bytes
    ca_key_pem: bytes = field(repr=False)
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def ca_bundle_pem(self) -> bytes:
        """What goes into ``clientConfig.caBundle`` (the API client base64-encodes it)."""
        return self.ca_cert_pem

    @property
    def cert_not_after(self) -> datetime:
        """Expiry of the serving certificate (timezone-aware UTC)."""
        return not_after(self.cert_pem)

    @property
    def ca_not_after(self) -> datetime:
        """Expiry of the CA certificate (timezone-aware UTC)."""
        return not_after(self.ca_cert_pem)

    def tls_secret_data(self) -> dict[str, bytes]:
        """Data for a ``kubernetes.io/tls`` Secret, using the conventional key names."""
        return {CA_CERT_FILE: self.ca_cert_pem, TLS_CERT_FILE: self.cert_pem, TLS_KEY_FILE: self.key_pem}


# --------------------------------------------------------------------------- helpers


def _now(now: datetime | None) -> datetime:
    """Return an aware UTC "now"; naive datetimes are rejected because they are ambiguous."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("`now` must be timezone-aware (e.g. datetime.now(UTC))")
    return now.astimezone(UTC)


def _positive(valid_for: timedelta, name: str) -> timedelta:
    if valid_for <= timedelta(0):
        raise ValueError(f"{name} must be positive, got {valid_for}")
    return valid_for


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8: what Kubernetes TLS secrets, Go and OpenSSL all expect.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _signing_key(key_pem: bytes) -> CertificateIssuerPrivateKeyTypes:
    """Load a PEM private key that is able to sign certificates."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # The message from cryptography never contains key material.
        raise ValueError(f"cannot load private key: {exc}") from None
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey,
    ):
        raise ValueError(f"private key of type {type(key).__name__} cannot sign certificates")
    return key


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign the message directly and must be given no hash.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Parse every certificate in a PEM blob; an empty/whitespace blob yields ``[]``.

    Raises :class:`ValueError` for anything that is not PEM certificates, so a
    corrupted caBundle is noticed rather than silently replaced.
    """
    if not pem.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate bundle: {exc}") from None


def _first_certificate(cert_pem: bytes) -> x509.Certificate:
    certs = load_certificates(cert_pem)
    if not certs:
        raise ValueError("no certificate found in PEM data")
    return certs[0]


def certificate_fingerprint(cert: x509.Certificate | bytes) -> str:
    """SHA-256 fingerprint (hex) of a certificate or of the first certificate in a PEM blob.

    Safe to log: it identifies the certificate without revealing anything secret.
    """
    if isinstance(cert, bytes):
        cert = _first_certificate(cert)
    return cert.fingerprint(hashes.SHA256()).hex()


def private_key_matches_certificate(cert_pem: bytes, key_pem: bytes) -> bool:
    """True when ``key_pem`` is the private half of the first certificate's public key.

    Checked before a certificate is served, because OpenSSL leaves an
    ``SSLContext`` without a usable key if a mismatched pair is loaded into it.
    """
    cert = _first_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    return _public_der(cert.public_key()) == _public_der(key.public_key())


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _builder(
    *, subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, starts: datetime, expires: datetime
) -> x509.CertificateBuilder:
    """What every certificate here starts from: names, the new key, a random serial, the validity window."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(starts)
        .not_valid_after(expires)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures for both; certificate and CRL signing for the CA only, so a leaked leaf key signs nothing."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _normalise_dns(name: str) -> str:
    normalised = name.strip().rstrip(".").lower()
    if not normalised or " " in normalised:
        raise ValueError(f"invalid DNS name: {name!r}")
    return normalised


# --------------------------------------------------------------------------- builders


def build_ca(
    *,
    common_name: str = DEFAULT_CA_COMMON_NAME,
    valid_for: timedelta = DEFAULT_CA_VALIDITY,
    now: datetime | None = None,
) -> tuple[bytes, bytes]:
    """Create a self-signed CA able to sign serving certificates only.

    Returns ``(ca_cert_pem, ca_key_pem)``.  The CA is constrained with
    ``path_length=0`` and may only sign certificates and CRLs, which limits the
    blast radius if its key is ever exposed.
    """
    issued_at = _now(now)
    _positive(valid_for, "valid_for")
    if not common_name:
        raise ValueError("common_name must not be empty")
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(subject=name, issuer=name, key=key, starts=issued_at - CLOCK_SKEW, expires=issued_at + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def build_serving_cert(
    *,
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    valid_for: timedelta = DEFAULT_CERT_VALIDITY,
    now: datetime | None = None,
) -> tuple[bytes, bytes]:
    """Create a server certificate signed by the CA.  Returns ``(cert_pem, key_pem)``.

    Every DNS name and IP address goes into the SubjectAltName extension
    because that is the only place the API server (Go) looks.  The first name
    is also used as the Common Name, purely for humans reading the cert.  The
    validity is clamped to the CA's: a leaf that outlives its issuer would only
    fail verification later, in a more confusing way.
    """
    issued_at = _now(now)
    _positive(valid_for, "valid_for")
    names = _dedupe(_normalise_dns(n) for n in dns_names)
    ips = _dedupe(str(ipaddress.ip_address(ip.strip())) for ip in ip_addresses)
    if not names and not ips:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")

    ca_cert = _first_certificate(ca_cert_pem)
    ca_key = _signing_key(ca_key_pem)
    if _public_der(ca_cert.public_key()) != _public_der(ca_key.public_key()):
        raise ValueError("the CA private key does not belong to the CA certificate")
    constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not constraints.ca:
        raise ValueError("the issuing certificate is not a CA")

    if issued_at >= ca_cert.not_valid_after_utc:
        raise ValueError(f"the CA expired at {ca_cert.not_valid_after_utc.isoformat()}")
    expires = min(issued_at + valid_for, ca_cert.not_valid_after_utc)
    starts = max(issued_at - CLOCK_SKEW, ca_cert.not_valid_before_utc)
    if expires <= starts:
        raise ValueError(f"the CA is not valid before {ca_cert.not_valid_before_utc.isoformat()}")

    key = _new_key()
    common_name = names[0] if names else ips[0]
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    cert = (
        _builder(subject=subject, issuer=ca_cert.subject, key=key, starts=starts, expires=expires)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, _hash_for(ca_key))
    )
    return _cert_pem(cert), _key_pem(key)


def service_dns_names(service: str, namespace: str, *, cluster_domain: str = "cluster.local") -> list[str]:
    """All names a client inside the cluster may use to reach ``service``.

    The API server dials ``<svc>.<ns>.svc``; the other forms make the same cert
    usable for in-cluster debugging (``curl https://<svc>.<ns>``) too.
    """
    if not service or not namespace:
        raise ValueError("service and namespace must not be empty")
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{cluster_domain}",
    ]


def build_bundle(
    *,
    service: str,
    namespace: str,
    extra_dns: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    ca_common_name: str = DEFAULT_CA_COMMON_NAME,
    ca_valid_for: timedelta = DEFAULT_CA_VALIDITY,
    cert_valid_for: timedelta = DEFAULT_CERT_VALIDITY,
    ca_cert_pem: bytes | None = None,
    ca_key_pem: bytes | None = None,
    cluster_domain: str = "cluster.local",
    now: datetime | None = None,
) -> CertBundle:
    """Build a serving certificate for ``service.namespace``, plus its CA.

    Pass ``ca_cert_pem``/``ca_key_pem`` to renew only the serving certificate
    under an existing CA (no caBundle change needed); otherwise a fresh CA is
    created.
    """
    if (ca_cert_pem is None) != (ca_key_pem is None):
        raise ValueError("pass both ca_cert_pem and ca_key_pem, or neither")
    issued_at = _now(now)
    if ca_cert_pem is None or ca_key_pem is None:
        ca_cert_pem, ca_key_pem = build_ca(common_name=ca_common_name, valid_for=ca_valid_for, now=issued_at)
    names = service_dns_names(service, namespace, cluster_domain=cluster_domain) + list(extra_dns)
    cert_pem, key_pem = build_serving_cert(
        ca_cert_pem=ca_cert_pem,
        ca_key_pem=ca_key_pem,
        dns_names=names,
        ip_addresses=ip_addresses,
        valid_for=cert_valid_for,
        now=issued_at,
    )
    return CertBundle(ca_cert_pem=ca_cert_pem, ca_key_pem=ca_key_pem, cert_pem=cert_pem, key_pem=key_pem)


# --------------------------------------------------------------------------- lifecycle


def not_after(cert_pem: bytes) -> datetime:
    """Expiry (timezone-aware UTC) of the first certificate in ``cert_pem``."""
    return _first_certificate(cert_pem).not_valid_after_utc


def needs_renewal(
    cert_pem: bytes,
    *,
    now: datetime | None = None,
    renew_before: timedelta | float = DEFAULT_RENEW_FRACTION,
) -> bool:
    """Whether the (first) certificate in ``cert_pem`` should be replaced now.

    ``renew_before`` is either a fraction of the certificate's total lifetime
    (default: renew when less than a third is left, like cert-manager) or an
    absolute :class:`~datetime.timedelta`.  A fraction scales with whatever
    validity the certificate was issued with, so short-lived test certs and
    year-long production certs both renew with proportionate margin.
    """
    current = _now(now)
    cert = _first_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if isinstance(renew_before, timedelta):
        margin = renew_before
        if margin < timedelta(0):
            raise ValueError("renew_before must not be negative")
    else:
        if isinstance(renew_before, bool) or not 0 < renew_before < 1:
            raise ValueError(f"renew_before fraction must be in (0, 1), got {renew_before!r}")
        margin = (end - start) * renew_before
    return end - current < margin


def merge_ca_bundle(existing_pem: bytes, new_ca_pem: bytes, *, now: datetime | None = None) -> bytes:
    """Return a caBundle with ``new_ca_pem`` first, followed by the still-valid older CAs.

    This is the first half of a zero-downtime CA rotation: publish the merged
    bundle, wait for it to propagate, then switch the serving certificate.
    Duplicates (same DER) are dropped, as are expired CAs (they can no longer
    validate anything).  The output is deterministic, so merging the same CA
    twice yields byte-identical PEM and does not cause a needless API patch.

    Raises :class:`ValueError` if either input is not a PEM certificate bundle
    or ``new_ca_pem`` is empty.
    """
    current = _now(now)
    new = load_certificates(new_ca_pem)
    if not new:
        raise ValueError("new_ca_pem contains no certificate")
    merged: dict[bytes, x509.Certificate] = {}
    for cert in [*new, *load_certificates(existing_pem)]:
        if cert.not_valid_after_utc <= current:
            continue
        merged.setdefault(cert.fingerprint(hashes.SHA256()), cert)
    return b"".join(_cert_pem(cert) for cert in merged.values())


def _describe(cert: x509.Certificate) -> str:
    return f"subject={cert.subject.rfc4514_string()!r} serial={cert.serial_number:x}"


def verify_chain(
    cert_pem: bytes,
    ca_bundle_pem: bytes,
    *,
    dns_name: str | None = None,
    now: datetime | None = None,
) -> None:
    """Raise :class:`CertificateVerificationError` unless ``cert_pem`` is a valid server cert for the bundle.

    Two layers, so failures are both precise and complete:

    1. find a CA in the bundle that *directly* signed the certificate
       (``verify_directly_issued_by``) - this produces the clear "not signed
       by any CA in the bundle" message that matters most in practice;
    2. run ``cryptography``'s full web-PKI server verification (validity
       period, BasicConstraints, serverAuth EKU, SAN presence, and - if
       ``dns_name`` is given - that the certificate covers that name, e.g. the
       ``<svc>.<ns>.svc`` the API server dials).

    Extra certificates after the leaf in ``cert_pem`` are treated as
    intermediates.
    """
    current = _now(now)
    try:
        chain = load_certificates(cert_pem)
        cas = load_certificates(ca_bundle_pem)
    except ValueError as exc:
        raise CertificateVerificationError(str(exc)) from None
    if not chain:
        raise CertificateVerificationError("no certificate to verify")
    if not cas:
        raise CertificateVerificationError("the CA bundle is empty")
    leaf, intermediates = chain[0], chain[1:]

    issuers = [*cas, *intermediates]
    signed_by_bundle = False
    for issuer in issuers:
        with contextlib.suppress(ValueError, TypeError, InvalidSignature):
            leaf.verify_directly_issued_by(issuer)
            signed_by_bundle = True
            break
    if not signed_by_bundle:
        known = "; ".join(_describe(ca) for ca in cas)
        raise CertificateVerificationError(
            f"certificate ({_describe(leaf)}, issuer={leaf.issuer.rfc4514_string()!r}) is not signed by "
            f"any of the {len(cas)} CA(s) in the bundle: {known}"
        )

    subject: x509.DNSName | x509.IPAddress
    if dns_name is not None:
        subject = _subject_for(dns_name)
    else:
        # Without an explicit name, check against the certificate's own first SAN
        # so the rest of the server profile (EKU, validity, constraints) is verified.
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise CertificateVerificationError(
                f"certificate ({_describe(leaf)}) has no SubjectAltName; the API server rejects CN-only certs"
            ) from None
        dns = san.get_values_for_type(x509.DNSName)
        ips = san.get_values_for_type(x509.IPAddress)
        if dns:
            subject = x509.DNSName(dns[0])
        elif ips:
            subject = x509.IPAddress(ips[0])
        else:
            raise CertificateVerificationError(f"certificate ({_describe(leaf)}) has no DNS or IP SAN")

    verifier = PolicyBuilder().store(Store(cas)).time(current).build_server_verifier(subject)
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise CertificateVerificationError(f"certificate ({_describe(leaf)}) failed verification: {exc}") from None


def _subject_for(name: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(_normalise_dns(name))
