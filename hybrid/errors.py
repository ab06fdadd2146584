"""One exception type per OpenAI error class, and the one place they become wire objects.

Every error the router returns has OpenAI's shape::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

and the status code the official SDKs map to the matching exception class
(400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429 RateLimitError, ...).
"""

from __future__ import annotations

from typing import Any


class HybridError(Exception):
    """Base class: an error that is sent to the client as an OpenAI error object."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None
    #: another backend may succeed where this one failed (connect errors, timeouts, 5xx, 429)
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}
        self.retry_after_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(HybridError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(HybridError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(HybridError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class NotFoundError(HybridError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class MethodNotAllowedError(HybridError):
    status_code = 405
    error_type = "invalid_request_error"


class RequestTooLargeError(HybridError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(HybridError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s
        if retry_after_s is not None:
            self.headers.setdefault("retry-after", str(max(1, int(retry_after_s + 0.999))))


class InsufficientQuotaError(HybridError):
    """A budget is spent and its action is to refuse (OpenAI's own shape for an exhausted quota)."""

    status_code = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class ServerError(HybridError):
    status_code = 500
    error_type = "server_error"


class UpstreamError(HybridError):
    """An upstream backend failed and no fallback could answer."""

    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"
    retryable = True


class ServiceUnavailableError(HybridError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"
    retryable = True


class UpstreamTimeoutError(HybridError):
    status_code = 504
    error_type = "server_error"
    default_code = "upstream_timeout"
    retryable = True


_BY_4XX_STATUS: dict[int, type[HybridError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    413: RequestTooLargeError,
    429: RateLimitError,
}


def error_for_status(status: int, message: str, **kwargs: Any) -> HybridError:
    """The router's exception for an upstream's HTTP status: 4xx keep their status, 5xx become retryable 502s."""
    if status >= 500:
        return UpstreamError(message, **kwargs)
    cls = _BY_4XX_STATUS.get(status, InvalidRequestError)
    err = cls(message, **kwargs)
    err.status_code = status
    return err
