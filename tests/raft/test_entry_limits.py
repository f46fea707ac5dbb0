"""Every entry the core accepts can be carried by the transport (issue: one request wedged
every write when its entry was larger than the peer frame limit).

The property: for any sequence of proposal sizes around `max_entry_bytes` and
`max_msg_bytes`, a proposal over `max_entry_bytes` is refused and changes nothing, and
every APP the leader builds (fresh replication and catch-up of a lagging follower alike)
fits a frame of `max_append_frame_bytes`, so the receiving decoder takes it.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.errors import EntryTooLarge
from raft.framing import FrameDecoder, frame
from raft.messages import MessageType, encode_message, max_append_frame_bytes
from raft.scenario import Scenario
from tests.raft.test_core_rules import elected_cluster

MAX_ENTRY = 4096
MAX_MSG = 1024
BOUND = max_append_frame_bytes(MAX_ENTRY, MAX_MSG)


def _near(limit: int) -> st.SearchStrategy[int]:
    return st.integers(min_value=max(0, limit - 40), max_value=limit + 40)


SIZES = st.one_of(
    _near(MAX_ENTRY), _near(MAX_MSG), _near(MAX_MSG // 2), st.integers(0, 64), _near(24)
)


def _cluster() -> Scenario:
    return elected_cluster(3, f"max_msg_bytes={MAX_MSG} max_entry_bytes={MAX_ENTRY}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(SIZES, st.booleans()), min_size=1, max_size=40))
def test_every_accepted_entry_fits_a_frame(steps: list[tuple[int, bool]]) -> None:
    s = _cluster()
    leader = s.nodes[1].core
    assert leader is not None
    accepted = []
    isolated = False
    for size, cut_follower in steps:
        if cut_follower != isolated:  # node 3 lags, then catches up in batched APPs
            s.run("isolate 3" if cut_follower else "heal")
            isolated = cut_follower
        last = leader.log.last_index()
        data = bytes([size % 251]) * size
        if size > MAX_ENTRY:
            with pytest.raises(EntryTooLarge):
                leader.propose(data)
            assert leader.log.last_index() == last  # refused whole: nothing appended
        else:
            leader.propose(data)
            accepted.append(data)
        s.run("stabilize")
    s.run("heal")
    for _ in range(len(steps) + 3):  # heartbeats resume a follower paused while cut off
        s.run("tick 1")
        s.run("stabilize")
    decoder = FrameDecoder(BOUND)
    apps = [m for m in s.delivered if m.type is MessageType.APP]
    for m in apps:
        body = encode_message(m)
        assert len(body) <= BOUND, (len(body), BOUND, len(m.entries))
        assert decoder.feed(frame(body)) == [body]
    for node in s.nodes.values():
        applied = [e.data for e in node.applied if e.data]
        assert applied == [d for d in accepted if d], f"node {node.id} missed entries"


def test_the_bound_is_tight_enough_to_matter() -> None:
    """The bound must grow with the entry cap: a frame limit of the old fixed 16 MiB cannot
    carry a 16 MiB entry, which is exactly how the wedge happened."""
    assert max_append_frame_bytes(16 << 20, 128 << 10) > 16 << 20
    assert max_append_frame_bytes(8 << 20, 128 << 10) < 16 << 20
