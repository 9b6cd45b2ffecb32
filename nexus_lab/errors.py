"""Exceptions raised by nexus_lab.

Every error carries a message that names the problem, so that channels can
turn it into a clean response (HTTP JSON, a CLI line, an MCP error) without a
traceback. An error also knows its HTTP form: ``http_status`` (the status
code), :meth:`NexusError.to_dict` (the ``{"type", "message", ...}`` object of
the JSON body) and :attr:`NexusError.headers` (headers the response must carry,
e.g. ``Retry-After`` on a 429). The one function that writes an error as an
HTTP response, :func:`nexus_lab.platform.guard.error_response`, reads only
these three, so an error is built complete where it is raised.

Example::

    from nexus_lab.errors import SessionNotFound
    try:
        manager.update_session_state("nope", {"a": 1})
    except SessionNotFound as exc:
        print(exc)          # Session 'nope' not found or expired
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "NexusError",
    "ConfigError",
    "InputValidationError",
    "DeploymentNotFound",
    "DeploymentExists",
    "SessionNotFound",
    "SessionStateError",
    "ProviderError",
    "AuthenticationError",
    "RateLimitExceeded",
    "AgentExecutionError",
    "PortInUseError",
    "BadRequest",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "MisdirectedRequest",
    "HeadersTooLarge",
    "RequestTimeout",
    "MethodNotAllowed",
    "HTTPError",
    "InternalError",
    "NexusConnectionError",
    "ServiceUnavailable",
    "ExecutionTimeout",
]


class NexusError(Exception):
    """Base class of every nexus_lab error."""

    http_status: int = 500
    error_type: str = "nexus_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError subclasses would otherwise quote the message
        return self.message

    def to_dict(self) -> dict:
        """The JSON error body used by every channel: ``{"type": ..., "message": ...}``."""
        return {"type": self.error_type, "message": self.message}

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers a response for this error carries (none unless the subclass has some).

        A new dict on every access, so a caller may add to it freely.
        """
        return {}


