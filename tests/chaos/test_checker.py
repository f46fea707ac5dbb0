"""The chaos checker on hand-made histories: every property fails on a violating history and
passes on a clean one (a checker that cannot fail proves nothing)."""

from __future__ import annotations

from typing import Any

import pytest

from chaos.checker import Observed, check
from chaos.history import FAIL, INFO, OK, History, read_jsonl
from chaos.monitor import Monitor


class Builder:
    """Writes histories the way the workloads do, with explicit timestamps."""

    def __init__(self) -> None:
        self.h = History(started=0.0)
        self.t = 0.0
        self.next_id = 1

    def _tick(self) -> float:
        self.t += 0.1
        return self.t

    def _op(self, process: str, f: str, value: Any, type_: str, meta: dict | None, result: Any):
        inv = self.h.invoke(process, f, value, 1)
        inv.time = self._tick()
        done = self.h.complete(inv, type_, value=result)
        done.time = self._tick()
        done.meta = meta
        return done

    def send(
        self,
        value: str,
        type_: str = OK,
        queue: str = "q",
        process: str = "p0",
        seq: int | None = None,
        mid: str | None = None,
    ) -> None:
        meta: dict[str, Any] = {"queue": queue}
        if type_ == OK:
            if seq is None:
                seq = self.next_id
                self.next_id += 1
            meta.update(id=mid or f"{seq:016d}", seq=seq, dup=False)
        self._op(process, "send", value, type_, meta, None)

    def receive(self, pairs: list[tuple[str, str]], queue: str = "q", process: str = "c0") -> None:
        self._op(process, "receive", None, OK, {"queue": queue}, [list(p) for p in pairs])

    def late_ack(self, ids: list[str], acked: int) -> None:
        self._op("c0", "late_ack", ids, OK, {"queue": "q", "acked": acked, "stale": []}, None)


def clean_observed(**kw: Any) -> Observed:
    logs = {n: [[1, 1, 10], [2, 1, 20]] for n in (1, 2, 3)}
    base: dict[str, Any] = {
        "leaders_by_term": {1: {1}, 2: {2}},
        "elected": [{"node": 1, "term": 1}, {"node": 2, "term": 2}],
        "final_logs": logs,
        "final_states": {n: {"applied_index": 2, "state_hash": "x"} for n in (1, 2, 3)},
        "expected_nodes": (1, 2, 3),
    }
    base.update(kw)
    return Observed(**base)


def clean_queue() -> Builder:
    b = Builder()
    b.send("p0-1")
    b.send("p0-2", INFO)  # indeterminate ...
    b.send("p0-2")  # ... then acknowledged on retry (same dedup id)
    b.send("p0-3", FAIL)  # definitely failed, never observed
    b.receive([("0000000000000001", "p0-1"), ("0000000000000002", "p0-2")])
    b.receive([("0000000000000001", "p0-1")])  # a redelivery of the same id: not a duplicate
    return b


def test_clean_queue_history_passes() -> None:
    res = check(clean_queue().h.records, "queue", clean_observed())
    assert res["violations"] == []
    assert res["valid"]
    assert (res["lost"], res["unexpected"], res["duplicated"]) == (0, 0, 0)
    assert res["redelivered"] == 1
    assert res["ops"] == {"ok": 4, "fail": 1, "info": 1}


def test_p1_acknowledged_but_never_observed() -> None:
    b = clean_queue()
    b.send("p0-4")
    res = check(b.h.records, "queue", clean_observed())
    assert res["violations"] == ["P1"]
    assert res["properties"]["P1"]["examples"] == ["p0-4"]


def test_p2_observed_but_never_sent() -> None:
    b = clean_queue()
    b.receive([("0000000000000009", "ghost")])
    res = check(b.h.records, "queue", clean_observed())
    assert "P2" in res["violations"]
    assert res["properties"]["P2"]["examples"] == ["ghost"]


def test_p3_observed_although_every_send_failed() -> None:
    b = clean_queue()
    b.receive([("0000000000000007", "p0-3")])
    res = check(b.h.records, "queue", clean_observed())
    assert res["violations"] == ["P3"]


def test_indeterminate_send_that_landed_is_recovered_not_p3() -> None:
    b = clean_queue()
    b.send("p1-1", FAIL, process="p1")
    b.send("p1-1", INFO, process="p1")
    b.receive([("0000000000000008", "p1-1")])
    res = check(b.h.records, "queue", clean_observed())
    assert res["valid"], res["violations"]
    assert res["recovered"] == 1


