"""The `batch` command: N coalesced commands behave exactly like N entries with one stamp.

The leader coalesces concurrent requests into one `batch` entry, so this equivalence is
what keeps coalescing invisible to clients: same results, same state on every replica.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.commands import (
    BATCHABLE_OPS,
    MAX_BATCH_COMMANDS,
    decode_command,
    encode_batch,
    encode_command,
    encode_op,
)
from raft.messages import Entry
from tests.node.harness import Harness

QUEUES = ("a", "b", "f.fifo", "missing")


def _setup(h: Harness) -> None:
    h.create("dlq")
    h.create("a", max_receives=2, dead_letter_queue="dlq", visibility_timeout_s=2)
    h.create("b", delay_s=1, dedup_window_s=60)
    h.create("f.fifo", visibility_timeout_s=1)


def _draw_op(data: st.DataObject, receipts: list[str]) -> tuple[str, dict[str, Any]]:
    """One batchable op with arguments drawn from what the run so far produced."""
    op = data.draw(st.sampled_from(["send", "send", "receive", "ack", "nack", "extend", "txn"]))
    queue = data.draw(st.sampled_from(QUEUES))
    pick = st.sampled_from([*receipts, "0000000000000001.1", "garbage"])
    if op == "send":
        n = data.draw(st.integers(1, 3))
        msgs = [
            {
                "body": data.draw(st.sampled_from([b"x", b"y", b""])),
                **(
                    {"group_id": data.draw(st.sampled_from(["g1", "g2"]))}
                    if "fifo" in queue
                    else {}
                ),
                **(
                    {"dedup_id": data.draw(st.sampled_from(["d1", "d2"]))}
                    if data.draw(st.booleans())
                    else {}
                ),
            }
            for _ in range(n)
        ]
        return op, {"queue": queue, "messages": msgs}
    if op == "receive":
        extra = {"visibility_timeout_s": 0} if data.draw(st.booleans()) else {}
        return op, {"queue": queue, "max": data.draw(st.integers(1, 4)), **extra}
    if op in ("ack", "nack", "extend"):
        return op, {"queue": queue, "receipts": [data.draw(pick)]}
    return op, {
        "txn_id": data.draw(st.sampled_from(["t1", "t2", "t3"])),
        "ack": [{"queue": queue, "receipt": data.draw(pick)}],
        "send": [{"queue": "b", "messages": [{"body": b"out"}]}],
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_batch_equals_its_commands_applied_one_by_one(data: st.DataObject) -> None:
    dirs = [tempfile.mkdtemp(prefix="raftq-batch-") for _ in range(2)]
    one, batched = Harness(dirs[0]), Harness(dirs[1])
    try:
        _setup(one)
        _setup(batched)
        receipts: list[str] = []
        for _group in range(data.draw(st.integers(1, 6))):
            ops = [_draw_op(data, receipts) for _ in range(data.draw(st.integers(1, 5)))]
            expected = [one.run(op, **fields) for op, fields in ops]
            for result in expected:
                for msg in result.get("messages", []) if isinstance(result, dict) else []:
                    if isinstance(msg, dict) and "receipt" in msg:
                        receipts.append(msg["receipt"])
            batched.index += 1
            entry = Entry(
                batched.index,
                1,
                data=encode_batch(batched.now_ms, [encode_op(op, **f) for op, f in ops]),
            )
            got = batched.sm.apply([entry])[0]
            assert got == {"results": expected}
            assert batched.sm.state_hash() == one.sm.state_hash()
            step = data.draw(st.sampled_from([0, 500, 1000, 3000]))
            one.now_ms += step
            batched.now_ms += step
    finally:
        one.close()
        batched.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_encode_batch_matches_encode_command() -> None:
    ops = [
        ("send", {"queue": "a", "messages": [{"body": b"\x00"}]}),
        ("ack", {"queue": "a", "receipts": ["r"]}),
    ]
    fast = encode_batch(7, [encode_op(op, **f) for op, f in ops])
    slow = encode_command("batch", 7, cmds=[{"op": op, **f} for op, f in ops])
    assert fast == slow
    assert decode_command(fast)["cmds"][1] == {"op": "ack", "queue": "a", "receipts": ["r"]}


def test_only_batchable_ops_can_be_encoded_into_a_batch() -> None:
    assert "queue_put" not in BATCHABLE_OPS and "tick" not in BATCHABLE_OPS
    with pytest.raises(ValueError):
        encode_op("queue_put", name="x")
    with pytest.raises(ValueError):
        encode_batch(1, [])
    with pytest.raises(ValueError):
        encode_batch(1, [encode_op("ack", queue="a", receipts=["r"])] * (MAX_BATCH_COMMANDS + 1))


def _raw_batch(h: Harness, cmds: Any) -> Any:
    h.index += 1
    data = msgpack.packb({"v": 1, "op": "batch", "ts": h.now_ms, "cmds": cmds}, use_bin_type=True)
    return h.sm.apply([Entry(h.index, 1, data=data)])[0]


@pytest.mark.parametrize("cmds", [[], "x", None, [{"op": "ack"}] * (MAX_BATCH_COMMANDS + 1)])
def test_malformed_batch_is_refused_whole_and_changes_nothing(tmp_path, cmds: Any) -> None:
    h = Harness(str(tmp_path / "env"))
    try:
        _setup(h)
        before = h.sm.state_hash()
        result = _raw_batch(h, cmds)
        assert result["error"]["code"] == "bad_request" and result["error"]["field"] == "cmds"
        assert h.sm.state_hash() == before
    finally:
        h.close()


def test_bad_sub_command_fails_alone_and_the_others_apply(tmp_path) -> None:
    h = Harness(str(tmp_path / "env"))
    try:
        _setup(h)
        send = {"op": "send", "queue": "a", "messages": [{"body": b"ok"}]}
        result = _raw_batch(
            h,
            [
                {"op": "queue_delete", "name": "a"},  # not batchable
                send,
                {"op": "send", "queue": "a", "ts": 1, "messages": [{"body": b"x"}]},  # own ts
                "junk",
                {"op": "send", "queue": "missing", "messages": [{"body": b"x"}]},
                send,
            ],
        )
        codes = [r.get("error", {}).get("code") for r in result["results"]]
        assert codes == ["bad_request", None, "bad_request", "bad_request", "not_found", None]
        assert h.info("a")["depth"] == 2  # the two good sends; queue_delete did not run
    finally:
        h.close()
