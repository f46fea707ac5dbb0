"""Queue configuration: defaults, validation and merging of partial updates.

Why in the state machine as well as the API: the log is the source of truth, so a bad
config that reached it (an old client, a bug) must still be refused deterministically,
with an error that names the field.
"""

from __future__ import annotations

import re
from typing import Any

from node.errors import BadRequest, Conflict

# The one home of the queue-name rule: the API checks names with it before proposing, the
# state machine again when applying. Always `fullmatch`: with `match`, a `$` anchor also
# matches before a trailing newline, which let `PUT /v1/queues/foo%0A` create "foo\n".
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,80}")
FIFO_SUFFIX = ".fifo"

# Order matters: it is the order of the stored (and hashed) config map.
DEFAULTS: dict[str, Any] = {
    "fifo": False,
    "visibility_timeout_s": 30,
    "max_receives": 0,
    "dead_letter_queue": None,
    "retention_s": 345_600,
    "delay_s": 0,
    "dedup_window_s": 300,
    "max_message_bytes": 262_144,
    "content_based_dedup": False,
    # seconds unused before the queue deletes itself (node/state/queue_expiry.py); None: never
    "expires_s": None,
}
EXPIRES_S_RANGE = (1, 2_592_000)

INT_RANGES: dict[str, tuple[int, int]] = {
    "visibility_timeout_s": (0, 43_200),
    "max_receives": (0, 1000),
    "retention_s": (1, 1_209_600),
    "delay_s": (0, 86_400),
    "dedup_window_s": (0, 86_400),
    "max_message_bytes": (1, 16 << 20),
}
BOOL_KEYS = ("fifo", "content_based_dedup")


def valid_queue_name(name: Any) -> bool:
    """1-80 characters of A-Z a-z 0-9 _ . - (not "." or "..": names end up in URLs)."""
    return (
        isinstance(name, str) and QUEUE_NAME.fullmatch(name) is not None and name not in (".", "..")
    )


def queue_name_message(name: Any, what: str = "queue") -> str:
    """The refusal text for a bad name, the same from the API edge and the state machine
    (topics, exchanges and groups follow the queue-name rule: `what` says which)."""
    return f"invalid {what} name {str(name)[:100]!r}: use 1-80 characters of A-Z a-z 0-9 _ . -"


def check_queue_name(name: Any, field: str = "name") -> str:
    if not valid_queue_name(name):
        raise BadRequest(queue_name_message(name), field=field)
    return name


def merge_config(name: str, existing: dict[str, Any] | None, update: Any) -> dict[str, Any]:
    """Validate a partial `update` and merge it onto `existing` (or the defaults).

    Cross-queue checks (does the dead-letter queue exist, is it FIFO too) are the
    caller's: they need the transaction.
    """
    if update is None:
        update = {}
    if not isinstance(update, dict):
        raise BadRequest("config must be a map", field="config")
    for key in update:
        if key == "name" and update[key] == name:
            continue
        if key not in DEFAULTS:
            raise BadRequest(f"unknown queue config field {str(key)[:60]!r}", field=str(key))
    # .get: a queue stored before a config field existed has that field's default
    base = (
        dict(DEFAULTS) if existing is None else {k: existing.get(k, v) for k, v in DEFAULTS.items()}
    )
    if existing is None and name.endswith(FIFO_SUFFIX) and "fifo" not in update:
        base["fifo"] = True
    for key in BOOL_KEYS:
        if key in update:
            if type(update[key]) is not bool:
                raise BadRequest(f"{key} must be true or false", field=key)
            base[key] = update[key]
    for key, (lo, hi) in INT_RANGES.items():
        if key in update:
            value = update[key]
            if type(value) is not int or not lo <= value <= hi:
                raise BadRequest(f"{key} must be an integer in {lo}..{hi}", field=key)
            base[key] = value
    if "expires_s" in update:
        value = update["expires_s"]
        lo, hi = EXPIRES_S_RANGE
        if value is not None and (type(value) is not int or not lo <= value <= hi):
            raise BadRequest(
                f"expires_s must be null or an integer in {lo}..{hi}", field="expires_s"
            )
        base["expires_s"] = value
    if "dead_letter_queue" in update:
        dlq = update["dead_letter_queue"]
        if dlq is not None:
            check_queue_name(dlq, field="dead_letter_queue")
            if dlq == name:
                raise BadRequest(
                    "a queue cannot be its own dead_letter_queue", field="dead_letter_queue"
                )
        base["dead_letter_queue"] = dlq
    if existing is not None and base["fifo"] != existing["fifo"]:
        raise Conflict(f"queue {name!r} exists and fifo cannot change", field="fifo")
    if name.endswith(FIFO_SUFFIX) and not base["fifo"]:
        raise BadRequest("a queue whose name ends with .fifo must be fifo", field="fifo")
    if base["content_based_dedup"] and not base["fifo"]:
        raise BadRequest("content_based_dedup needs a fifo queue", field="content_based_dedup")
    if base["max_receives"] > 0 and base["dead_letter_queue"] is None:
        raise BadRequest("max_receives > 0 needs a dead_letter_queue", field="max_receives")
    return base