def test_never_completed_op_counts_as_info() -> None:
    b = clean_queue()
    b.h.invoke("p2", "send", "p2-1", 1)
    res = check(b.h.records, "queue", clean_observed())
    assert res["ops"]["info"] == 2
    assert res["indeterminate_sends"] == 1 and res["valid"]


def pipeline(dup: bool) -> Builder:
    b = Builder()
    b.send("p0-1", queue="in")
    b.send("p0-2", queue="in")
    pairs = [("0000000000000003", "out:p0-1"), ("0000000000000004", "out:p0-2")]
    if dup:
        pairs.append(("0000000000000005", "out:p0-1"))  # a second message with the same value
    b.receive(pairs, queue="out", process="drain")
    return b


def test_p4_duplicates_fail_only_under_exactly_once() -> None:
    assert check(pipeline(False).h.records, "pipeline", clean_observed())["valid"]
    res = check(pipeline(True).h.records, "pipeline", clean_observed())
    assert res["violations"] == ["P4"]
    assert res["properties"]["P4"]["examples"][0]["value"] == "p0-1"
    # The same history read as an at-least-once queue workload reports but allows duplicates.
    b = Builder()
    b.send("p0-1")
    b.receive([("0000000000000001", "p0-1"), ("0000000000000005", "p0-1")])
    res = check(b.h.records, "queue", clean_observed())
    assert res["valid"] and res["duplicated"] == 1


def test_p4_pipeline_lost_input_is_p1() -> None:
    b = Builder()
    b.send("p0-1", queue="in")
    b.send("p0-2", queue="in")
    b.receive([("0000000000000003", "out:p0-1")], queue="out")
    res = check(b.h.records, "pipeline", clean_observed())
    assert res["violations"] == ["P1"] and res["properties"]["P1"]["examples"] == ["p0-2"]


def test_p5_two_values_at_one_offset() -> None:
    b = clean_queue()
    b.receive([("0000000000000001", "p0-3-other")])
    b.send("p0-3-other", INFO)
    res = check(b.h.records, "queue", clean_observed())
    assert res["violations"] == ["P5"]
    assert res["properties"]["P5"]["examples"][0]["kind"] == "two_values_one_id"


def test_p5_sequence_numbers_must_increase_per_producer() -> None:
    b = Builder()
    b.send("p0-1", seq=5)
    b.send("p0-2", seq=3)
    b.receive([("0000000000000005", "p0-1"), ("0000000000000003", "p0-2")])
    res = check(b.h.records, "queue", clean_observed())
    assert res["violations"] == ["P5"]
    assert res["properties"]["P5"]["examples"][0]["kind"] == "seq_not_increasing"


@pytest.mark.parametrize(
    "observed",
    [
        clean_observed(leaders_by_term={4: {1, 3}}),
        clean_observed(elected=[{"node": 1, "term": 4}, {"node": 2, "term": 4}]),
        clean_observed(leaders_by_term={4: {1}}, elected=[{"node": 3, "term": 4}]),
    ],
)
def test_p6_two_leaders_in_one_term(observed: Observed) -> None:
    res = check(clean_queue().h.records, "queue", observed)
    assert res["violations"] == ["P6"]


def test_p7_committed_entry_changed_is_detected_by_the_monitor() -> None:
    monitor = Monitor(cluster=None, clock=lambda: 1.0)  # type: ignore[arg-type]
    monitor.record_entries(1, [[1, 1, 10], [2, 1, 20]])
    monitor.record_entries(2, [[1, 1, 10], [2, 1, 20], [3, 2, 30]])
    assert monitor.obs.log_violations == []
    monitor.record_entries(1, [[2, 2, 99]])  # index 2 rewritten after a crash
    assert len(monitor.obs.log_violations) == 1
    res = check(
        clean_queue().h.records, "queue", clean_observed(log_violations=monitor.obs.log_violations)
    )
    assert res["violations"] == ["P7"]


@pytest.mark.parametrize(
    "observed",
    [
        clean_observed(convergence_error="state hashes differ at applied_index 2"),
        clean_observed(final_logs={1: [[1, 1, 10]], 2: [[1, 1, 10]], 3: [[1, 1, 11]]}),
        clean_observed(final_logs={1: [[1, 1, 10]], 2: [[1, 1, 10], [2, 1, 5]], 3: [[1, 1, 10]]}),
        clean_observed(final_logs={1: [[1, 1, 10]], 2: [[1, 1, 10]]}),
    ],
)
def test_p8_divergence_after_heal(observed: Observed) -> None:
    res = check(clean_queue().h.records, "queue", observed)
    assert res["violations"] == ["P8"]


