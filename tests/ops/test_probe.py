"""The certificate check of a service webhook: the serving certificate found through its Pods' Secrets."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from webhook.ops.probe import cert_secret_names, probe_endpoints, verify_service_certificate
from webhook.tls.certs import write_local_certs

SERVICE = {"namespace": "tools", "name": "psi", "path": "/mutate", "port": 443}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    base = tmp_path_factory.mktemp("certs")
    return {
        "right": write_local_certs(service="psi", namespace="tools", out_dir=base / "right"),
        "other": write_local_certs(service="psi", namespace="tools", out_dir=base / "other"),
        "wrong-name": write_local_certs(service="other", namespace="tools", out_dir=base / "wrong"),
    }


def tls_secret(files: dict[str, Path]) -> dict[str, Any]:
    return {"data": {"tls.crt": b64(files["tls.crt"].read_bytes()), "tls.key": b64(files["tls.key"].read_bytes())}}


@pytest.mark.parametrize(
    ("serving", "bundle", "verified", "fragment"),
    [
        pytest.param("right", "right", True, "Secret psi-tls for psi.tools.svc", id="verifies"),
        pytest.param("right", "other", False, "is not signed by any of the 1 CA(s)", id="wrong-ca"),
        pytest.param("wrong-name", "wrong-name", False, "psi.tools.svc", id="wrong-name"),
    ],
)
def test_verify_service_certificate(
    certs: dict[str, dict[str, Path]], serving: str, bundle: str, verified: bool, fragment: str
) -> None:
    ca_bundle = b64(certs[bundle]["ca.crt"].read_bytes())
    result, detail = verify_service_certificate(SERVICE, ca_bundle, {"psi-tls": tls_secret(certs[serving])})
    assert result is verified
    assert fragment in detail
    assert "PRIVATE KEY" not in detail


def test_no_certificate_is_not_a_verdict() -> None:
    assert verify_service_certificate(SERVICE, b64(b"x"), {"other": {"data": {}}})[0] is None
    assert verify_service_certificate(SERVICE, None, {})[0] is False


def test_cert_secret_names_from_self_mode_args_and_volumes() -> None:
    pod = {
        "spec": {
            "containers": [{"args": ["serve", "--cert-mode=self", "--cert-secret=psi-tls"]}],
            "volumes": [{"name": "tls", "secret": {"secretName": "files-tls"}}, {"name": "tmp", "emptyDir": {}}],
        }
    }
    assert cert_secret_names(pod) == ["psi-tls", "files-tls"]
    assert cert_secret_names({"spec": {"containers": [{"args": ["--cert-secret", "x"]}]}}) == ["x"]


def test_endpoints_readiness() -> None:
    ready = probe_endpoints(SERVICE, {"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": []}]})
    assert ready.ready is True
    assert probe_endpoints(SERVICE, {"subsets": [{"notReadyAddresses": [{"ip": "10.0.0.1"}]}]}).ready is False
    assert probe_endpoints(SERVICE, None).ready is False
