"""Exceptions raised by nexus_lab.

Every error carries a message that names the problem, so that channels can
turn it into a clean response (HTTP JSON, a CLI line, an MCP error) without a
traceback. ``http_status`` tells the HTTP channel which status code to use.

Example::

    from nexus_lab.errors import SessionNotFound
    try:
        manager.update_session_state("nope", {"a": 1})
    except SessionNotFound as exc:
        print(exc)          # Session 'nope' not found or expired
"""

from __future__ import annotations

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
    """Missing or wrong API key (HTTP 401)."""

    http_status = 401
    error_type = "unauthorized"


class RateLimitExceeded(NexusError):
    """Too many requests for one principal (HTTP 429)."""

    http_status = 429
    error_type = "rate_limited"

    def __init__(self, message: str, retry_after: float, limit: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit


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


class NexusConnectionError(NexusError, ConnectionError):
    """A client could not reach a nexus_lab server (refused, unreachable, timed out).

    The message names the URL. Raised by :class:`nexus_lab.client.NexusClient`.
    """

    http_status = 503
    error_type = "connection_error"

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class ServiceUnavailable(NexusError):
    """A backing service the call needs (a session store, a shared rate limiter) is down (HTTP 503)."""

    http_status = 503
    error_type = "service_unavailable"


class ExecutionTimeout(NexusError, TimeoutError):
    """A deployment ran past its timeout (HTTP 504); the agent call was abandoned or cancelled."""

    http_status = 504
    error_type = "timeout"
