"""HTTP plumbing shared by every endpoint: body decoding, response encoding, error mapping.

Why one module: API.md promises the same error shape and statuses everywhere, and that bad
input is refused *before* anything is proposed. Parsing is hardened against what hostile
or buggy clients send: NaN/Infinity, absurd nesting, giant integers, oversize bodies, and
text that is not valid Unicode (lone surrogates: the JSON escape "\\ud800", or UTF-8
encoded surrogates, which the decoder lets through so that the refusal can name the field).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from typing import Any

import msgpack
from aiohttp import web

from node.errors import ERROR_HTTP_STATUS
from raft.messages import pack

MSGPACK = "application/msgpack"
MAX_SAFE_INT = (1 << 63) - 1


class ApiError(Exception):
    """An error the API answers with a definite status and code (see API.md Errors)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        err.update({k: v for k, v in self.extra.items() if k not in ("leader_id", "leader_url")})
        out: dict[str, Any] = {"error": err}
        for k in ("leader_id", "leader_url"):
            if k in self.extra:
                out[k] = self.extra[k]
        return out


def bad_request(message: str, **extra: Any) -> ApiError:
    return ApiError(400, "bad_request", message, **extra)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def too_large(message: str, **extra: Any) -> ApiError:
    return ApiError(413, "too_large", message, **extra)


# Status for each error code a state-machine result may carry: the state machine's own
# table (one source of truth), plus the codes only the HTTP layer produces.
STATUS_BY_CODE = {**ERROR_HTTP_STATUS, "unauthorized": 401, "forbidden": 403}


def wants_msgpack(request: web.Request) -> bool:
    return request.content_type == MSGPACK or MSGPACK in request.headers.get("Accept", "")


