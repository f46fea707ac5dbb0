"""QueueStateMachine against the reference model, driven by random command sequences.

Every step applies one command to both and demands the same result (error results are
compared by code: the messages are free text). An invariant compares every queue's
config and counters. At the end the whole command log is applied, as ONE batch, to a
fresh state machine, which must reach the same state_hash and results: replicas that
apply the same log agree byte for byte.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from node.commands import encode_command
from node.state.tables import TIMER_TABLES
from node.state_machine import QueueStateMachine
from raft.lmdb_env import LmdbEnv
from raft.messages import Entry
from tests.node.model import QueueModel

NAMES = ("a", "b", "dlq", "f.fifo", "dlq.fifo")
BODIES = (b"", b"x", b"hello", b"y" * 40)
GROUPS = ("g1", "g2", "g3")
DEDUP_IDS = (None, None, "d1", "d2", "d3")
PRODUCERS = ("alpha", "beta")
TXN_IDS = ("t1", "t2", "t3")
EXCHANGES = ("x-direct", "x-fan", "x-topic", "x-head", "x-missing")
EXCHANGE_TYPES = {"x-direct": "direct", "x-fan": "fanout", "x-topic": "topic", "x-head": "headers"}
KEYS = ("", "a", "a.b", "b.a", "a.b.c", "a..b")
PATTERNS = ("#", "*", "a.*", "a.#", "#.a", "*.a", "a.b", "")


def comparable(result: Any) -> Any:
    if isinstance(result, dict) and "error" in result:
        return {"error": {"code": result["error"]["code"]}}
    return result


@st.composite
def configs(draw: st.DrawFn, name: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    options = {
        "visibility_timeout_s": st.sampled_from([0, 1, 5, 30]),
        "retention_s": st.sampled_from([60, 600, 345_600]),
        "delay_s": st.sampled_from([0, 2]),
        "dedup_window_s": st.sampled_from([0, 10, 300]),
        "max_message_bytes": st.sampled_from([20, 262_144]),
    }
    for key, strategy in options.items():
        if draw(st.booleans()):
            config[key] = draw(strategy)
    if name.endswith(".fifo") and draw(st.booleans()):
        config["content_based_dedup"] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        config["fifo"] = draw(st.booleans())  # sometimes a clash
    if draw(st.booleans()):
        dlq = "dlq.fifo" if name.endswith(".fifo") else "dlq"
        config["dead_letter_queue"] = draw(st.sampled_from([dlq, dlq, "dlq.fifo", "missing"]))
        config["max_receives"] = draw(st.sampled_from([1, 2, 3]))
    return config


def first_timer_deadlines(sm: QueueStateMachine, txn: Any) -> list[int | None]:
    """The deadline of each timer index's first entry (None when empty)."""
    out: list[int | None] = []
    for name in TIMER_TABLES:
        cur = txn.cursor(db=sm.tables.handles[name])
        out.append(int.from_bytes(cur.key()[:8], "big") if cur.first() else None)
    return out


