"""Typed errors of the queue state machine.

Why typed: a command that fails must change nothing and answer a result that the API
maps to one HTTP status in one place. The state code raises these; `apply` catches them,
aborts the command's nested transaction and turns them into `{"error": {...}}` results.
"""

from __future__ import annotations

from typing import Any


class CommandError(Exception):
    """A command was refused; `code` is the API error code, `extra` more context fields."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_result(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class BadRequest(CommandError):
    code = "bad_request"
    http_status = 400


class NotFound(CommandError):
    code = "not_found"
    http_status = 404


class Conflict(CommandError):
    code = "conflict"
    http_status = 409


class TooLarge(CommandError):
    code = "too_large"
    http_status = 413


class OutOfOrderSequence(CommandError):
    code = "out_of_order_sequence"
    http_status = 409


class ProducerFenced(CommandError):
    code = "producer_fenced"
    http_status = 409


class OffsetOutOfRange(CommandError):
    """A fetch below a partition's log_start (retention dropped it) or past its end."""

    code = "offset_out_of_range"
    http_status = 409


ERROR_HTTP_STATUS: dict[str, int] = {
    cls.code: cls.http_status
    for cls in (
        CommandError,
        BadRequest,
        NotFound,
        Conflict,
        TooLarge,
        OutOfOrderSequence,
        ProducerFenced,
        OffsetOutOfRange,
    )
}
