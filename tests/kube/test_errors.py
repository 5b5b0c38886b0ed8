"""API failures: one error type whose kind fits metrics and messages, and never echoes the server."""

from __future__ import annotations

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from webhook.kube.errors import ApiConflict, _classify


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [
        (400, "invalid", False),
        (401, "unauthorized", False),
        (403, "forbidden", False),
        (404, "not_found", False),
        (409, "conflict", False),
        (410, "gone", False),
        (422, "invalid", False),
        (429, "too_many_requests", True),
        (500, "server_error", True),
        (503, "server_error", True),
        (418, "error", True),
    ],
)
def test_http_statuses_map_to_kinds(status: int, kind: str, transient: bool) -> None:
    error = _classify(ApiException(status=status, reason="secret body echoed here"), "create Secret team-a/x")
    assert (error.kind, error.status, error.transient) == (kind, status, transient)
    assert str(error) == f"create Secret team-a/x: HTTP {status}"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ApiException(status=0, reason="TLS handshake"), "unavailable"),
        (urllib3.exceptions.NewConnectionError(None, "refused"), "unavailable"),  # type: ignore[arg-type]
        (ConnectionResetError(), "unavailable"),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), "timeout"),  # type: ignore[arg-type]
        (TimeoutError(), "timeout"),
        (urllib3.exceptions.ProtocolError("broken"), "unavailable"),
        (ValueError("odd"), "error"),
    ],
    ids=["tls", "refused", "reset", "read-timeout", "timeout", "protocol", "other"],
)
def test_transport_failures_map_to_kinds(exc: BaseException, kind: str) -> None:
    error = _classify(exc, "list Namespaces")
    assert error.kind == kind
    assert error.status is None
    assert str(error) == f"list Namespaces: {kind.replace('_', ' ')}"


def test_an_api_error_is_passed_through() -> None:
    original = ApiConflict(action="create Secret", status=409)
    assert _classify(original, "another action") is original
