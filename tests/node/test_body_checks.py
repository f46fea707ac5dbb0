"""The body walk that bounds nesting depth, key types and numbers, against a plain model."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.http import MAX_SAFE_INT, ApiError, _check_depth_and_ints


def _problem(value: Any, max_depth: int, depth: int = 1) -> bool:
    """The rule, written plainly (recursively): is anything in `value` refused?"""
    if depth > max_depth:
        return True
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
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
    return False


def _refused(value: Any, max_depth: int) -> bool:
    try:
        _check_depth_and_ints(value, max_depth)
    except ApiError:
        return True
    return False


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.binary(max_size=3),  # msgpack bodies carry bytes
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=2), st.binary(max_size=2)), inner, max_size=4),
    ),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(body=st.dictionaries(st.text(max_size=2), values, max_size=4), max_depth=st.integers(1, 6))
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
    ],
)
def test_edges_of_the_rule(body: dict, max_depth: int, refused: bool) -> None:
    assert _refused(body, max_depth) is refused
