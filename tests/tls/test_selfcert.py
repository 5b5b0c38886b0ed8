"""Self-managed certificates: the rotation plan, step by step, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from webhook.tls.pki import load_certificates, service_dns_names, verify_chain
from webhook.tls.selfcert import CertState, plan

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SERVICE, NAMESPACE = "pullsecret-injector", "pullsecret-system"
CA_LIFE, CERT_LIFE = timedelta(days=300), timedelta(days=30)


def fresh(now: datetime = T0) -> CertState:
    state = step(None, now=now, trusted=None)
    assert state is not None
    return state


def step(state: CertState | None, *, now: datetime, trusted: bytes | None) -> CertState | None:
    return plan(
        current=state,
        service=SERVICE,
        namespace=NAMESPACE,
        trusted_bundle=trusted,
        now=now,
        ca_valid_for=CA_LIFE,
        cert_valid_for=CERT_LIFE,
    )


def issuer_of(cert_pem: bytes) -> x509.Name:
    return load_certificates(cert_pem)[0].issuer


def test_first_state_is_a_ca_and_a_serving_cert_for_the_service() -> None:
    state = fresh()
    assert len(load_certificates(state.ca_bundle)) == 1
    verify_chain(state.cert, state.ca_bundle, dns_name=f"{SERVICE}.{NAMESPACE}.svc", now=T0 + timedelta(minutes=1))
    san = load_certificates(state.cert)[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(service_dns_names(SERVICE, NAMESPACE)) <= set(san.get_values_for_type(x509.DNSName))


def test_nothing_to_do_while_everything_is_young() -> None:
    state = fresh()
    assert step(state, now=T0 + timedelta(days=5), trusted=state.ca_bundle) is None


def test_serving_cert_is_renewed_by_the_same_ca_before_expiry() -> None:
    state = fresh()
    renewed = step(state, now=T0 + timedelta(days=25), trusted=state.ca_bundle)
    assert renewed is not None
    assert renewed.ca_bundle == state.ca_bundle  # the API server's trust does not change
    assert renewed.cert != state.cert
    verify_chain(renewed.cert, state.ca_bundle, now=T0 + timedelta(days=25))


def young_cert_late_in_ca_life() -> tuple[CertState, datetime]:
    """A state on day 190 whose serving cert was just renewed, and day 210 of the 300-day CA."""
    base = fresh()
    renewed = step(base, now=T0 + timedelta(days=190), trusted=base.ca_bundle)
    assert renewed is not None
    assert renewed.ca_bundle == base.ca_bundle  # only the serving cert was renewed
    return renewed, T0 + timedelta(days=210)


def test_ca_rotation_never_serves_a_cert_the_api_server_does_not_trust() -> None:
    state, late = young_cert_late_in_ca_life()  # under a third of the CA's life left
    # Step 1: a new CA joins the bundle (first), the old one stays, the serving cert is unchanged.
    rotated = step(state, now=late, trusted=state.ca_bundle)
    assert rotated is not None
    cas = load_certificates(rotated.ca_bundle)
    assert len(cas) == 2
    assert cas[1] == load_certificates(state.ca_bundle)[0]
    assert rotated.cert == state.cert
    # The serving cert is now from a CA that is not the signing one, but the API server
    # still trusts only the old bundle: wait.
    assert step(rotated, now=late, trusted=state.ca_bundle) is None
    # Step 2 done (caBundle patched): step 3 issues from the new CA.
    switched = step(rotated, now=late, trusted=rotated.ca_bundle)
    assert switched is not None
    assert issuer_of(switched.cert) == cas[0].subject
    verify_chain(switched.cert, rotated.ca_bundle, now=late)
    assert step(switched, now=late, trusted=rotated.ca_bundle) is None


def test_an_expired_serving_cert_is_replaced_even_before_the_bundle_is_trusted() -> None:
    state = fresh()
    later = T0 + timedelta(days=40)
    replaced = step(state, now=later, trusted=None)
    assert replaced is not None
    assert replaced.cert != state.cert


def test_expired_cas_leave_the_bundle() -> None:
    state, late = young_cert_late_in_ca_life()
    rotated = step(state, now=late, trusted=state.ca_bundle)
    assert rotated is not None
    switched = step(rotated, now=late, trusted=rotated.ca_bundle)
    assert switched is not None
    # Keep the serving cert young so only the bundle is at stake.
    after_old_ca = T0 + timedelta(days=301)
    tidy = plan(
        current=CertState(switched.ca_bundle, switched.ca_key, switched.cert, switched.key),
        service=SERVICE,
        namespace=NAMESPACE,
        trusted_bundle=switched.ca_bundle,
        now=after_old_ca,
        ca_valid_for=CA_LIFE,
        cert_valid_for=timedelta(days=300),
    )
    assert tidy is not None
    assert len(load_certificates(tidy.ca_bundle)) == 1


@pytest.mark.parametrize(
    ("service", "namespace"), [("renamed", NAMESPACE), (SERVICE, "moved")], ids=["new-service", "new-namespace"]
)
def test_a_cert_that_does_not_cover_the_service_is_reissued(service: str, namespace: str) -> None:
    state = fresh()
    reissued = plan(current=state, service=service, namespace=namespace, trusted_bundle=state.ca_bundle, now=T0)
    assert reissued is not None
    san = load_certificates(reissued.cert)[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{service}.{namespace}.svc" in san.get_values_for_type(x509.DNSName)


def test_secret_round_trip_and_corrupt_secrets() -> None:
    state = fresh()
    secret = {"data": state.secret_data()}
    assert CertState.from_secret(secret) == state
    other = fresh()
    mismatched = {"data": {**state.secret_data(), "tls.key": other.secret_data()["tls.key"]}}
    assert CertState.from_secret(mismatched) is None
    assert CertState.from_secret({"data": {"ca.crt": "!!"}}) is None
    assert CertState.from_secret({}) is None