def respond(request: web.Request, payload: Any, status: int = 200, **kw: Any) -> web.Response:
    if wants_msgpack(request):
        return web.Response(
            body=pack(payload),
            status=status,
            content_type=MSGPACK,
            **kw,
        )
    return web.Response(
        text=json.dumps(payload, separators=(",", ":"), default=_json_default),
        status=status,
        content_type="application/json",
        **kw,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def error_response(request: web.Request, err: ApiError) -> web.Response:
    return respond(request, err.body(), status=err.status, headers=err.headers)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every body: json.loads with a keyword argument builds a new one per call.
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def may_hold_surrogates(raw: bytes | bytearray, encoding: str) -> bool:
    """Can JSON `raw` (in `encoding`) decode to a string holding a lone surrogate?

    In UTF-8 a surrogate can only come from an escape (`\\ud800`: it needs a backslash)
    or from an encoded surrogate (0xED 0xA0-0xBF). Two single-byte searches (memchr) cost
    under 1 µs for a 100-message send (4 µs for 256 KiB) and let bodies without either
    skip the check in the walk. False positives (any escape, Hangul text) only cost that
    check: ~3.5 µs per 100 messages with escaped quotes, ~20 µs with emoji escapes.
    """
    if encoding not in ("utf-8", "utf-8-sig"):
        return True
    return b"\\" in raw or b"\xed" in raw


def _is_unicode(text: str) -> bool:
    """False if `text` holds a lone surrogate (it cannot be encoded as UTF-8)."""
    if text.isascii():
        return True
    try:  # one pass in C; only strings with non-ASCII characters get here
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unicode_error(body: dict[str, Any], max_depth: int) -> ApiError:
    """The 400 for the first string in `body` that is not valid Unicode, naming its path.

    Only the error path walks the body again (recursively, tracking the path, no deeper
    than the walk looked): the check itself keeps no paths, so valid bodies pay nothing
    for the name.
    """
    found = _find_bad_text(body, "", 1, max_depth)
    if found is None:  # cannot happen (it looks where the walk looked); still a 400
        return bad_request("the body holds text that is not valid Unicode")
    path, key, text, is_key = found
    pos, char = next((i, c) for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
    where = f"a key of {path or 'the body'}" if is_key else path
    hint = " (send bytes as body_b64)" if key == "body" and not is_key else ""
    return bad_request(
        f"{where} is not valid Unicode: character {pos} is a lone surrogate "
        f"U+{ord(char):04X} (or invalid UTF-8){hint}",
        field=key or "body",
    )


def _find_bad_text(
    value: Any, path: str, depth: int, max_depth: int
) -> tuple[str, str, str, bool] | None:
    """(path, field name, string, is a key) of the first non-Unicode string in `value`.

    `value` sits at level `depth`. As in the walk, a dict's keys are looked at first, and
    its children at `depth + 1` only within `max_depth` (the walk refuses anything deeper
    before looking at it).
    """
    name = path.rpartition(".")[2].partition("[")[0]  # "messages[0].attributes" -> "attributes"
    items: Any
    if isinstance(value, dict):
        for k in value:
            if isinstance(k, str) and not _is_unicode(k):
                return path, name, k, True
        items = ((f"{path}.{k}" if path else str(k), str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", name, v) for i, v in enumerate(value))
    else:
        return None
    if depth >= max_depth:
        return None
    for child_path, child_name, v in items:
        if isinstance(v, str) and not _is_unicode(v):
            return child_path, child_name, v, False
        found = _find_bad_text(v, child_path, depth + 1, max_depth)
        if found is not None:
            return found
    return None


def _check_depth_and_ints(value: Any, max_depth: int, check_unicode: bool = True) -> None:
    """Iteratively check nesting depth, key types and number ranges (no recursion).

    Depth: the body object is level 1 and each value one level below its container; no
    value may sit deeper than `max_depth`. Leaves are checked while their container is
    walked: a 100-message send has ~300 leaves, and pushing each on the stack to pop it
    again cost about 1 µs per message on the leader.

    With `check_unicode`, every key and string must be valid Unicode (no lone surrogate):
    one check where strings enter, so that every field refuses them with a 400, before
    they could reach a message body (stored as invalid UTF-8) or the command encoder (a
    500). read_body passes False when the raw bytes cannot hold a surrogate.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise bad_request(f"body nests deeper than {max_depth} levels")
        if isinstance(item, dict):
            for k in item:
                if not isinstance(k, str):
                    raise bad_request("object keys must be strings")
            if check_unicode:
                for k in item:
                    if not k.isascii() and not _is_unicode(k):
                        raise _unicode_error(value, max_depth)
            children: Any = item.values()
        else:
            children = item
        if children and depth == max_depth:
            raise bad_request(f"body nests deeper than {max_depth} levels")
        for child in children:
            kind = type(child)
            if kind is str:  # most leaves; ASCII (O(1) to tell) holds no surrogate
                if check_unicode and not child.isascii() and not _is_unicode(child):
                    raise _unicode_error(value, max_depth)
                continue
            if kind is bool or child is None:  # bool before int
                continue
            if kind is dict or kind is list or isinstance(child, (dict, list)):
                stack.append((child, depth + 1))  # exact types first: 56 vs 63-69 µs per 100 msgs
            elif isinstance(child, int):
                if not -MAX_SAFE_INT <= child <= MAX_SAFE_INT:
                    raise bad_request("integer out of range (must fit in 64 bits)")
            elif isinstance(child, float) and not math.isfinite(child):
                raise bad_request("NaN and Infinity are not allowed")


RAW_BODY_KEY = "raftq.raw_body"
#: (loop time, seconds): when the HTTP port (node/http_limits.py) wants the body in by.
BODY_DEADLINE_KEY = "raftq.body_deadline"


async def read_raw(request: web.Request, max_bytes: int) -> bytes:
    """The request's body bytes, read once and kept on the request, refused over `max_bytes`.

    Kept because a follower that cannot serve a request forwards the same bytes to the
    leader after its handler has read them (a chunked body cannot be read twice). A body
    still arriving at the request's BODY_DEADLINE_KEY (a client trickling it) is refused
    with 408, so it holds the connection and its bytes no longer.
    """
    cached = request.get(RAW_BODY_KEY)
    if cached is not None:
        return cached
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large(f"body of {request.content_length} bytes exceeds {max_bytes}")
    deadline, timeout_s = request.get(BODY_DEADLINE_KEY) or (None, None)
    try:
        async with asyncio.timeout_at(deadline):
            raw = await _read_whole(request, max_bytes)
    except TimeoutError:
        raise ApiError(
            408, "request_timeout", f"the body did not arrive within {timeout_s} s"
        ) from None
    request[RAW_BODY_KEY] = raw
    return raw


async def _read_whole(request: web.Request, max_bytes: int) -> bytes:
    if request.content_length is not None:
        return await request.read()  # one read; the size was checked by the caller
    buf = bytearray()  # chunked: count as it arrives so an endless body is cut off at the limit
    async for chunk in request.content.iter_chunked(1 << 16):
        buf += chunk
        if len(buf) > max_bytes:
            raise too_large(f"body exceeds {max_bytes} bytes")
    return bytes(buf)


async def read_body(request: web.Request, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """Read and decode a JSON or msgpack object body, enforcing size, depth and int range."""
    raw = await read_raw(request, max_bytes)
    if not raw:
        return {}
    if request.content_type == MSGPACK:
        # msgpack strings are decoded strictly: none can hold a surrogate. Invalid UTF-8 is
        # decoded again with surrogateescape only to name the field in the refusal.
        check_unicode = False
        try:
            value = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except UnicodeDecodeError:
            check_unicode = True
            value = _unpack_escaped(raw)
        except Exception as exc:
            raise bad_request(f"malformed msgpack: {exc}") from None
    else:
        encoding = json.detect_encoding(raw)
        check_unicode = may_hold_surrogates(raw, encoding)
        try:
            text = raw.decode(encoding, "surrogatepass")
            value = _JSON.decode(text)
        except RecursionError:
            raise bad_request(f"body nests deeper than {max_depth} levels") from None
        except ValueError as exc:  # JSONDecodeError, huge int digits, NaN
            raise bad_request(f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request("body must be a JSON object")
    _check_depth_and_ints(value, max_depth, check_unicode)
    return value


def _unpack_escaped(raw: bytes | bytearray) -> Any:
    """A msgpack body with invalid UTF-8 in a string, the bad bytes as lone surrogates."""
    try:
        return msgpack.unpackb(
            bytes(raw), raw=False, strict_map_key=True, unicode_errors="surrogateescape"
        )
    except Exception as exc:
        raise bad_request(f"malformed msgpack: {exc}") from None


# ---------------------------------------------------------------- field readers


def reject_unknown(body: dict[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    if allowed.issuperset(body):
        return
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request(f"unknown field(s) in {where}: {', '.join(unknown)}", fields=unknown)


def get_int(
    body: dict[str, Any], key: str, default: int | None, lo: int, hi: int, where: str = "body"
) -> int | None:
    """`body[key]` as an int in lo..hi; an integral number such as 30.0 counts as an integer.

    JSON has one number type and many encoders write 30.0: it becomes the int 30 here, so
    the command (and every replica) carries an int. 30.5 and true are refused.
    """
    value = body.get(key, default)
    if value is None:
        return default
    if type(value) is not int:
        if type(value) is not float or not value.is_integer():
            raise bad_request(f"{where}.{key} must be an integer", field=key)
        value = int(value)
    if not lo <= value <= hi:
        raise bad_request(f"{where}.{key} must be between {lo} and {hi}", field=key)
    return value


def get_number(
    body: dict[str, Any], key: str, default: float | None, lo: float, hi: float, where: str = "body"
) -> float | None:
    value = body.get(key, default)
    if value is None:
        return default
    if type(value) not in (int, float):
        raise bad_request(f"{where}.{key} must be a number", field=key)
    if not lo <= value <= hi:
        raise bad_request(f"{where}.{key} must be between {lo} and {hi}", field=key)
    return value


def get_bool(body: dict[str, Any], key: str, default: bool, where: str = "body") -> bool:
    value = body.get(key, default)
    if type(value) is not bool:
        raise bad_request(f"{where}.{key} must be true or false", field=key)
    return value


def get_str(
    body: dict[str, Any], key: str, default: str | None, max_len: int, where: str = "body"
) -> str | None:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request(f"{where}.{key} must be a string", field=key)
    if not 0 < len(value) <= max_len:
        raise bad_request(f"{where}.{key} must be 1 to {max_len} characters", field=key)
    return value


def get_list(body: dict[str, Any], key: str, where: str = "body", required: bool = True) -> list:
    value = body.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise bad_request(f"{where}.{key} must be an array", field=key)
    return value


def render_bytes(
    request: web.Request, items: list[dict[str, Any]], name: str
) -> list[dict[str, Any]]:
    """Bytes field `name` of each item (a message's body, a record's value) as JSON
    clients get it: `name` (UTF-8 text) or `{name}_b64`; msgpack clients get bytes."""
    if wants_msgpack(request):
        return items
    out = []
    for item in items:
        item = dict(item)
        raw = item.pop(name, b"")
        try:
            item[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            item[f"{name}_b64"] = base64.b64encode(raw).decode("ascii")
        out.append(item)
    return out
