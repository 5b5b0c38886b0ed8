"""Tests for webhook.tls.certs: certificate files are written whole, with their modes, and usable."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.tls.test_pki import ALL_SERVICE_NAMES, NAMESPACE, SERVICE, cert
from webhook.tls.certs import write_file_atomic, write_local_certs
from webhook.tls.pki import private_key_matches_certificate, verify_chain


def test_write_local_certs(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    written = write_local_certs(service=SERVICE, namespace=NAMESPACE, out_dir=out)
    assert set(written) == {"ca.crt", "tls.crt", "tls.key"}
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]  # no temp files left
    assert stat.S_IMODE(written["tls.key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(written["tls.crt"].stat().st_mode) == 0o644
    cert_pem, key_pem = written["tls.crt"].read_bytes(), written["tls.key"].read_bytes()
    serialization.load_pem_private_key(key_pem, password=None)
    assert private_key_matches_certificate(cert_pem, key_pem)
    ca_pem = written["ca.crt"].read_bytes()
    for name in [*ALL_SERVICE_NAMES, "localhost", "127.0.0.1"]:
        verify_chain(cert_pem, ca_pem, dns_name=name)


def test_write_local_certs_overwrites_and_honours_options(tmp_path: Path) -> None:
    first = write_local_certs(service="a", namespace="b", out_dir=tmp_path)
    before = first["tls.crt"].read_bytes()
    second = write_local_certs(service="a", namespace="b", out_dir=tmp_path, extra_dns=(), ip_addresses=())
    after = second["tls.crt"].read_bytes()
    assert after != before
    san = cert(after).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a", "a.b", "a.b.svc", "a.b.svc.cluster.local"]
    assert san.get_values_for_type(x509.IPAddress) == []
    assert stat.S_IMODE(second["tls.key"].stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [pytest.param(0o600, id="private"), pytest.param(0o644, id="public")])
def test_write_file_atomic_replaces_whole_with_the_mode_and_leaves_no_temp_file(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "tls.key"
    target.write_bytes(b"old")
    write_file_atomic(target, b"new", mode=mode)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["tls.key"]
