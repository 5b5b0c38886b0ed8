"""Tests for webhook.tls.pki: what the API server will demand of our certificates, and rotation logic."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.tls.pki import (
    CLOCK_SKEW,
    CertBundle,
    CertificateVerificationError,
    build_bundle,
    build_ca,
    build_serving_cert,
    certificate_fingerprint,
    load_certificates,
    merge_ca_bundle,
    needs_renewal,
    not_after,
    private_key_matches_certificate,
    service_dns_names,
    verify_chain,
)

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
SERVICE, NAMESPACE = "pullsecret-injector", "infra"
ALL_SERVICE_NAMES = [
    "pullsecret-injector",
    "pullsecret-injector.infra",
    "pullsecret-injector.infra.svc",
    "pullsecret-injector.infra.svc.cluster.local",
]


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


@pytest.fixture(scope="module")
def bundle() -> CertBundle:
    return build_bundle(
        service=SERVICE,
        namespace=NAMESPACE,
        extra_dns=["localhost"],
        ip_addresses=["127.0.0.1", "::1"],
        now=NOW,
    )


# --------------------------------------------------------------------------- building


def test_service_dns_names_lists_every_in_cluster_form() -> None:
    assert service_dns_names(SERVICE, NAMESPACE) == ALL_SERVICE_NAMES


def test_service_dns_names_honours_cluster_domain() -> None:
    assert service_dns_names("s", "n", cluster_domain="corp.example")[-1] == "s.n.svc.corp.example"


@pytest.mark.parametrize(("service", "namespace"), [("", "ns"), ("svc", "")], ids=["no-service", "no-namespace"])
def test_service_dns_names_rejects_empty(service: str, namespace: str) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        service_dns_names(service, namespace)


def test_ca_is_a_constrained_p256_ca() -> None:
    ca_pem, key_pem = build_ca(common_name="test-ca", now=NOW)
    ca = cert(ca_pem)
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test-ca"
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public_key)
    assert private_key_matches_certificate(ca_pem, key_pem)
    # Default lifetime: ten years, back-dated for clock skew.
    assert ca.not_valid_after_utc == NOW + timedelta(days=3650)
    assert ca.not_valid_before_utc == NOW - CLOCK_SKEW
    ca.verify_directly_issued_by(ca)  # self-signed


def test_serving_cert_has_what_the_api_server_requires(bundle: CertBundle) -> None:
    leaf, ca = cert(bundle.cert_pem), cert(bundle.ca_cert_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [*ALL_SERVICE_NAMES, "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    assert private_key_matches_certificate(bundle.cert_pem, bundle.key_pem)
    assert not private_key_matches_certificate(bundle.cert_pem, bundle.ca_key_pem)
    assert leaf.not_valid_after_utc == NOW + timedelta(days=365)
    verify_chain(bundle.cert_pem, bundle.ca_cert_pem, now=NOW)


@pytest.mark.parametrize(
    "name",
    [*ALL_SERVICE_NAMES, "localhost", "127.0.0.1", "::1"],
    ids=["svc", "svc.ns", "svc.ns.svc", "fqdn", "localhost", "ipv4", "ipv6"],
)
def test_serving_cert_verifies_for_every_name(bundle: CertBundle, name: str) -> None:
    verify_chain(bundle.cert_pem, bundle.ca_cert_pem, dns_name=name, now=NOW)


def test_serving_cert_rejected_for_a_name_it_does_not_cover(bundle: CertBundle) -> None:
    with pytest.raises(CertificateVerificationError, match="subjectAltName"):
        verify_chain(bundle.cert_pem, bundle.ca_cert_pem, dns_name="other.infra.svc", now=NOW)


def test_serving_cert_names_are_normalised_and_deduplicated() -> None:
    ca_pem, ca_key = build_ca(now=NOW)
    cert_pem, _ = build_serving_cert(
        ca_cert_pem=ca_pem, ca_key_pem=ca_key, dns_names=["A.Example.", "a.example", "b.example"], now=NOW
    )
    san = cert(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example", "b.example"]


def test_serving_cert_never_outlives_its_ca() -> None:
    ca_pem, ca_key = build_ca(valid_for=timedelta(days=30), now=NOW)
    cert_pem, _ = build_serving_cert(
        ca_cert_pem=ca_pem, ca_key_pem=ca_key, dns_names=["x"], valid_for=timedelta(days=365), now=NOW
    )
    assert not_after(cert_pem) == not_after(ca_pem) == NOW + timedelta(days=30)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dns_names": []}, "at least one DNS name"),
        ({"dns_names": ["x"], "ip_addresses": ["not-an-ip"]}, "does not appear to be"),
        ({"dns_names": ["x"], "valid_for": timedelta(0)}, "must be positive"),
        ({"dns_names": ["bad name"]}, "invalid DNS name"),
        ({"dns_names": ["x"], "now": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"dns_names": ["x"], "now": NOW + timedelta(days=4000)}, "CA expired"),
    ],
    ids=["no-names", "bad-ip", "zero-validity", "bad-dns", "naive-now", "ca-expired"],
)
def test_serving_cert_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    ca_pem, ca_key = build_ca(now=NOW)
    arguments: dict[str, object] = {"now": NOW, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_serving_cert(ca_cert_pem=ca_pem, ca_key_pem=ca_key, **arguments)  # type: ignore[arg-type]


def test_serving_cert_rejects_mismatched_ca_key() -> None:
    ca_pem, _ = build_ca(now=NOW)
    _, other_key = build_ca(now=NOW)
    with pytest.raises(ValueError, match="does not belong"):
        build_serving_cert(ca_cert_pem=ca_pem, ca_key_pem=other_key, dns_names=["x"], now=NOW)


def test_serving_cert_cannot_be_used_as_a_ca(bundle: CertBundle) -> None:
    with pytest.raises(ValueError, match="not a CA"):
        build_serving_cert(ca_cert_pem=bundle.cert_pem, ca_key_pem=bundle.key_pem, dns_names=["x"], now=NOW)


def test_build_bundle_reuses_an_existing_ca(bundle: CertBundle) -> None:
    renewed = build_bundle(
        service=SERVICE,
        namespace=NAMESPACE,
        ca_cert_pem=bundle.ca_cert_pem,
        ca_key_pem=bundle.ca_key_pem,
        now=NOW + timedelta(days=300),
    )
    assert renewed.ca_cert_pem == bundle.ca_cert_pem
    assert renewed.cert_pem != bundle.cert_pem
    # The published caBundle does not change, yet the new cert verifies against it.
    verify_chain(
        renewed.cert_pem,
        bundle.ca_bundle_pem,
        dns_name="pullsecret-injector.infra.svc",
        now=NOW + timedelta(days=301),
    )


def test_build_bundle_requires_both_ca_halves(bundle: CertBundle) -> None:
    with pytest.raises(ValueError, match="both"):
        build_bundle(service=SERVICE, namespace=NAMESPACE, ca_cert_pem=bundle.ca_cert_pem)


def test_bundle_repr_never_contains_private_keys(bundle: CertBundle) -> None:
    text = repr(bundle)
    assert b"PRIVATE KEY" in bundle.key_pem
    assert "PRIVATE KEY" not in text
    assert "ca_key_pem" not in text
    assert "key_pem=" not in text.replace("ca_cert_pem=", "")


def test_tls_secret_data_uses_kubernetes_key_names(bundle: CertBundle) -> None:
    assert bundle.tls_secret_data() == {
        "ca.crt": bundle.ca_cert_pem,
        "tls.crt": bundle.cert_pem,
        "tls.key": bundle.key_pem,
    }


# --------------------------------------------------------------------------- renewal


@pytest.mark.parametrize(
    ("elapsed", "renew_before", "expected"),
    [
        (timedelta(days=0), 1 / 3, False),
        (timedelta(days=240), 1 / 3, False),
        (timedelta(days=250), 1 / 3, True),
        (timedelta(days=400), 1 / 3, True),
        (timedelta(days=300), 0.1, False),
        (timedelta(days=340), 0.1, True),
        (timedelta(days=330), timedelta(days=30), False),
        (timedelta(days=340), timedelta(days=30), True),
        (timedelta(days=-10), 1 / 3, False),
    ],
    ids=[
        "fresh",
        "two-thirds-minus",
        "under-a-third-left",
        "expired",
        "fraction-0.1-early",
        "fraction-0.1-due",
        "timedelta-early",
        "timedelta-due",
        "not-yet-valid",
    ],
)
def test_needs_renewal(bundle: CertBundle, elapsed: timedelta, renew_before: timedelta | float, expected: bool) -> None:
    # The cert is valid from NOW - 5min to NOW + 365d.
    assert needs_renewal(bundle.cert_pem, now=NOW + elapsed, renew_before=renew_before) is expected


def test_needs_renewal_default_is_one_third(bundle: CertBundle) -> None:
    lifetime = not_after(bundle.cert_pem) - cert(bundle.cert_pem).not_valid_before_utc
    boundary = not_after(bundle.cert_pem) - lifetime / 3
    assert not needs_renewal(bundle.cert_pem, now=boundary - timedelta(seconds=1))
    assert needs_renewal(bundle.cert_pem, now=boundary + timedelta(seconds=1))


@pytest.mark.parametrize(
    "renew_before",
    [0.0, 1.0, 1.5, True, timedelta(days=-1)],
    ids=["zero", "one", "above-one", "bool", "negative"],
)
def test_needs_renewal_rejects_nonsense_thresholds(bundle: CertBundle, renew_before: timedelta | float) -> None:
    with pytest.raises(ValueError, match="renew_before"):
        needs_renewal(bundle.cert_pem, now=NOW, renew_before=renew_before)


def test_not_after_is_timezone_aware(bundle: CertBundle) -> None:
    assert not_after(bundle.cert_pem) == NOW + timedelta(days=365)
    assert not_after(bundle.cert_pem).tzinfo is not None


# --------------------------------------------------------------------------- caBundle merging


def _ca(valid_from: datetime, days: int, name: str) -> bytes:
    return build_ca(common_name=name, valid_for=timedelta(days=days), now=valid_from)[0]


OLD_VALID = _ca(NOW - timedelta(days=100), 3650, "old-valid")
OLD_EXPIRED = _ca(NOW - timedelta(days=100), 50, "old-expired")
OTHER_VALID = _ca(NOW - timedelta(days=10), 3650, "other-valid")
NEW = _ca(NOW, 3650, "new")


def _names(pem: bytes) -> list[str]:
    return [str(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value) for c in load_certificates(pem)]


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (b"", ["new"]),
        (b"  \n", ["new"]),
        (OLD_VALID, ["new", "old-valid"]),
        (OLD_EXPIRED, ["new"]),
        (OLD_VALID + OLD_EXPIRED + OTHER_VALID, ["new", "old-valid", "other-valid"]),
        (NEW, ["new"]),
        (OLD_VALID + NEW, ["new", "old-valid"]),
        (OLD_VALID + OLD_VALID, ["new", "old-valid"]),
    ],
    ids=[
        "empty",
        "whitespace",
        "keeps-valid-old",
        "drops-expired",
        "mixed",
        "already-present",
        "new-already-at-end",
        "dedupes-old",
    ],
)
def test_merge_ca_bundle(existing: bytes, expected: list[str]) -> None:
    merged = merge_ca_bundle(existing, NEW, now=NOW)
    assert _names(merged) == expected


def test_merge_ca_bundle_is_idempotent() -> None:
    once = merge_ca_bundle(OLD_VALID + OLD_EXPIRED, NEW, now=NOW)
    assert merge_ca_bundle(once, NEW, now=NOW) == once


@pytest.mark.parametrize(
    ("existing", "new", "message"),
    [
        (b"garbage", NEW, "not a PEM certificate bundle"),
        (OLD_VALID, b"", "contains no certificate"),
    ],
    ids=["corrupt-existing", "empty-new"],
)
def test_merge_ca_bundle_rejects_bad_input(existing: bytes, new: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        merge_ca_bundle(existing, new, now=NOW)


def test_merged_bundle_verifies_certs_from_old_and_new_ca() -> None:
    """The point of merging: during rotation both old and new serving certs are trusted."""
    old = build_bundle(service=SERVICE, namespace=NAMESPACE, now=NOW - timedelta(days=30))
    new = build_bundle(service=SERVICE, namespace=NAMESPACE, now=NOW)
    merged = merge_ca_bundle(old.ca_bundle_pem, new.ca_cert_pem, now=NOW)
    for b in (old, new):
        verify_chain(b.cert_pem, merged, dns_name="pullsecret-injector.infra.svc", now=NOW)
    with pytest.raises(CertificateVerificationError):
        verify_chain(new.cert_pem, old.ca_bundle_pem, now=NOW)


# --------------------------------------------------------------------------- verification


def test_verify_chain_rejects_cert_from_another_ca(bundle: CertBundle) -> None:
    stranger = build_bundle(service=SERVICE, namespace=NAMESPACE, now=NOW)
    with pytest.raises(CertificateVerificationError, match=r"not signed by any of the 1 CA\(s\) in the bundle"):
        verify_chain(stranger.cert_pem, bundle.ca_cert_pem, now=NOW)


@pytest.mark.parametrize(
    ("when", "message"),
    [(timedelta(days=366), "not valid"), (-timedelta(days=1), "not valid")],
    ids=["expired", "not-yet-valid"],
)
def test_verify_chain_checks_validity_period(bundle: CertBundle, when: timedelta, message: str) -> None:
    with pytest.raises(CertificateVerificationError, match=message):
        verify_chain(bundle.cert_pem, bundle.ca_cert_pem, now=NOW + when)


def test_verify_chain_rejects_a_ca_as_server_cert(bundle: CertBundle) -> None:
    with pytest.raises(CertificateVerificationError):
        verify_chain(bundle.ca_cert_pem, bundle.ca_cert_pem, now=NOW)


@pytest.mark.parametrize(
    ("cert_pem", "ca_pem", "message"),
    [
        (b"", OLD_VALID, "no certificate"),
        (OLD_VALID, b"", "bundle is empty"),
        (b"junk", OLD_VALID, "not a PEM"),
    ],
    ids=["no-cert", "empty-bundle", "junk-cert"],
)
def test_verify_chain_rejects_missing_input(cert_pem: bytes, ca_pem: bytes, message: str) -> None:
    with pytest.raises(CertificateVerificationError, match=message):
        verify_chain(cert_pem, ca_pem, now=NOW)


def test_certificate_fingerprint_is_stable(bundle: CertBundle) -> None:
    assert certificate_fingerprint(bundle.cert_pem) == certificate_fingerprint(cert(bundle.cert_pem))
    assert len(certificate_fingerprint(bundle.cert_pem)) == 64
