"""Typed errors raised by the raftq client.

Split the h11 way: a *definite* error means the cluster understood the request and said
no (bad input, unknown queue, stale receipt): retrying cannot help, so the client raises
it at once. A *transient* error (no leader yet, connection refused, timeout) is retried
inside the call's deadline; only when the deadline passes does the caller see
`ClusterUnavailable`, which names every server tried and what went wrong with each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RaftqError(Exception):
    """Base of every error the client raises.

    `code` is the API's snake_case error code, `status` the HTTP status (0 when no
    response was received), `body` the raw decoded error body (empty dict if none).
    """

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int = 0,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        self.body: dict[str, Any] = dict(body or {})

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status else ""
        return f"{prefix}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status}, message={self.message!r})"


class BadRequest(RaftqError):
    """400: malformed request, wrong types or missing fields."""

    default_code = "bad_request"


class Unauthorized(RaftqError):
    """401: authentication is enabled and the request carried no valid credentials."""

    default_code = "unauthorized"


class Forbidden(RaftqError):
    """403: the credentials are valid but not allowed to do this."""

    default_code = "forbidden"


class NotFound(RaftqError):
    """404: unknown queue, topic, exchange or group."""

    default_code = "not_found"


class Conflict(RaftqError):
    """409: stale receipt, configuration clash or aborted transaction."""

    default_code = "conflict"


class TooLarge(RaftqError):
    """413: body, message or batch over its limit."""

    default_code = "too_large"


class InsufficientStorage(RaftqError):
    """507: the cluster's disk quota is reached; nothing was proposed. Acks, deletes and
    purges still work: drain or delete queues, or raise the quota."""

    default_code = "insufficient_storage"


class ServerError(RaftqError):
    """A 4xx/5xx the client does not know how to map (a 5xx is retried first)."""

    default_code = "server_error"


class ClusterUnavailable(RaftqError):
    """No leader could serve the call before its deadline.

    `attempts` maps every configured server (and any leader URL learned on the way) to the
    last error seen there, so an operator sees at a glance which node was down, which one
    had no leader and which one timed out.
    """

    default_code = "cluster_unavailable"

    def __init__(self, deadline_s: float, attempts: Mapping[str, str]) -> None:
        self.deadline_s = deadline_s
        self.attempts: dict[str, str] = dict(attempts)
        tried = "; ".join(f"{url}: {err}" for url, err in self.attempts.items()) or "none"
        super().__init__(f"no leader reachable within {deadline_s:g}s (tried {tried})")


_BY_STATUS: dict[int, type[RaftqError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    507: InsufficientStorage,
}

_BY_CODE: dict[str, type[RaftqError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "too_large": TooLarge,
    "insufficient_storage": InsufficientStorage,
}

#: Statuses that are the cluster's final word on a request: never retried.
DEFINITE_STATUSES = frozenset(_BY_STATUS) | {405, 410, 411, 415, 422}


def error_from_response(status: int, body: Any) -> RaftqError:
    """Build the typed exception for an error response `{"error": {"code", "message"}}`.

    The status decides the class (a body's code is only a fallback), so a server that
    sends an unexpected code still maps onto the right exception type.
    """
    payload: dict[str, Any] = body if isinstance(body, dict) else {}
    err = payload.get("error")
    err = err if isinstance(err, dict) else {}
    code = str(err.get("code") or "") or None
    message = str(err.get("message") or "") or (
        str(body)[:200] if body and not payload else f"HTTP {status}"
    )
    cls = _BY_STATUS.get(status) or (_BY_CODE.get(code or "") if code else None) or ServerError
    return cls(message, code=code, status=status, body=payload)


__all__ = [
    "DEFINITE_STATUSES",
    "BadRequest",
    "ClusterUnavailable",
    "Conflict",
    "Forbidden",
    "InsufficientStorage",
    "NotFound",
    "RaftqError",
    "ServerError",
    "TooLarge",
    "Unauthorized",
    "error_from_response",
]
