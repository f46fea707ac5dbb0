"""Topics and consumer groups of QueueStateMachine against tests/node/topic_model.py.

Random command sequences go to both; every result must agree (errors by code), and an
invariant compares every partition's log_start/high_watermark and records, every group's
generation, members and committed offsets, and the timer floors. At the end the whole
log, applied as ONE batch to a fresh state machine, must reach the same state hash.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from node.commands import encode_command
from node.state.tables import TIMER_TABLES, TIMER_TOPICS
from node.state_machine import QueueStateMachine
from raft.lmdb_env import LmdbEnv
from raft.messages import Entry
from tests.node.topic_model import TopicModel

TOPICS = ("t1", "t2")
GROUPS = ("ga", "gb")
MEMBERS = ("m1", "m2", "m3")
KEYS = (None, None, "k1", "k2", "user-42")
VALUES = (b"", b"v", b"value" * 8)


def comparable(result: Any) -> Any:
    if isinstance(result, dict) and "error" in result:
        return {"error": {"code": result["error"]["code"]}}
    return result


records = st.lists(
    st.fixed_dictionaries(
        {"value": st.sampled_from(VALUES)},
        optional={
            "key": st.sampled_from(KEYS[2:]),
            "partition": st.integers(0, 3),
            "headers": st.sampled_from([{}, {"h": "1"}]),
        },
    ),
    min_size=1,
    max_size=6,
)


class TopicComparison(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.dirs = [tempfile.mkdtemp(prefix="raftq-topics-")]
        self.env = LmdbEnv(self.dirs[0], sync=False)
        self.sm = QueueStateMachine(self.env, snapshot_in_child=False)
        self.model = TopicModel()
        self.now_ms = 1_000_000
        self.log: list[bytes] = []
        self.results: list[Any] = []
        self.run("topic_put", name="t1", config={"partitions": 3})
        self.run("topic_put", name="t2", config={"partitions": 2, "retention_bytes": 200})
        self.run("group_join", group="ga", topic="t1", member_id="m1")
        self.run("group_join", group="gb", topic="t2", member_id="m2", session_timeout_ms=5000)

    def run(self, op: str, **fields: Any) -> Any:
        data = encode_command(op, self.now_ms, **fields)
        self.log.append(data)
        got = self.sm.apply([Entry(len(self.log), 1, data=data)])[0]
        self.results.append(got)
        want = self.model.apply(op, self.now_ms, **fields)
        if op != "tick":
            assert comparable(got) == want, (op, fields, got, want)
        return got

    @rule(
        name=st.sampled_from(TOPICS),
        partitions=st.none() | st.integers(0, 5),
        retention_s=st.none() | st.sampled_from([1, 5, 600]),
        retention_bytes=st.none() | st.sampled_from([60, 200, 10_000]),
    )
    def topic_put(self, name, partitions, retention_s, retention_bytes) -> None:
        config: dict[str, Any] = {}
        if partitions is not None:
            config["partitions"] = partitions
        if retention_s is not None:
            config["retention_s"] = retention_s
        if retention_bytes is not None:
            config["retention_bytes"] = retention_bytes
        self.run("topic_put", name=name, config=config)

    @rule(name=st.sampled_from(TOPICS))
    def topic_delete(self, name) -> None:
        if self.model.state.topics.get(name) is not None and len(self.log) % 10:
            return  # mostly keep topics: deleting often leaves little to compare
        self.run("topic_delete", name=name)

    @rule(
        topic=st.sampled_from(TOPICS),
        batch=records,
        producer=st.none() | st.tuples(st.sampled_from(["p1", "p2"]), st.integers(0, 1)),
        seq_step=st.sampled_from([0, 1, 1, 1, 2]),
    )
    def append(self, topic, batch, producer, seq_step) -> None:
        fields: dict[str, Any] = {"topic": topic, "records": batch}
        if producer is not None:
            pid, epoch = producer
            session = self.model.state.sessions.get((topic, pid))
            seq = 0 if session is None else session[1] + seq_step
            fields["producer"] = {"id": pid, "epoch": epoch, "seq": seq}
        self.run("topic_append", **fields)

    @rule(seconds=st.sampled_from([0, 0.5, 1, 2, 6, 40]))
    def advance_and_tick(self, seconds) -> None:
        self.now_ms += int(seconds * 1000)
        self.run("tick")

    @rule(
        group=st.sampled_from(GROUPS),
        topic=st.sampled_from(TOPICS),
        member=st.none() | st.sampled_from(MEMBERS),
        timeout_ms=st.sampled_from([1000, 5000, 60_000]),
        start=st.sampled_from(["earliest", "latest"]),
    )
    def group_join(self, group, topic, member, timeout_ms, start) -> None:
        fields = {"group": group, "topic": topic, "session_timeout_ms": timeout_ms, "start": start}
        if member is not None:
            fields["member_id"] = member
        self.run("group_join", **fields)

    def member_of(self, group: str, data: st.DataObject) -> str:
        """Mostly a member the group has now (else any name: an unknown member)."""
        g = self.model.state.groups.get(group)
        if g is not None and g.members and data.draw(st.integers(0, 4)):
            return data.draw(st.sampled_from(sorted(g.members)))
        return data.draw(st.sampled_from(MEMBERS))

    @rule(group=st.sampled_from(GROUPS), data=st.data())
    def group_heartbeat(self, group, data) -> None:
        self.run("group_heartbeat", group=group, member_id=self.member_of(group, data))

    @rule(group=st.sampled_from(GROUPS), data=st.data())
    def group_leave(self, group, data) -> None:
        self.run("group_leave", group=group, member_id=self.member_of(group, data))

    @rule(
        group=st.sampled_from(GROUPS),
        data=st.data(),
        stale=st.integers(0, 3),
        partition=st.integers(0, 3),
        delta=st.integers(-1, 2),
    )
    def group_commit(self, group, data, stale, partition, delta) -> None:
        member = self.member_of(group, data)
        g = self.model.state.groups.get(group)
        generation = (g.generation if g else 1) - (1 if stale == 0 else 0)
        end = 0
        if g is not None and g.topic in self.model.state.topics:
            ends = self.model.state.topics[g.topic].ends
            end = ends[partition] if partition < len(ends) else 0
        offset = max(0, end + delta - 1)
        self.run(
            "group_commit",
            group=group,
            member_id=member,
            generation=generation,
            offsets=[{"partition": partition, "offset": offset}],
        )

    @rule(
        txn_id=st.sampled_from(["x1", "x2", "x3"]),
        topic=st.sampled_from(TOPICS),
        batch=st.none() | records,
        group=st.none() | st.sampled_from(GROUPS),
        data=st.data(),
        stale=st.integers(0, 3),
        partition=st.integers(0, 3),
        delta=st.integers(-1, 2),
    )
    def txn(self, txn_id, topic, batch, group, data, stale, partition, delta) -> None:
        fields: dict[str, Any] = {"txn_id": txn_id}
        if batch is not None:
            fields["publish"] = [{"topic": topic, "records": batch}]
        if group is not None:
            g = self.model.state.groups.get(group)
            end = 0
            if g is not None and g.topic in self.model.state.topics:
                ends = self.model.state.topics[g.topic].ends
                end = ends[partition] if partition < len(ends) else 0
            item = {
                "group": group,
                "generation": (g.generation if g else 1) - (1 if stale == 0 else 0),
                "partition": partition,
                "offset": max(0, end + delta - 1),
            }
            if data.draw(st.booleans()):
                item["member_id"] = self.member_of(group, data)
            fields["commit_offsets"] = [item]
        if len(fields) > 1:
            self.run("txn", **fields)

    @rule()
    def snapshot_and_restore(self) -> None:
        """A snapshot installed on another replica carries the logs, groups and timers: it
        goes on from there (with no timer floors known) exactly as the original would."""
        before = self.sm.state_hash()
        snap_dir = tempfile.mkdtemp(prefix="raftq-topics-")
        self.dirs.append(snap_dir)
        path = f"{snap_dir}/state.snap"
        assert self.sm.write_snapshot(path).applied_index == len(self.log)
        env = LmdbEnv(tempfile.mkdtemp(prefix="raftq-topics-", dir=snap_dir), sync=False)
        sm = QueueStateMachine(env, snapshot_in_child=False)
        assert env.write(lambda txn: sm.restore_in_txn(txn, path)) == len(self.log)
        sm.restored()
        assert sm.state_hash() == before
        self.env.close()
        self.env, self.sm = env, sm

    @invariant()
    def same_logs_and_groups(self) -> None:
        if not hasattr(self, "sm"):
            return
        for name in TOPICS:
            info = self.sm.topic_info(name)
            if name not in self.model.state.topics:
                assert info is None
                continue
            parts = [(p["log_start"], p["high_watermark"]) for p in info["partition_stats"]]
            assert parts == self.model.partitions(name)
            for p, (start, _end) in enumerate(parts):
                got = self.sm.topic_fetch(name, p, start, 1000, 1 << 30)["records"]
                assert [(r["offset"], r["value"], r["key"]) for r in got] == self.model.records(
                    name, p
                )
        for name in GROUPS:
            info = self.sm.group_info(name)
            if name not in self.model.state.groups:
                assert info is None
                continue
            assert {
                "generation": info["generation"],
                "members": [m["member_id"] for m in info["members"]],
                "committed": [o["committed"] for o in info["offsets"]],
            } == self.model.group_view(name)
        floors = self.sm.timer_floors()

        def read(txn: Any) -> int | None:
            cur = txn.cursor(db=self.sm.tables.handles[TIMER_TABLES[TIMER_TOPICS]])
            return int.from_bytes(cur.key()[:8], "big") if cur.first() else None

        first = self.env.read(read)
        if first is not None:
            assert floors[TIMER_TOPICS] <= first

    def teardown(self) -> None:
        if hasattr(self, "sm"):
            fresh_dir = tempfile.mkdtemp(prefix="raftq-topics-replay-")
            self.dirs.append(fresh_dir)
            fresh_env = LmdbEnv(fresh_dir, sync=False)
            fresh = QueueStateMachine(fresh_env, snapshot_in_child=False)
            entries = [Entry(i + 1, 1, data=d) for i, d in enumerate(self.log)]
            assert fresh.apply(entries) == self.results
            assert fresh.state_hash() == self.sm.state_hash()
            fresh_env.close()
            self.env.close()
        for d in getattr(self, "dirs", []):
            shutil.rmtree(d, ignore_errors=True)


TopicComparison.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_topics_match_the_model = TopicComparison.TestCase
