"""API failures are classes a caller can catch, each with the ``kind`` metrics count it by."""

from __future__ import annotations

import pytest
import urllib3
import urllib3.connection
from kubernetes.client.exceptions import ApiException

from webhook.kube.errors import (
    ApiConflict,
    ApiError,
    ApiForbidden,
    ApiGone,
    ApiInvalid,
    ApiNotFound,
    ApiServerError,
    ApiTimeout,
    ApiTooManyRequests,
    ApiUnauthorized,
    ApiUnavailable,
    _classify,
    error_for_status,
)


@pytest.mark.parametrize(
    ("status", "cls", "kind", "transient"),
    [
        pytest.param(400, ApiInvalid, "invalid", False, id="400"),
        pytest.param(401, ApiUnauthorized, "unauthorized", False, id="401"),
        pytest.param(403, ApiForbidden, "forbidden", False, id="403"),
        pytest.param(404, ApiNotFound, "not_found", False, id="404"),
        pytest.param(409, ApiConflict, "conflict", False, id="409"),
        pytest.param(410, ApiGone, "gone", False, id="410"),
        pytest.param(422, ApiInvalid, "invalid", False, id="422"),
        pytest.param(429, ApiTooManyRequests, "too_many_requests", True, id="429"),
        pytest.param(500, ApiServerError, "server_error", True, id="500"),
        pytest.param(503, ApiServerError, "server_error", True, id="503"),
        pytest.param(418, ApiError, "error", True, id="other-4xx"),
    ],
)
def test_each_http_status_is_its_own_class_with_a_kind(
    status: int, cls: type[ApiError], kind: str, transient: bool
) -> None:
    for error in (error_for_status(status, action="get Secret a/b"), _classify(ApiException(status=status), "x")):
        assert type(error) is cls
        assert isinstance(error, ApiError)
        assert (error.kind, error.transient, error.status) == (kind, transient, status)
    assert str(error_for_status(status, action="get Secret a/b")) == f"get Secret a/b: HTTP {status}"


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        pytest.param(ApiException(status=0), ApiUnavailable, id="client-wrapped-tls-error"),
        pytest.param(ConnectionRefusedError(), ApiUnavailable, id="refused"),
        pytest.param(
            urllib3.exceptions.NewConnectionError(urllib3.connection.HTTPConnection("localhost"), "refused"),
            ApiUnavailable,
            id="new-connection",
        ),
        pytest.param(
            urllib3.exceptions.ReadTimeoutError(urllib3.HTTPConnectionPool("localhost"), "/", "slow"),
            ApiTimeout,
            id="read-timeout",
        ),
        pytest.param(TimeoutError(), ApiTimeout, id="timeout"),
        pytest.param(urllib3.exceptions.ProtocolError("reset"), ApiUnavailable, id="protocol"),
        pytest.param(ValueError("odd"), ApiError, id="anything-else"),
    ],
)
def test_client_exceptions_become_the_matching_class(exc: BaseException, cls: type[ApiError]) -> None:
    error = _classify(exc, "list Namespaces")
    assert type(error) is cls
    assert error.action == "list Namespaces"


def test_a_message_says_what_was_attempted_and_never_what_the_server_sent() -> None:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = '{"message": "secret hunter2 is forbidden"}'
    error = _classify(exc, "get Secret a/b")
    assert "hunter2" not in str(error)
    assert str(ApiTimeout(action="get Lease")) == "get Lease: timeout"


def test_a_classified_error_is_returned_as_it_is() -> None:
    error = ApiConflict(action="create Secret a/b")
    assert _classify(error, "other") is error
