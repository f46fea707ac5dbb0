"""Validation of queue requests at the API edge, before anything is proposed.

Why here and not only in the state machine: a bad request must cost nothing (no Raft
entry, no fsync) and must get an error that names the field. The state machine still
re-checks what matters for determinism, so a buggy client of the log cannot corrupt state.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from node.config import Limits
from node.http import bad_request, get_int, get_number, get_str, reject_unknown, too_large
from node.state.fields import MAX_DELAY_S, MAX_ID_BYTES, MAX_ID_CHARS, valid_id
from node.state.queue_config import DEFAULTS, INT_RANGES, queue_name_message, valid_queue_name

QUEUE_CONFIG_FIELDS = frozenset(DEFAULTS)
MESSAGE_FIELDS = frozenset(
    {"body", "body_b64", "attributes", "delay_s", "dedup_id", "group_id", "priority"}
)


def check_queue_name(name: str, what: str = "queue", field: str = "name") -> str:
    """The state machine's rule (queue_config.valid_queue_name), refused before proposing;
    `what` names the kind in the message (a topic, an exchange or a group name follows the
    same rule), `field` the offending field."""
    if not valid_queue_name(name):
        raise bad_request(queue_name_message(name, what), field=field)
    return name


def parse_queue_config(body: dict[str, Any]) -> dict[str, Any]:
    """The body of PUT /v1/queues/{name}: known fields only, integral numbers as ints.

    The state machine validates the config (merge_config) and wants ints for its integer
    fields. JSON has one number type and many encoders write 30.0, so an integral number
    becomes an int here, before proposing: the log and every replica see the int. Other
    values (30.5, "30") go through unchanged for the state machine to refuse.
    """
    reject_unknown(body, QUEUE_CONFIG_FIELDS, "queue config")
    config = dict(body)
    for key in INT_RANGES.keys() & config.keys():
        value = config[key]
        if type(value) is float and value.is_integer():
            config[key] = int(value)
    return config


def decode_body(msg: dict[str, Any], where: str, name: str = "body") -> bytes:
    """The bytes of `msg[name]` (UTF-8 text) or `msg[name + "_b64"]` (base64): exactly
    one of the two. `name` is "body" for messages, "value" for topic records."""
    b64_name = f"{name}_b64"
    has_text, has_b64 = name in msg, b64_name in msg
    if has_text == has_b64:
        raise bad_request(f"{where} needs exactly one of {name} or {b64_name}")
    if has_text:
        body = msg[name]
        if isinstance(body, bytes):  # msgpack clients may send raw bytes
            return body
        if not isinstance(body, str):
            raise bad_request(f"{where}.{name} must be a string (use {b64_name} for bytes)")
        try:  # read_body refused lone surrogates already; never store invalid UTF-8 anyway
            return body.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(
                f"{where}.{name} is not valid Unicode (send bytes as {b64_name})", field=name
            ) from None
    b64 = msg[b64_name]
    if not isinstance(b64, str):
        raise bad_request(f"{where}.{b64_name} must be a base64 string")
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where}.{b64_name} is not valid base64") from None


def check_attributes(value: Any, limits: Limits, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{where}.attributes must be an object of strings")
    if len(value) > limits.max_attributes:
        raise bad_request(f"{where}.attributes has more than {limits.max_attributes} entries")
    for k, v in value.items():
        if not isinstance(v, str) or not k or len(k) > 256:
            raise bad_request(f"{where}.attributes[{k[:40]!r}] must be a string value")
        if len(k.encode()) + len(v.encode()) > limits.max_attribute_bytes:
            raise too_large(
                f"{where}.attributes[{k[:40]!r}] exceeds {limits.max_attribute_bytes} bytes"
            )
    return dict(value)


def parse_message(
    msg: Any, i: int, limits: Limits, max_message_bytes: int, fifo: bool
) -> dict[str, Any]:
    """One message of a send request → the command's message dict (body as bytes)."""
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise bad_request(f"{where} must be an object")
    reject_unknown(msg, MESSAGE_FIELDS, where)
    body = decode_body(msg, where)
    if len(body) > max_message_bytes:
        raise too_large(
            f"{where} body is {len(body)} bytes; the queue allows {max_message_bytes}",
            index=i,
        )
    # Only non-default fields go into the command: entries stay small, and every replica
    # decodes and checks less (the state machine fills the same defaults). Each optional
    # field is checked only when present: most messages carry a body and at most a dedup id.
    out: dict[str, Any] = {"body": body}
    if len(msg) == 1:  # a body alone
        return _require_group(out, fifo, where)
    if "attributes" in msg:
        attributes = check_attributes(msg["attributes"], limits, where)
        if attributes:
            out["attributes"] = attributes
    if "delay_s" in msg:
        delay_s = get_number(msg, "delay_s", 0, 0, MAX_DELAY_S, where)
        if delay_s:
            out["delay_s"] = delay_s
    if "priority" in msg:
        priority = get_int(msg, "priority", 0, 0, 9, where)
        if priority:
            out["priority"] = priority
    if msg.get("dedup_id") is not None:
        out["dedup_id"] = _id_field(msg, "dedup_id", limits.max_dedup_id_chars, where)
    if msg.get("group_id") is not None:
        out["group_id"] = _id_field(msg, "group_id", MAX_ID_CHARS, where)
    return _require_group(out, fifo, where)


def _id_field(msg: dict[str, Any], key: str, max_chars: int, where: str) -> str:
    """`msg[key]` if it is a valid id (the state machine's rule, fields.valid_id)."""
    value = msg[key]
    if valid_id(value, max_chars):
        return value
    get_str(msg, key, None, max_chars, where)  # raises for a wrong type or length
    raise bad_request(f"{where}.{key} is over {MAX_ID_BYTES} bytes of UTF-8", field=key)


def _require_group(out: dict[str, Any], fifo: bool, where: str) -> dict[str, Any]:
    if fifo and "group_id" not in out:
        raise bad_request(f"{where}.group_id is required on a FIFO queue", field="group_id")
    return out


def parse_messages(
    body: dict[str, Any], limits: Limits, max_message_bytes: int, fifo: bool
) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages must be a non-empty array")
    if len(msgs) > limits.max_batch:
        raise too_large(f"batch of {len(msgs)} messages exceeds {limits.max_batch}")
    return [parse_message(m, i, limits, max_message_bytes, fifo) for i, m in enumerate(msgs)]


def parse_receipts(body: dict[str, Any], limits: Limits) -> list[str]:
    receipts = body.get("receipts")
    if not isinstance(receipts, list) or not receipts:
        raise bad_request("receipts must be a non-empty array of strings")
    if len(receipts) > limits.max_batch:
        raise too_large(f"{len(receipts)} receipts exceed the batch limit {limits.max_batch}")
    for r in receipts:
        if not isinstance(r, str) or not 0 < len(r) <= 512:
            raise bad_request("every receipt must be a non-empty string")
    return receipts


def parse_receive(body: dict[str, Any], limits: Limits) -> dict[str, Any]:
    reject_unknown(body, {"max", "visibility_timeout_s", "wait_s", "auto_ack"}, "body")
    auto_ack = body.get("auto_ack", False)
    if type(auto_ack) is not bool:
        raise bad_request("body.auto_ack must be true or false")
    return {
        "max": get_int(body, "max", 1, 1, limits.max_receive),
        "visibility_timeout_s": get_number(body, "visibility_timeout_s", None, 0, 43_200),
        "wait_s": get_number(body, "wait_s", 0, 0, limits.max_wait_s),
        "auto_ack": auto_ack,
    }
