"""The kept msgpack Packer must write exactly what msgpack.packb writes, call after call."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft import messages

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(st.lists(_values, min_size=1, max_size=5))
def test_kept_packer_writes_what_packb_writes(values: list[object]) -> None:
    pack = messages.packer()
    for value in values:  # one Packer, several calls: nothing of a call leaks into the next
        assert pack(value) == msgpack.packb(value, use_bin_type=True)


def test_a_failed_pack_leaves_nothing_behind_for_the_next_call() -> None:
    pack = messages.packer()
    with pytest.raises(TypeError):
        pack([1, 2, object()])
    with pytest.raises(OverflowError):
        pack([b"partial", 2**70])
    assert pack([3, b"x"]) == msgpack.packb([3, b"x"], use_bin_type=True)


def test_module_pack_round_trips() -> None:
    value = [7, 0, b"x" * 100, {"op": "send"}]
    assert msgpack.unpackb(messages.pack(value), raw=False) == value
