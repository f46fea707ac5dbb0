"""Toxic definitions: the validated, JSON-shaped description of one fault on one stream.

Why a pure module: the HTTP layer validates and (de)serialises toxics, the data plane only
reads them. Keeping the schema here (types, attribute defaults, limits) means bad input is
rejected once, with a clear message, before anything changes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

UPSTREAM = "upstream"  # client -> server bytes
DOWNSTREAM = "downstream"  # server -> client bytes
STREAMS = (UPSTREAM, DOWNSTREAM)

# type -> attribute defaults (every attribute is a non-negative integer, as in Toxiproxy)
TOXIC_ATTRIBUTES: dict[str, dict[str, int]] = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slow_close": {"delay": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
    "limit_data": {"bytes": 0},
}

_uids = itertools.count(1)


class ToxicError(ValueError):
    """A toxic description that cannot be accepted; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Toxic:
    """One fault on one stream of a proxy.

    `uid` is unique per created toxic (never reused), so a connection can tell a re-added toxic
    of the same name from the old one and draw its toxicity again.
    """

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int]
    uid: int = field(default_factory=lambda: next(_uids))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }

    def attr(self, key: str) -> int:
        return self.attributes[key]


def _require_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ToxicError(f"{what} must be a number, got {value!r}")
    return float(value)


def _validate_toxicity(value: Any) -> float:
    toxicity = _require_number(value, "toxicity")
    if not 0.0 <= toxicity <= 1.0:
        raise ToxicError(f"toxicity must be between 0 and 1, got {value!r}")
    return toxicity


def _validate_attributes(toxic_type: str, given: Any, base: dict[str, int]) -> dict[str, int]:
    """Merge `given` over `base`, check every value, and check the per-type constraints."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ToxicError(f"attributes must be an object, got {given!r}")
    allowed = TOXIC_ATTRIBUTES[toxic_type]
    merged = dict(base)
    for key, value in given.items():
        if key not in allowed:
            raise ToxicError(
                f"unknown attribute {key!r} for toxic type {toxic_type!r}"
                f" (known: {', '.join(sorted(allowed))})"
            )
        number = _require_number(value, f"attribute {key!r}")
        if number < 0 or number != int(number):
            raise ToxicError(f"attribute {key!r} must be a non-negative integer, got {value!r}")
        merged[key] = int(number)
    if toxic_type == "bandwidth" and merged["rate"] <= 0:
        raise ToxicError("bandwidth attribute 'rate' (KB/s) must be > 0")
    if toxic_type == "slicer" and merged["average_size"] <= 0:
        raise ToxicError("slicer attribute 'average_size' (bytes) must be > 0")
    return merged


def parse_new_toxic(body: Any) -> Toxic:
    """Validate a POST /proxies/{p}/toxics body into a Toxic (raises ToxicError)."""
    if not isinstance(body, dict):
        raise ToxicError("toxic body must be a JSON object")
    toxic_type = body.get("type")
    if toxic_type not in TOXIC_ATTRIBUTES:
        raise ToxicError(
            f"unknown toxic type {toxic_type!r} (known: {', '.join(sorted(TOXIC_ATTRIBUTES))})"
        )
    stream = body.get("stream") or DOWNSTREAM
    if stream not in STREAMS:
        raise ToxicError(f"stream must be 'upstream' or 'downstream', got {stream!r}")
    name = body.get("name") or f"{toxic_type}_{stream}"
    if not isinstance(name, str) or "/" in name:
        raise ToxicError(f"toxic name must be a string without '/', got {name!r}")
    toxicity = _validate_toxicity(body.get("toxicity", 1.0))
    attributes = _validate_attributes(
        toxic_type, body.get("attributes"), TOXIC_ATTRIBUTES[toxic_type]
    )
    return Toxic(
        name=name, type=toxic_type, stream=stream, toxicity=toxicity, attributes=attributes
    )


def parse_toxic_update(current: Toxic, body: Any) -> tuple[float, dict[str, int]]:
    """Validate an update body against `current`; returns (toxicity, attributes) to apply.

    Only `attributes` (merged) and `toxicity` change; `name`, `type` and `stream` may be repeated
    but not changed, because a live connection's pumps are keyed by stream.
    """
    if not isinstance(body, dict):
        raise ToxicError("toxic update body must be a JSON object")
    for key in ("name", "type", "stream"):
        if key in body and body[key] not in (None, getattr(current, key)):
            raise ToxicError(f"toxic {key} cannot be changed (is {getattr(current, key)!r})")
    toxicity = (
        _validate_toxicity(body["toxicity"])
        if body.get("toxicity") is not None
        else current.toxicity
    )
    attributes = _validate_attributes(current.type, body.get("attributes"), current.attributes)
    return toxicity, attributes