class ConfigError(NexusError, ValueError):
    """A configuration value has the wrong type or an impossible value."""

    http_status = 400
    error_type = "config_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InputValidationError(NexusError, ValueError):
    """Inputs do not match a deployment's input schema (HTTP 422)."""

    http_status = 422
    error_type = "validation_error"

    def __init__(self, message: str, field: str | None = None, errors: list | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.errors = errors or []

    def to_dict(self) -> dict:
        body = super().to_dict()
        if self.field is not None:
            body["field"] = self.field
        return body


class DeploymentNotFound(NexusError, KeyError):
    """No deployment of that name is registered (HTTP 404)."""

    http_status = 404
    error_type = "not_found"


class DeploymentExists(NexusError, ValueError):
    """``register`` was called twice with the same name (HTTP 409)."""

    http_status = 409
    error_type = "conflict"


class SessionNotFound(NexusError, KeyError):
    """The session does not exist, has expired, or belongs to another user (HTTP 404)."""

    http_status = 404
    error_type = "session_not_found"

    def __init__(self, session_id: str, message: str | None = None) -> None:
        super().__init__(message or f"Session {session_id!r} not found or expired")
        self.session_id = session_id


class SessionStateError(NexusError, ValueError):
    """Session state that is not JSON-serialisable or is over the size limit (HTTP 422)."""

    http_status = 422
    error_type = "session_state_error"


class ProviderError(NexusError, RuntimeError):
    """An LLM provider failed: unreachable, an HTTP error, a timeout (HTTP 502)."""

    http_status = 502
    error_type = "provider_error"

    def __init__(self, message: str, provider: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code


class AuthenticationError(NexusError):
    """Missing or wrong API key (HTTP 401), answered with ``WWW-Authenticate: Bearer``.

    ``rate_limit_headers``: the ``X-RateLimit-*`` headers of the rejected
    request (failed attempts are rate limited too), carried to the response.
    """

    http_status = 401
    error_type = "unauthorized"

    def __init__(self, message: str = "", rate_limit_headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.rate_limit_headers = dict(rate_limit_headers or {})

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer", **self.rate_limit_headers}


class RateLimitExceeded(NexusError):
    """Too many requests for one principal (HTTP 429), answered with ``Retry-After``.

    ``rate_limit_headers``: the limiter's ``X-RateLimit-*`` headers, carried
    to the response beside ``Retry-After`` (whole seconds, at least 1).
    """

    http_status = 429
    error_type = "rate_limited"

    def __init__(
        self,
        message: str,
        retry_after: float,
        limit: int,
        rate_limit_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit
        self.rate_limit_headers = dict(rate_limit_headers or {})

    @property
    def headers(self) -> dict[str, str]:
        # rounded up: a client retrying after a rounded-down delay would be refused again
        return {**self.rate_limit_headers, "Retry-After": str(max(1, math.ceil(self.retry_after)))}


class AgentExecutionError(NexusError):
    """The agent raised; the original exception is chained, the message carries an error id."""

    http_status = 500
    error_type = "agent_error"

    def __init__(self, message: str, error_id: str) -> None:
        super().__init__(message)
        self.error_id = error_id

    def to_dict(self) -> dict:
        body = super().to_dict()
        body["error_id"] = self.error_id
        return body


class PortInUseError(NexusError, OSError):
    """A server could not bind its port."""

    error_type = "port_in_use"

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"Port {port} on {host} is already in use; pass another port or 0 for a free one")
        self.host = host
        self.port = port


class BadRequest(NexusError):
    """Malformed request: invalid JSON, a bad header (HTTP 400)."""

    http_status = 400
    error_type = "bad_request"


class Forbidden(NexusError):
    """Authenticated, but not allowed to act for that user (HTTP 403)."""

    http_status = 403
    error_type = "forbidden"


class NotFound(NexusError):
    """A route or resource that does not exist (HTTP 404)."""

    http_status = 404
    error_type = "not_found"


class PayloadTooLarge(NexusError):
    """Request body over ``max_body_bytes`` (HTTP 413)."""

    http_status = 413
    error_type = "payload_too_large"


class UnsupportedMediaType(NexusError):
    """A request body that is not declared ``application/json`` (HTTP 415).

    Refusing other types keeps a web page on another origin from posting to the
    API with a "simple" (``text/plain``, form) request that skips the browser's
    CORS preflight.
    """

    http_status = 415
    error_type = "unsupported_media_type"


class MisdirectedRequest(NexusError):
    """A ``Host`` header this server does not answer for (HTTP 421): a DNS-rebinding guard."""

    http_status = 421
    error_type = "misdirected_request"


class HeadersTooLarge(NexusError):
    """Request line and headers over the platform's ``max_header_bytes`` (HTTP 431)."""

    http_status = 431
    error_type = "headers_too_large"


class RequestTimeout(NexusError):
    """The client did not send its request head or body in time (HTTP 408)."""

    http_status = 408
    error_type = "request_timeout"


class MethodNotAllowed(NexusError):
    """The route exists but not for this HTTP method (HTTP 405, with ``Allow``)."""

    http_status = 405
    error_type = "method_not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class HTTPError(NexusError):
    """Any other HTTP-level refusal, with the status (and headers) it was raised with."""

    error_type = "http_error"

    def __init__(self, message: str, status: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.http_status = status
        self._headers = dict(headers or {})

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._headers)


class InternalError(NexusError):
    """An unexpected bug in the platform (HTTP 500).

    The message names only the error id; the traceback is logged under that id,
    never sent to the caller.
    """

    http_status = 500
    error_type = "internal_error"

    def __init__(self, error_id: str) -> None:
        super().__init__(f"internal server error; see the server log for error id {error_id}")
        self.error_id = error_id

    def to_dict(self) -> dict:
        body = super().to_dict()
        body["error_id"] = self.error_id
        return body


class NexusConnectionError(NexusError, ConnectionError):
    """A client could not reach a nexus_lab server (refused, unreachable, timed out).

    The message names the URL. Raised by :class:`nexus_lab.client.NexusClient`.
    ``connected`` is False when the server was never reached (refused,
    unreachable) and True when it took the connection, then timed out or dropped it.
    """

    http_status = 503
    error_type = "connection_error"

    def __init__(self, message: str, url: str | None = None, *, connected: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.connected = connected


class ServiceUnavailable(NexusError):
    """A backing service the call needs is down, or the deployment is at capacity (HTTP 503).

    ``retry_after`` (seconds), when known, becomes the ``Retry-After`` header.
    """

    http_status = 503
    error_type = "service_unavailable"

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class ExecutionTimeout(NexusError, TimeoutError):
    """A deployment ran past its timeout (HTTP 504); the agent call was abandoned or cancelled."""

    http_status = 504
    error_type = "timeout"
