"""API failures as one exception hierarchy, described without anything the server sent back."""

from __future__ import annotations

from typing import Final

import urllib3
from kubernetes.client.exceptions import ApiException

_MIN_TIMEOUT: Final = 0.05


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A failed API call, described without anything the server sent back.

    ``kind`` is one of ``timeout``, ``unavailable`` (connection refused/reset, DNS),
    ``unauthorized``, ``forbidden``, ``not_found``, ``conflict``, ``gone``, ``invalid``,
    ``too_many_requests``, ``server_error``, ``error``.
    """

    def __init__(self, kind: str, *, action: str, status: int | None = None) -> None:
        self.kind = kind
        self.action = action
        self.status = status
        detail = f"HTTP {status}" if status else kind.replace("_", " ")
        super().__init__(f"{action}: {detail}")

    @property
    def transient(self) -> bool:
        """Worth retrying later without any change on our side."""
        return self.kind in ("timeout", "unavailable", "too_many_requests", "server_error", "error")


_STATUS_KINDS: Final = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    410: "gone",
    422: "invalid",
    400: "invalid",
    429: "too_many_requests",
}


def _classify(exc: BaseException, action: str) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        if status == 0:  # the client's own wrapper for TLS errors and the like
            return ApiError("unavailable", action=action)
        kind = _STATUS_KINDS.get(status, "server_error" if status >= 500 else "error")
        return ApiError(kind, action=action, status=status)
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionError):
        # Checked first: urllib3 makes NewConnectionError a ConnectTimeoutError, for history's sake.
        return ApiError("unavailable", action=action)
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return ApiError("timeout", action=action)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return ApiError("unavailable", action=action)
    return ApiError("error", action=action)


def _timeout(seconds: float) -> float:
    return max(_MIN_TIMEOUT, seconds)

