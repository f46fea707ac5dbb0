"""Field checks shared by the ops: each names the offending field in its BadRequest."""

from __future__ import annotations

from typing import Any

from node.errors import BadRequest

MAX_BATCH = 1000
MAX_VISIBILITY_TIMEOUT_S = 43_200
MAX_DELAY_S = 86_400
MAX_ID_CHARS = 128
MAX_ID_BYTES = 400  # ids become parts of LMDB keys, which are limited to 511 bytes
# With auth on, the API puts "user/" before a client's producer or txn id (node/auth.py
# Principal.scoped): the stored id may be this much longer than what the client gave.
MAX_SCOPE_CHARS = 65
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_BYTES = 4096


def int_field(value: Any, field: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise BadRequest(f"{field} must be an integer in {lo}..{hi}", field=field)
    return value


def seconds_to_ms(value: Any, field: str, lo: int, hi: int) -> int:
    """A duration in seconds (int or float) -> whole milliseconds."""
    if type(value) not in (int, float) or value != value or not lo <= value <= hi:
        raise BadRequest(f"{field} must be a number of seconds in {lo}..{hi}", field=field)
    return round(value * 1000)


def bool_field(value: Any, field: str) -> bool:
    if type(value) is not bool:
        raise BadRequest(f"{field} must be true or false", field=field)
    return value


def valid_id(value: Any, max_chars: int = MAX_ID_CHARS) -> bool:
    """A non-empty string of at most `max_chars` characters and MAX_ID_BYTES of UTF-8.

    A character is at most 4 bytes of UTF-8, so short ids (the usual case) skip encoding.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_chars
        and (
            len(value) * 4 <= MAX_ID_BYTES
            or len(value.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES
        )
    )


def bad_id(field: str, max_chars: int = MAX_ID_CHARS) -> BadRequest:
    return BadRequest(
        f"{field} must be a string of 1..{max_chars} characters "
        f"(at most {MAX_ID_BYTES} bytes of UTF-8)",
        field=field,
    )


def optional_id(value: Any, field: str, max_chars: int = MAX_ID_CHARS) -> str | None:
    if value is None or valid_id(value, max_chars):
        return value
    raise bad_id(field, max_chars)


def attributes(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ATTRIBUTES:
        raise BadRequest(f"{field} must be a map of at most {MAX_ATTRIBUTES} strings", field=field)
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise BadRequest(f"{field} keys and values must be strings", field=field)
        if len(k.encode()) + len(v.encode()) > MAX_ATTRIBUTE_BYTES:
            raise BadRequest(
                f"{field}[{k[:40]!r}] is over {MAX_ATTRIBUTE_BYTES} bytes", field=field
            )
    # Sorted so that equal attribute sets store (and hash) equal bytes.
    return {k: value[k] for k in sorted(value)}


def receipts(value: Any, field: str = "receipts") -> list[Any]:
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{field} must be a non-empty list of receipts", field=field)
    if len(value) > MAX_BATCH:
        raise BadRequest(f"{field} has more than {MAX_BATCH} receipts", field=field)
    return value
