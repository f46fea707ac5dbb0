"""Sans-I/O codec of the binary client protocol (docs/API.md "Binary protocol").

Why in `common`: the node (server side) and the client in `cluster` must agree on every
byte, and `cluster` may not import `node` or `raft`; `common` is the one package both may
import. Kept free of sockets so the rules that protect a node from a hostile client (the
length checked before any payload is read, malformed payloads refused) are unit-tested on
bytes alone, as `raft/framing.py` does for the peer port.

The wire, after the client's 4-byte magic `RQB1`:

- every frame is a 4-byte big-endian length, then that many bytes of msgpack;
- a request is `[request_id, method, path_with_query, body]`: `body` is nil or the
  msgpack-encoded request object as a bin, so the node decodes and checks it exactly as
  an HTTP body with `Content-Type: application/msgpack`;
- an answer is `[request_id, status, headers, body]`: `headers` a map of the answer's
  extra HTTP headers (`Retry-After`, `Location`) or nil, `body` the decoded answer object
  (the API's msgpack body spliced in as is), a str for text answers (`/metrics`), or nil.

Answers come back in completion order, matched to requests by id: many requests may be
in flight on one connection, and a long-poll receive does not hold up the sends behind it.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

#: Sent once by the client when it connects: protocol name and version. Anything else
#: and the node closes the connection.
MAGIC = b"RQB1"
FRAME_HEADER_BYTES = 4
#: URL scheme of a node's binary port (`raftq://host:port`).
SCHEME = "raftq"
#: The same port over TLS (a node started with --tls-cert): `raftqs://host:port`.
TLS_SCHEME = "raftqs"
#: The route whose answer authenticates a connection: every later request on it runs as
#: the token's user (docs/API.md "Binary protocol", Sessions).
SESSION_PATH = "/v1/auth"
#: A node listens for binary clients on its HTTP port plus this, unless told otherwise
#: (node i: HTTP 7000+i, Raft 7100+i, binary 7200+i).
DEFAULT_PORT_OFFSET = 200
#: Room in a request frame beyond the body limit: id, method and path (a path is at
#: most MAX_PATH_CHARS, like an HTTP request line).
FRAME_OVERHEAD_BYTES = 16 << 10
MAX_PATH_CHARS = 8190
MAX_METHOD_CHARS = 16
MAX_REQUEST_ID = (1 << 64) - 1

_HEADER = struct.Struct(">I")


class BadFrame(ValueError):
    """A frame broke the protocol; `reason` is a short tag for logs and metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def frame_length(header: bytes, max_frame_bytes: int) -> int:
    """The payload length a 4-byte header announces; BadFrame if over `max_frame_bytes`.

    Called before a single payload byte is read, so an announced 2 GiB costs nothing.
    """
    (length,) = _HEADER.unpack(header)
    if length > max_frame_bytes:
        raise BadFrame("frame_too_large", f"length {length} > max {max_frame_bytes}")
    return length


def frame(payload: bytes) -> bytes:
    """`payload` with its length prefix, ready to write."""
    return _HEADER.pack(len(payload)) + payload


def encode_request(request_id: int, method: str, path: str, body: bytes | None) -> bytes:
    """One request frame (length prefix included); `body` is msgpack-encoded or None."""
    return frame(msgpack.packb([request_id, method, path, body], use_bin_type=True))


def decode_request(payload: bytes) -> tuple[int, str, str, bytes | None]:
    """(request_id, method, path_with_query, body) of a request payload, or BadFrame.

    Strict: a payload of any other shape or types is refused as a whole (the node closes
    the connection, as the peer port does), since a client that sends one is broken and
    nothing it says next can be trusted to be framed right.
    """
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # ExtraData, FormatError, StackError, UnicodeDecodeError, ...
        raise BadFrame("not_msgpack", repr(exc)[:200]) from None
    if type(value) is not list or len(value) != 4:
        raise BadFrame("bad_shape", "a request is [id, method, path, body]")
    request_id, method, path, body = value
    if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
        raise BadFrame("bad_request_id", repr(request_id)[:40])
    if type(method) is not str or not 0 < len(method) <= MAX_METHOD_CHARS:
        raise BadFrame("bad_method", repr(method)[:40])
    if type(path) is not str or not path.startswith("/") or len(path) > MAX_PATH_CHARS:
        raise BadFrame("bad_path", repr(path)[:80])
    if body is not None and type(body) is not bytes:
        raise BadFrame("bad_body", f"body must be bin or nil, not {type(body).__name__}")
    return request_id, method, path, body


def encode_answer(
    request_id: int, status: int, headers: dict[str, str] | None, packed_body: bytes
) -> bytes:
    """One answer frame; `packed_body` is one msgpack object, already encoded.

    Why spliced, not re-packed: the API's handlers already encoded their msgpack answer;
    an array header, the packed id/status/headers and those bytes are together one valid
    msgpack array, so the body is never decoded and encoded again on the node.
    """
    head = b"\x94" + msgpack.packb([request_id, status, headers or None], use_bin_type=True)[1:]
    return _HEADER.pack(len(head) + len(packed_body)) + head + packed_body


def decode_answer(payload: bytes) -> tuple[int, int, dict[str, str], Any]:
    """(request_id, status, headers, body) of an answer payload, or BadFrame."""
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise BadFrame("not_msgpack", repr(exc)[:200]) from None
    if type(value) is not list or len(value) != 4:
        raise BadFrame("bad_shape", "an answer is [id, status, headers, body]")
    request_id, status, headers, body = value
    if type(request_id) is not int or type(status) is not int:
        raise BadFrame("bad_answer", "id and status must be integers")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise BadFrame("bad_answer", "headers must be a map or nil")
    return request_id, status, {str(k): str(v) for k, v in headers.items()}, body
