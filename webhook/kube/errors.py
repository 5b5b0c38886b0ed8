"""API failures as one exception hierarchy, described without anything the server sent back.

Callers catch what they can handle by class (``except ApiConflict``: another writer won;
``except ApiNotFound``); ``kind`` stays on every instance as the bounded word metrics and
log lines use. Nothing here holds a response body or a client exception's text: those can
carry credentials.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, Final

import urllib3
from kubernetes.client.exceptions import ApiException

_MIN_TIMEOUT: Final = 0.05


class ApiError(Exception):
    """A failed API call: ``action`` says what was attempted, ``status`` the HTTP status if any.

    This base class itself stands for a failure of no more specific kind (``kind`` "error");
    the subclasses below name the others.
    """

    kind: ClassVar[str] = "error"
    #: Worth retrying later without any change on our side.
    transient: ClassVar[bool] = True

    def __init__(self, *, action: str, status: int | None = None) -> None:
        self.action = action
        self.status = status
        detail = f"HTTP {status}" if status else self.kind.replace("_", " ")
        super().__init__(f"{action}: {detail}")


class ApiTimeout(ApiError):
    """No answer within the time the call was given (or none was left to start it)."""

    kind = "timeout"


class ApiUnavailable(ApiError):
    """Connection refused or reset, DNS, TLS: the API server could not be reached."""

    kind = "unavailable"


class ApiTooManyRequests(ApiError):
    kind = "too_many_requests"


class ApiServerError(ApiError):
    """A 5xx, or a watch stream's ERROR event with a 5xx code."""

    kind = "server_error"


class ApiUnauthorized(ApiError):
    kind = "unauthorized"
    transient = False


class ApiForbidden(ApiError):
    """RBAC said no (or we refused to touch an object that is not ours)."""

    kind = "forbidden"
    transient = False


class ApiNotFound(ApiError):
    kind = "not_found"
    transient = False


class ApiConflict(ApiError):
    """409: another writer won, or the object changed since it was read."""

    kind = "conflict"
    transient = False


class ApiGone(ApiError):
    """410: a list's continue token or a watch's resourceVersion is too old."""

    kind = "gone"
    transient = False


class ApiInvalid(ApiError):
    kind = "invalid"
    transient = False


_BY_STATUS: Final[Mapping[int, type[ApiError]]] = MappingProxyType(
    {
        400: ApiInvalid,
        401: ApiUnauthorized,
        403: ApiForbidden,
        404: ApiNotFound,
        409: ApiConflict,
        410: ApiGone,
        422: ApiInvalid,
        429: ApiTooManyRequests,
    }
)


def error_for_status(status: int, *, action: str) -> ApiError:
    """The :class:`ApiError` subclass for an HTTP status (5xx: :class:`ApiServerError`)."""
    cls = _BY_STATUS.get(status, ApiServerError if status >= 500 else ApiError)
    return cls(action=action, status=status)


def _classify(exc: BaseException, action: str) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        if status == 0:  # the client's own wrapper for TLS errors and the like
            return ApiUnavailable(action=action)
        return error_for_status(status, action=action)
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionError):
        # Checked first: urllib3 makes NewConnectionError a ConnectTimeoutError, for history's sake.
        return ApiUnavailable(action=action)
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return ApiTimeout(action=action)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return ApiUnavailable(action=action)
    return ApiError(action=action)


def _timeout(seconds: float) -> float:
    return max(_MIN_TIMEOUT, seconds)