def test_late_ack_must_be_stale() -> None:
    b = clean_queue()
    b.late_ack(["0000000000000001"], acked=0)
    assert check(b.h.records, "queue", clean_observed())["valid"]
    b.late_ack(["0000000000000002"], acked=1)
    res = check(b.h.records, "queue", clean_observed())
    assert res["violations"] == ["stale_ack"]


def test_p9_liveness_figures() -> None:
    b = Builder()
    b.send("p0-1")  # ok at 0.2
    b.t = 5.0
    b.send("p0-2")  # ok at 5.2: a 5 s gap
    b.receive([("0000000000000001", "p0-1"), ("0000000000000002", "p0-2")])
    events = [
        {"time": 0.0, "node": 1, "term": 1, "role": "leader"},
        {"time": 1.0, "node": 1, "term": 1, "role": "follower"},
        {"time": 4.0, "node": 2, "term": 2, "role": "leader"},
    ]
    windows = [{"name": "isolate-leader", "start": 1.0, "end": 3.0}]
    res = check(
        b.h.records,
        "queue",
        clean_observed(events=events, windows=windows, faults_end=6.0),
    )
    live = res["properties"]["P9"]
    assert live["max_unavailability_s"] == pytest.approx(5.0, abs=0.01)
    assert live["heals"][0]["leader_after_s"] == pytest.approx(1.0)
    assert live["heals"][0]["first_ok_after_s"] == pytest.approx(2.2, abs=0.01)
    assert res["valid"]


def test_history_round_trips_through_jsonl(tmp_path) -> None:
    b = clean_queue()
    path = tmp_path / "history.jsonl"
    b.h.write_jsonl(path)
    again = read_jsonl(path)
    assert [op.to_json() for op in again] == [op.to_json() for op in b.h.records]
    assert check(again, "queue", clean_observed()) == check(b.h.records, "queue", clean_observed())


def test_p5_fifo_groups_first_delivered_in_send_order() -> None:
    def history(order: list[str]) -> Builder:
        b = Builder()
        for v in ("p0-1", "p0-3", "p0-5"):
            b.send(v, queue="f.fifo")
        ids = {"p0-1": "0000000000000001", "p0-3": "0000000000000002", "p0-5": "0000000000000003"}
        for v in order:
            b.receive([(ids[v], v)], queue="f.fifo")
        return b

    # A redelivery of p0-1 after p0-3 keeps p0-1's first place: clean.
    ok = check(history(["p0-1", "p0-3", "p0-1", "p0-5"]).h.records, "queue", clean_observed())
    assert ok["valid"], ok["violations"]
    bad = check(history(["p0-1", "p0-5", "p0-3"]).h.records, "queue", clean_observed())
    assert bad["violations"] == ["P5"]
    assert bad["properties"]["P5"]["examples"][0]["kind"] == "fifo_order"


def test_stale_read_misses_an_acknowledged_send() -> None:
    b = clean_queue()  # two sends to q acknowledged (p0-1, p0-2)

    def read(builder: Builder, sent_total: int) -> None:
        builder._op("r0", "read", "q", OK, {"queue": "q"}, sent_total)

    read(b, 2)
    assert check(b.h.records, "queue", clean_observed())["valid"]
    read(b, 1)  # a node answered from state older than an acknowledged send
    res = check(b.h.records, "queue", clean_observed())
    assert res["violations"] == ["stale_read"]
    assert res["properties"]["stale_read"]["examples"][0]["acknowledged_before"] == 2


def test_p9_counts_elections_that_no_fault_explains() -> None:
    b = clean_queue()
    events = [
        {"time": 0.1, "node": 1, "term": 1, "role": "leader"},
        {"time": 2.0, "node": 2, "term": 2, "role": "leader"},  # inside the window
        {"time": 4.5, "node": 3, "term": 3, "role": "leader"},  # 1.5 s after the heal
        {"time": 9.0, "node": 1, "term": 4, "role": "leader"},  # nothing explains it
    ]
    windows = [{"name": "kill-9", "start": 1.0, "end": 3.0}]
    res = check(
        b.h.records, "queue", clean_observed(events=events, windows=windows, faults_end=10.0)
    )
    outside = res["properties"]["P9"]["elections_outside_faults"]
    assert outside == [{"term": 4, "node": 1, "time": 9.0}]
    assert res["valid"]  # reported, not a safety violation
