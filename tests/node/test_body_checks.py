"""The body walk that bounds nesting depth, key types, numbers and Unicode, against a plain
model."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.http import MAX_SAFE_INT, ApiError, _check_depth_and_ints, may_hold_surrogates


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _holds_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _has_surrogate(value)
    if isinstance(value, dict):
        return any(map(_holds_surrogate, value)) or any(map(_holds_surrogate, value.values()))
    if isinstance(value, list):
        return any(map(_holds_surrogate, value))
    return False


def _problem(value: Any, max_depth: int, depth: int = 1) -> bool:
    """The rule, written plainly (recursively): is anything in `value` refused?"""
    if depth > max_depth:
        return True
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
            return True
        if any(_has_surrogate(k) for k in value):
            return True
        return any(_problem(v, max_depth, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_problem(v, max_depth, depth + 1) for v in value)
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not -MAX_SAFE_INT <= value <= MAX_SAFE_INT
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return _has_surrogate(value)
    return False


def _refused(value: Any, max_depth: int) -> bool:
    try:
        _check_depth_and_ints(value, max_depth)
    except ApiError:
        return True
    return False


# st.text() drops surrogates even from an explicit alphabet: join characters instead.
chars = st.one_of(st.characters(), st.sampled_from("\ud800\udbff\udc00\udfff"))


def _texts(max_size: int) -> st.SearchStrategy[str]:
    return st.lists(chars, max_size=max_size).map("".join)


texts = _texts(3)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    texts,
    st.binary(max_size=3),  # msgpack bodies carry bytes
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(_texts(2), st.binary(max_size=2)), inner, max_size=4),
    ),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(
    body=st.dictionaries(_texts(2), values, max_size=4),
    max_depth=st.integers(1, 6),
)
def test_the_walk_refuses_exactly_what_the_rule_refuses(body: dict, max_depth: int) -> None:
    assert _refused(body, max_depth) == _problem(body, max_depth)


@pytest.mark.parametrize(
    ("body", "max_depth", "refused"),
    [
        ({"a": 1}, 2, False),  # the leaf sits at level 2
        ({"a": 1}, 1, True),
        ({"a": {}}, 2, False),  # an empty container at the last level is fine
        ({"a": {"b": []}}, 2, True),
        ({"a": [[[]]]}, 4, False),
        ({"a": [[[1]]]}, 4, True),
        ({"n": MAX_SAFE_INT, "m": -MAX_SAFE_INT}, 3, False),
        ({"n": MAX_SAFE_INT + 1}, 3, True),
        ({"x": [float("nan")]}, 3, True),
        ({"x": {"y": float("-inf")}}, 3, True),
        ({"x": 1.5, "t": True, "s": "", "b": b"\x00", "z": None}, 2, False),
        ({"k": {b"bytes key": 1}}, 3, True),
        ({"s": "\ud800"}, 2, True),  # a lone surrogate, as JSON's "\\ud800" escape decodes
        ({"s": ["ok", "\udc80"]}, 3, True),
        ({"\udfff": 1}, 2, True),
        ({"s": "\ud83d\ude00"}, 2, True),  # two lone surrogates are not a pair in a str
        ({"s": "😀 é 힣"}, 2, False),
    ],
)
def test_edges_of_the_rule(body: dict, max_depth: int, refused: bool) -> None:
    assert _refused(body, max_depth) is refused


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(body=st.dictionaries(texts, json_values, max_size=4), ensure_ascii=st.booleans())
def test_the_raw_scan_never_skips_a_body_that_holds_a_surrogate(
    body: dict, ensure_ascii: bool
) -> None:
    """read_body skips the Unicode check when may_hold_surrogates says no: never wrongly."""
    raw = json.dumps(body, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    decoded = json.loads(raw.decode("utf-8", "surrogatepass"))
    if _holds_surrogate(decoded):
        assert may_hold_surrogates(raw, "utf-8")
        assert _refused(decoded, 100)


@pytest.mark.parametrize(
    ("body", "message", "field"),
    [
        (
            {"messages": [{"body": "x", "dedup_id": "k\ud800"}]},
            "messages[0].dedup_id is not valid Unicode: character 1 is a lone surrogate U+D800",
            "dedup_id",
        ),
        ({"messages": [{"body": "\udfff"}]}, "messages[0].body is not valid Unicode", "body"),
        (
            {"messages": [{"body": "x", "attributes": {"\udc00": "v"}}]},
            "a key of messages[0].attributes is not valid Unicode",
            "attributes",
        ),
        ({"receipts": ["ok", "\ud800"]}, "receipts[1] is not valid Unicode", "receipts"),
        ({"txn_id": "\ud800"}, "txn_id is not valid Unicode", "txn_id"),
        ({"\ud800": 1}, "a key of the body is not valid Unicode", "body"),
    ],
)
def test_a_lone_surrogate_is_refused_naming_its_field(body: dict, message: str, field: str) -> None:
    with pytest.raises(ApiError) as caught:
        _check_depth_and_ints(body, 32)
    assert caught.value.status == 400 and caught.value.message.startswith(message)
    assert caught.value.extra["field"] == field


def test_valid_text_passes_the_unicode_check() -> None:
    _check_depth_and_ints({"messages": [{"body": "é😀힣", "attributes": {"ключ": "值"}}]}, 32)