class QueueComparison(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.dirs = [tempfile.mkdtemp(prefix="raftq-sm-")]
        self.env = LmdbEnv(self.dirs[0], sync=False)
        self.sm = QueueStateMachine(self.env, snapshot_in_child=False)
        self.model = QueueModel()
        self.now_ms = 1_000_000
        self.log: list[Entry] = []
        self.results: list[Any] = []
        self.receipts: list[str] = ["garbage", "0000000000000001.1"]
        self.producers: dict[str, int] = {}
        self.producer_seqs: dict[tuple[str, str], int] = {}
        self.txn_counter = 0
        for name in ("dlq", "dlq.fifo"):
            self.run("queue_put", name=name, config={"visibility_timeout_s": 5})
        self.run("queue_put", name="a", config={"max_receives": 2, "dead_letter_queue": "dlq"})
        self.run("queue_put", name="b", config={"retention_s": 600, "delay_s": 2})
        self.run(
            "queue_put",
            name="f.fifo",
            config={"max_receives": 3, "dead_letter_queue": "dlq.fifo", "visibility_timeout_s": 3},
        )
        for name, kind in EXCHANGE_TYPES.items():
            self.run("exchange_put", name=name, type=kind)
        self.run("exchange_put", name="x-fan", type="fanout", alternate_queue="dlq")
        for queue in ("a", "b"):
            self.run("exchange_bind", exchange="x-fan", queue=queue)
        self.run("exchange_bind", exchange="x-topic", queue="a", pattern="a.#")
        self.run("exchange_bind", exchange="x-topic", queue="b", pattern="*.a")
        self.run("exchange_bind", exchange="x-direct", queue="b", routing_key="a")
        self.run("exchange_bind", exchange="x-head", queue="a", headers={"h": "1"}, match="any")

    def pick_queue(self, data: st.DataObject) -> str:
        """Mostly an existing queue; sometimes any name (maybe a missing one)."""
        existing = sorted(self.model.state.queues)
        if existing and data.draw(st.integers(0, 9)) > 0:
            return data.draw(st.sampled_from(existing))
        return data.draw(st.sampled_from(NAMES))

    def run(self, op: str, ts_ms: int | None = None, **fields: Any) -> Any:
        ts = self.now_ms if ts_ms is None else ts_ms
        entry = Entry(len(self.log) + 1, 1, data=encode_command(op, ts, **fields))
        self.log.append(entry)
        got = self.sm.apply([entry])[0]
        self.results.append(got)
        expected = self.model.apply(op, ts, **fields)
        assert comparable(got) == comparable(expected), (op, fields, got, expected)
        delivered = got.get("messages") if isinstance(got, dict) else None
        for msg in delivered if isinstance(delivered, list) else []:
            if "receipt" in msg:
                self.receipts.append(msg["receipt"])
        return got

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def queue_put(self, name: str, data: st.DataObject) -> None:
        self.run("queue_put", name=name, config=data.draw(configs(name)))

    @rule(
        name=st.sampled_from(NAMES),
        action=st.sampled_from(["delete", "purge", "purge", "redrive", "redrive", "tick", "stale"]),
    )
    def admin(self, name: str, action: str) -> None:
        if action == "delete":
            self.run("queue_delete", name=name)
        elif action == "purge":
            self.run("queue_purge", name=name)
        elif action == "redrive":
            self.run("redrive", queue=name)
        elif action == "tick":
            self.run("tick")
        else:  # stamped earlier than the last command: time must not go back
            self.run("tick", ts_ms=self.now_ms - 5000)

    @rule(
        data=st.data(),
        messages=st.lists(
            st.fixed_dictionaries(
                {"body": st.sampled_from(BODIES)},
                optional={
                    "priority": st.integers(0, 9),
                    "delay_s": st.sampled_from([0, 1, 3]),
                    "dedup_id": st.sampled_from(DEDUP_IDS),
                    "group_id": st.sampled_from(GROUPS),
                    "attributes": st.dictionaries(
                        st.sampled_from(["k", "z", "a"]), st.sampled_from(["1", "2"])
                    ),
                },
            ),
            min_size=1,
            max_size=4,
        ),
    )
    def send(self, data: st.DataObject, messages: list[dict[str, Any]]) -> None:
        self.do_send(data, messages)

    @rule(data=st.data(), body=st.sampled_from(BODIES), priority=st.integers(0, 9))
    def send_one(self, data: st.DataObject, body: bytes, priority: int) -> None:
        self.do_send(data, [{"body": body, "priority": priority}])

    def do_send(self, data: st.DataObject, messages: list[dict[str, Any]]) -> None:
        name = self.pick_queue(data)
        if name.endswith(".fifo") and data.draw(st.integers(0, 9)) > 0:
            for msg in messages:
                msg.setdefault("group_id", data.draw(st.sampled_from(GROUPS)))
        self.run("send", queue=name, messages=messages)

    @rule(
        data=st.data(),
        max_n=st.integers(1, 5),
        vt=st.sampled_from([None, 0, 1, 5]),
        auto_ack=st.booleans(),
    )
    def receive(self, data: st.DataObject, max_n: int, vt: int | None, auto_ack: bool) -> None:
        name = self.pick_queue(data)
        self.run("receive", queue=name, max=max_n, visibility_timeout_s=vt, auto_ack=auto_ack)

    @rule(data=st.data())
    def receive_and_ack(self, data: st.DataObject) -> None:
        name = self.pick_queue(data)
        got = self.run("receive", queue=name, max=data.draw(st.integers(1, 3)))
        if "messages" in got and got["messages"] and data.draw(st.booleans()):
            self.run("ack", queue=name, receipts=[m["receipt"] for m in got["messages"]])

    def pick_receipts(self, data: st.DataObject) -> list[str]:
        recent = self.receipts[-8:]
        return data.draw(st.lists(st.sampled_from(recent), min_size=1, max_size=3))

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        self.run("ack", queue=self.pick_queue(data), receipts=self.pick_receipts(data))

    @rule(delay=st.sampled_from([None, 0, 2]), data=st.data())
    def nack(self, delay: int | None, data: st.DataObject) -> None:
        name = self.pick_queue(data)
        self.run("nack", queue=name, receipts=self.pick_receipts(data), delay_s=delay)

    @rule(vt=st.sampled_from([None, 1, 10]), data=st.data())
    def extend(self, vt: int | None, data: st.DataObject) -> None:
        name = self.pick_queue(data)
        self.run("extend", queue=name, receipts=self.pick_receipts(data), visibility_timeout_s=vt)

    @rule(data=st.data(), named=st.integers(0, 3))
    def producer_init(self, data: st.DataObject, named: int) -> None:
        if named > 0:
            got = self.run("producer_init", producer_id=data.draw(st.sampled_from(PRODUCERS)))
        else:
            got = self.run("producer_init")
        self.producers[got["producer_id"]] = got["epoch"]

    @rule(data=st.data(), body=st.sampled_from(BODIES))
    def send_as_producer(self, data: st.DataObject, body: bytes) -> None:
        name = self.pick_queue(data)
        pid = data.draw(st.sampled_from(sorted(self.producers) or list(PRODUCERS)))
        epoch = self.producers.get(pid, 0) - data.draw(st.sampled_from([0, 0, 0, 1]))
        key = (pid, name)
        seq = self.producer_seqs.get(key, -1) + data.draw(st.sampled_from([1, 1, 1, 0, 2]))
        message = {"body": body}
        if name.endswith(".fifo"):
            message["group_id"] = data.draw(st.sampled_from(GROUPS))
        producer = {"id": pid, "epoch": max(epoch, 0), "seq": max(seq, 0)}
        got = self.run("send", queue=name, messages=[message], producer=producer)
        if "error" not in got:
            self.producer_seqs[key] = producer["seq"]

    @rule(data=st.data(), n_ack=st.integers(0, 2), n_send=st.integers(0, 2))
    def transaction(self, data: st.DataObject, n_ack: int, n_send: int) -> None:
        acks = []
        for _ in range(n_ack):
            acks.append({"queue": self.pick_queue(data), "receipt": self.pick_receipts(data)[0]})
        sends = []
        for _ in range(n_send):
            name = self.pick_queue(data)
            message: dict[str, Any] = {"body": data.draw(st.sampled_from(BODIES))}
            if name.endswith(".fifo"):
                message["group_id"] = data.draw(st.sampled_from(GROUPS))
            sends.append({"queue": name, "messages": [message]})
        txn_id = data.draw(st.sampled_from(TXN_IDS))
        self.run("txn", txn_id=txn_id, ack=acks, send=sends)

    @rule(data=st.data())
    def consume_transform_produce(self, data: st.DataObject) -> None:
        """The exactly-once loop: receive from one queue, ack + send in one txn."""
        source = self.pick_queue(data)
        got = self.run("receive", queue=source, max=2)
        if "error" in got or not got["messages"]:
            return
        if data.draw(st.booleans()):
            self.now_ms += data.draw(st.sampled_from([1000, 6000]))  # maybe too late
        target = self.pick_queue(data)
        message: dict[str, Any] = {"body": b"out"}
        if target.endswith(".fifo"):
            message["group_id"] = "g1"
        self.txn_counter += 1
        self.run(
            "txn",
            txn_id=f"loop-{self.txn_counter}",
            ack=[{"queue": source, "receipt": m["receipt"]} for m in got["messages"]],
            send=[{"queue": target, "messages": [message]}],
        )

    # ---- exchanges (node/state/exchanges.py): the model routes by brute force

    @rule(data=st.data(), name=st.sampled_from(EXCHANGES))
    def exchange_put(self, data: st.DataObject, name: str) -> None:
        kind = EXCHANGE_TYPES.get(name, "fanout")
        if data.draw(st.integers(0, 9)) == 0:  # sometimes a type clash
            kind = data.draw(st.sampled_from(sorted(set(EXCHANGE_TYPES.values()))))
        alternate = data.draw(st.sampled_from([None, "dlq", "dlq", "b", "missing"]))
        self.run("exchange_put", name=name, type=kind, alternate_queue=alternate)

    @rule(data=st.data(), name=st.sampled_from(EXCHANGES), unbind=st.integers(0, 3))
    def exchange_bind(self, data: st.DataObject, name: str, unbind: int) -> None:
        spec: dict[str, Any] = {}
        kind = EXCHANGE_TYPES.get(name, "fanout")
        if data.draw(st.integers(0, 9)) == 0:  # sometimes a field the type does not take
            kind = data.draw(st.sampled_from(sorted(set(EXCHANGE_TYPES.values()))))
        if kind == "direct":
            spec["routing_key"] = data.draw(st.sampled_from(KEYS))
        elif kind == "topic":
            spec["pattern"] = data.draw(st.sampled_from(PATTERNS))
        elif kind == "headers":
            spec["headers"] = data.draw(
                st.dictionaries(st.sampled_from(["h", "k"]), st.sampled_from(["1", "2"]))
            )
            spec["match"] = data.draw(st.sampled_from(["all", "any"]))
        op = "exchange_unbind" if unbind == 0 else "exchange_bind"
        self.run(op, exchange=name, queue=self.pick_queue(data), **spec)

    @rule(
        data=st.data(),
        name=st.sampled_from(EXCHANGES),
        messages=st.lists(
            st.fixed_dictionaries(
                {"body": st.sampled_from(BODIES)},
                optional={
                    "routing_key": st.sampled_from(KEYS),
                    "headers": st.dictionaries(
                        st.sampled_from(["h", "k"]), st.sampled_from(["1", "2"])
                    ),
                    "attributes": st.dictionaries(st.sampled_from(["k", "a"]), st.just("own")),
                    "dedup_id": st.sampled_from(DEDUP_IDS),
                    "group_id": st.sampled_from(GROUPS),
                    "priority": st.integers(0, 9),
                },
            ),
            min_size=1,
            max_size=4,
        ),
    )
    def exchange_publish(self, data: st.DataObject, name: str, messages: list) -> None:
        self.run("exchange_publish", exchange=name, messages=messages)

    @rule(name=st.sampled_from(EXCHANGES), really=st.integers(0, 4))
    def exchange_delete(self, name: str, really: int) -> None:
        if really == 0:  # rarely: most runs should keep exchanges to publish to
            self.run("exchange_delete", name=name)

    @invariant()
    def same_exchanges(self) -> None:
        assert self.sm.list_exchanges() == self.model.exchanges()
        for name, ex in self.model.state.exchanges.items():
            info = self.sm.exchange_info(name)
            assert info is not None
            got = sorted(info["bindings"], key=repr)
            assert got == sorted(ex["bindings"], key=repr)

    @rule(seconds=st.sampled_from([0.5, 1, 1, 2, 2, 3, 5, 11, 61, 700]))
    def advance_time(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)

    @rule()
    def restart(self) -> None:
        """A new instance on the same files, as after a restart: it knows no timer floors."""
        self.sm = QueueStateMachine(self.env, snapshot_in_child=False)

    @rule()
    def install_snapshot(self) -> None:
        """Carry the state over a snapshot file into a fresh replica (as a follower that
        installs one) and go on there: anything a snapshot misses, or a cache it leaves
        stale, shows up as a difference from the model in a later step."""
        before = self.sm.state_hash()
        snap_dir = tempfile.mkdtemp(prefix="raftq-sm-")
        self.dirs.append(snap_dir)
        path = f"{snap_dir}/state.snap"
        written = self.sm.write_snapshot(path)
        assert written.applied_index == len(self.log)
        env = LmdbEnv(tempfile.mkdtemp(prefix="raftq-sm-", dir=snap_dir), sync=False)
        sm = QueueStateMachine(env, snapshot_in_child=False)
        sm.apply(self.log[:1])  # it had some state of its own, which must go
        restored = env.write(lambda txn: sm.restore_in_txn(txn, path))
        sm.restored()
        assert restored == len(self.log) == sm.applied_index()
        assert sm.state_hash() == before
        self.env.close()
        self.env, self.sm = env, sm

    @invariant()
    def same_queues(self) -> None:
        assert self.sm.list_queues(self.now_ms) == self.model.list_queues(self.now_ms)

    @invariant()
    def timer_floors_are_lower_bounds(self) -> None:
        """No timer index holds an entry earlier than its floor: a floor above one would
        skip a due release on this replica only."""
        firsts = self.env.read(lambda txn: first_timer_deadlines(self.sm, txn))
        for name, floor, first in zip(TIMER_TABLES, self.sm.timer_floors(), firsts, strict=True):
            assert first is None or floor <= first, (name, floor, first)

    def teardown(self) -> None:
        try:
            if not hasattr(self, "env"):
                return
            replica_dir = tempfile.mkdtemp(prefix="raftq-sm-")
            self.dirs.append(replica_dir)
            replica_env = LmdbEnv(replica_dir, sync=False)
            try:
                replica = QueueStateMachine(replica_env)
                assert replica.apply(self.log) == self.results
                assert replica.state_hash() == self.sm.state_hash()
                assert replica.applied_index() == self.sm.applied_index() == len(self.log)
            finally:
                replica_env.close()
            self.env.close()
        finally:
            for d in getattr(self, "dirs", []):
                shutil.rmtree(d, ignore_errors=True)


QueueComparison.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueComparison = QueueComparison.TestCase
