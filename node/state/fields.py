"""Field checks shared by the ops: each names the offending field in its BadRequest."""

from __future__ import annotations

from typing import Any

from node.errors import BadRequest

MAX_BATCH = 1000
MAX_VISIBILITY_TIMEOUT_S = 43_200
MAX_DELAY_S = 86_400
MAX_ID_CHARS = 128
MAX_ID_BYTES = 400  # ids become parts of LMDB keys, which are limited to 511 bytes
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


def optional_id(value: Any, field: str, max_chars: int = MAX_ID_CHARS) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= max_chars
        or len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES
    ):
        raise BadRequest(
            f"{field} must be a string of 1..{max_chars} characters "
            f"(at most {MAX_ID_BYTES} bytes of UTF-8)",
            field=field,
        )
    return value


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
