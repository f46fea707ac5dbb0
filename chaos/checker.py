"""The chaos checker: P1-P9 of CHAOS.md over a recorded history and the monitor's observations.

Why a pure function of plain data: the same checker runs on a live run's results and on
hand-made histories in unit tests (each property is shown to fail on a violating history),
so nothing here talks to processes or sockets.

Inputs: the history records (`chaos.history.Op`), the workload kind (`queue` = at-least-once,
`pipeline` = exactly-once, where duplicates are violations), and `Observed` — what the monitor
saw: leaders per term, `raft.elected` log events, committed-entry changes, final logs and
state hashes, fault windows and the end of the faulty phase.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.history import FAIL, INFO, INVOKE, OK, Op

EXAMPLES = 10
WRITE_FS = frozenset({"send", "receive", "ack", "txn"})


@dataclass
class Observed:
    """Everything besides the client history that the checker needs."""

    leaders_by_term: dict[int, set[int]] = field(default_factory=dict)
    elected: list[dict[str, Any]] = field(default_factory=list)  # {"node", "term"}
    log_violations: list[dict[str, Any]] = field(default_factory=list)  # P7 as found live
    final_logs: dict[int, list[list[int]]] = field(default_factory=dict)
    final_states: dict[int, dict[str, Any]] = field(default_factory=dict)
    convergence_error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # {"time","node","term","role"}
    windows: list[dict[str, Any]] = field(default_factory=list)  # {"name","start","end"}
    faults_end: float | None = None  # when the run healed everything (drain starts later)
    expected_nodes: Sequence[int] = ()


def _prop(count: int, examples: Iterable[Any], violation: bool, note: str) -> dict[str, Any]:
    return {
        "count": count,
        "violation": violation,
        "examples": list(examples)[:EXAMPLES],
        "note": note,
    }


def _completions(records: Sequence[Op]) -> dict[int, Op]:
    return {op.op_id: op for op in records if op.type != INVOKE}


def check(records: Sequence[Op], kind: str, observed: Observed) -> dict[str, Any]:
    """Run every property; `result["violations"]` names the properties that failed."""
    done = _completions(records)
    invokes = [op for op in records if op.type == INVOKE]
    counts = {OK: 0, FAIL: 0, INFO: 0}
    for inv in invokes:
        c = done.get(inv.op_id)
        counts[c.type if c is not None else INFO] += 1

    pipeline = kind == "pipeline"

    def is_source(queue: str) -> bool:  # at-least-once: every queue is source and sink
        return queue == "in" if pipeline else True

    def is_sink(queue: str) -> bool:
        return queue == "out" if pipeline else True

    # ---- sends: per value, the outcomes of every attempt
    attempts: dict[str, list[str]] = defaultdict(list)
    ok_sends: list[Op] = []
    for inv in invokes:
        if inv.f != "send":
            continue
        c = done.get(inv.op_id)
        queue = (c.meta or {}).get("queue", "") if c is not None else ""
        if c is not None and not is_source(queue):
            continue
        attempts[str(inv.value)].append(c.type if c is not None else INFO)
        if c is not None and c.type == OK:
            ok_sends.append(c)
    sent_ok = {v for v, ts in attempts.items() if OK in ts}
    failed_only = {v for v, ts in attempts.items() if ts and all(t == FAIL for t in ts)}
    indeterminate = {v for v, ts in attempts.items() if OK not in ts and INFO in ts}

    # ---- observations: every ok receive on the sink queue
    ids_by_value: dict[str, set[str]] = defaultdict(set)
    deliveries: dict[str, int] = defaultdict(int)
    values_by_id: dict[tuple[str, str], set[str]] = defaultdict(set)
    for c in done.values():
        if c.f != "receive" or c.type != OK:
            continue
        queue = (c.meta or {}).get("queue", "")
        for mid, body in c.value or []:
            values_by_id[(queue, str(mid))].add(str(body))
            if not is_sink(queue):
                continue
            value = str(body)
            if kind == "pipeline":
                value = value[4:] if value.startswith("out:") else f"<malformed {value!r}>"
            ids_by_value[value].add(str(mid))
            deliveries[value] += 1
    for c in ok_sends:
        meta = c.meta or {}
        if meta.get("id") is not None:
            values_by_id[(str(meta.get("queue")), str(meta["id"]))].add(str(c.value))
    observed_values = set(ids_by_value)

    lost = sorted(sent_ok - observed_values)
    unexpected = sorted(observed_values - set(attempts))
    after_fail = sorted(observed_values & failed_only)
    dup_values = sorted(v for v, ids in ids_by_value.items() if len(ids) > 1)
    redelivered = sum(deliveries[v] - len(ids_by_value[v]) for v in ids_by_value)
    recovered = sorted(observed_values & indeterminate)

    props: dict[str, dict[str, Any]] = {}
    props["P1"] = _prop(len(lost), lost, bool(lost), "acknowledged and never observed")
    props["P2"] = _prop(len(unexpected), unexpected, bool(unexpected), "observed, never sent")
    props["P3"] = _prop(
        len(after_fail), after_fail, bool(after_fail), "observed although every send failed"
    )
    exactly_once = kind == "pipeline"
    props["P4"] = _prop(
        len(dup_values),
        [{"value": v, "ids": sorted(ids_by_value[v])} for v in dup_values],
        exactly_once and bool(dup_values),
        "values enqueued more than once"
        + (" (exactly-once: must be 0)" if exactly_once else " (at-least-once: reported)"),
    )
    props["P5"] = _check_order(invokes, done, values_by_id)
    props["P6"] = _check_leaders(observed)
    props["P7"] = _prop(
        len(observed.log_violations),
        observed.log_violations,
        bool(observed.log_violations),
        "a committed (index, term, crc) changed",
    )
    props["P8"] = _check_convergence(observed)
    props["stale_ack"] = _check_late_acks(done)
    props["stale_read"] = _check_stale_reads(invokes, done)
    liveness = _liveness(invokes, done, observed)
    props["P9"] = {"count": 0, "violation": False, "examples": [], "note": "reported", **liveness}

    violations = [name for name, p in props.items() if p["violation"]]
    return {
        "kind": kind,
        "ops": counts,
        "values_sent": len(attempts),
        "acknowledged": len(sent_ok),
        "observed": len(observed_values),
        "lost": len(lost),
        "unexpected": len(unexpected),
        "duplicated": len(dup_values),
        "redelivered": redelivered,
        "recovered": len(recovered),
        "indeterminate_sends": len(indeterminate),
        "properties": props,
        "violations": violations,
        "valid": not violations,
    }


def _check_order(
    invokes: Sequence[Op],
    done: dict[int, Op],
    values_by_id: dict[tuple[str, str], set[str]],
) -> dict[str, Any]:
    """P5 for queues: one value per message id (the queue's offset); each producer's
    acknowledged sends to a queue get strictly increasing sequence numbers in send order;
    on FIFO queues each group's values are first delivered in send order (a producer sends
    one value at a time, so its send order is its value order `p{n}-{seq}`)."""
    problems: list[dict[str, Any]] = []
    for (queue, mid), values in sorted(values_by_id.items()):
        if len(values) > 1:
            problems.append(
                {"kind": "two_values_one_id", "queue": queue, "id": mid, "values": sorted(values)}
            )
    last_seq: dict[tuple[str, str], tuple[int, str]] = {}
    for inv in invokes:
        c = done.get(inv.op_id)
        if inv.f != "send" or c is None or c.type != OK:
            continue
        meta = c.meta or {}
        if not isinstance(meta.get("seq"), int):
            continue
        key = (inv.process, str(meta.get("queue")))
        seq = int(meta["seq"])
        prev = last_seq.get(key)
        if prev is not None and seq <= prev[0] and str(inv.value) != prev[1]:
            problems.append(
                {
                    "kind": "seq_not_increasing",
                    "process": inv.process,
                    "queue": key[1],
                    "value": inv.value,
                    "seq": seq,
                    "previous": list(prev),
                }
            )
        last_seq[key] = (seq, str(inv.value))
    problems += _check_fifo(done)
    return _prop(len(problems), problems, bool(problems), "order: ids and sequence numbers")


def _value_order(value: str) -> tuple[str, int] | None:
    group, sep, seq = value.rpartition("-")
    return (group, int(seq)) if sep and seq.isdigit() else None


def _check_fifo(done: dict[int, Op]) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    last: dict[tuple[str, str], tuple[int, str]] = {}
    for c in sorted(done.values(), key=lambda op: op.time):
        queue = str((c.meta or {}).get("queue", ""))
        if c.f != "receive" or c.type != OK or not queue.endswith(".fifo"):
            continue
        for _mid, body in c.value or []:
            value = str(body)
            parsed = _value_order(value)
            if parsed is None or value in seen:
                continue  # redeliveries keep their place
            seen.add(value)
            key = (queue, parsed[0])
            prev = last.get(key)
            if prev is not None and parsed[1] < prev[0]:
                problems.append(
                    {
                        "kind": "fifo_order",
                        "queue": queue,
                        "group": parsed[0],
                        "value": value,
                        "after": prev[1],
                    }
                )
            last[key] = (parsed[1], value)
    return problems


def _check_leaders(observed: Observed) -> dict[str, Any]:
    by_term: dict[int, set[int]] = defaultdict(set)
    for term, nodes in observed.leaders_by_term.items():
        by_term[int(term)].update(nodes)
    for e in observed.elected:
        by_term[int(e["term"])].add(int(e["node"]))
    bad = [{"term": t, "leaders": sorted(n)} for t, n in sorted(by_term.items()) if len(n) > 1]
    return _prop(len(bad), bad, bool(bad), "at most one leader per term")


def _check_convergence(observed: Observed) -> dict[str, Any]:
    problems: list[dict[str, Any]] = []
    if observed.convergence_error:
        problems.append(
            {"kind": "state", "detail": observed.convergence_error, "states": observed.final_states}
        )
    logs = observed.final_logs
    missing = [n for n in observed.expected_nodes if n not in logs]
    if missing:
        problems.append({"kind": "no_final_log", "nodes": missing})
    maps = {n: {e[0]: (e[1], e[2]) for e in entries} for n, entries in logs.items()}
    his = {n: max(m) if m else 0 for n, m in maps.items()}
    if len(set(his.values())) > 1:
        problems.append({"kind": "commit_differs", "last_committed": his})
    nodes = sorted(maps)
    for a_i, a in enumerate(nodes):
        for b in nodes[a_i + 1 :]:
            for idx in sorted(set(maps[a]) & set(maps[b])):
                if maps[a][idx] != maps[b][idx]:
                    problems.append(
                        {"kind": "entry_differs", "index": idx, a: maps[a][idx], b: maps[b][idx]}
                    )
                    break
    return _prop(len(problems), problems, bool(problems), "after healing, logs and state agree")


def _check_late_acks(done: dict[int, Op]) -> dict[str, Any]:
    """An ack sent after the lease expired must be rejected as stale, never accepted."""
    bad = []
    for c in done.values():
        if c.f == "late_ack" and c.type == OK and (c.meta or {}).get("acked"):
            bad.append({"op_id": c.op_id, "process": c.process, "acked": c.meta.get("acked")})
    return _prop(len(bad), bad, bool(bad), "late acks (after the lease) accepted")


def _check_stale_reads(invokes: Sequence[Op], done: dict[int, Op]) -> dict[str, Any]:
    """A linearizable read of a queue's `sent_total` must count every send acknowledged
    before the read was invoked (e.g. a paused old leader must not answer from old state)."""
    acked: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for inv in invokes:
        c = done.get(inv.op_id)
        if inv.f == "send" and c is not None and c.type == OK:
            acked[str((c.meta or {}).get("queue"))].append((c.time, str(inv.value)))
    for times in acked.values():
        times.sort()
    bad = []
    for inv in invokes:
        c = done.get(inv.op_id)
        if inv.f != "read" or c is None or c.type != OK or not isinstance(c.value, int):
            continue
        queue = str(inv.value)
        before = {v for t, v in acked.get(queue, []) if t < inv.time}
        if c.value < len(before):
            bad.append(
                {
                    "op_id": inv.op_id,
                    "queue": queue,
                    "node": c.node,
                    "sent_total": c.value,
                    "acknowledged_before": len(before),
                    "time": round(inv.time, 3),
                }
            )
    return _prop(len(bad), bad, bool(bad), "linearizable reads missing acknowledged sends")


def _leader_at(events: list[dict[str, Any]], t: float) -> float | None:
    """First time >= t when some node is leader at the highest term any node reports."""
    state: dict[int, tuple[int, str]] = {}
    ordered = sorted(events, key=lambda e: e["time"])

    def has_leader() -> bool:
        if not state:
            return False
        top = max(term for term, _ in state.values())
        return any(role == "leader" and term == top for term, role in state.values())

    i = 0
    while i < len(ordered) and ordered[i]["time"] <= t:
        e = ordered[i]
        state[e["node"]] = (e["term"], e["role"])
        i += 1
    if has_leader():
        return t
    for e in ordered[i:]:
        state[e["node"]] = (e["term"], e["role"])
        if has_leader():
            return float(e["time"])
    return None


def _liveness(invokes: Sequence[Op], done: dict[int, Op], observed: Observed) -> dict[str, Any]:
    oks = sorted(
        c.time for c in done.values() if c.type == OK and c.f in WRITE_FS and c.process != "drain"
    )
    end = observed.faults_end if observed.faults_end is not None else (oks[-1] if oks else 0.0)
    start = min((inv.time for inv in invokes), default=0.0)
    main = [t for t in oks if t <= end]
    gaps = [b - a for a, b in zip([start, *main], [*main, end], strict=True)]
    windows = [w for w in observed.windows if w.get("start") is not None]
    fault_time = 0.0
    ok_in_faults = 0
    for w in windows:
        w_end = w.get("end") if w.get("end") is not None else end
        fault_time += max(0.0, w_end - w["start"])
        ok_in_faults += sum(1 for t in main if w["start"] <= t <= w_end)
    total = max(end - start, 1e-9)
    calm_time = max(total - fault_time, 1e-9)
    heals = []
    for w in windows:
        if w.get("end") is None:
            continue
        lead_t = _leader_at(observed.events, w["end"])
        first_ok = next((t for t in oks if t >= w["end"]), None)
        heals.append(
            {
                "fault": w["name"],
                "healed_at": round(w["end"], 3),
                "leader_after_s": None if lead_t is None else round(lead_t - w["end"], 3),
                "first_ok_after_s": None if first_ok is None else round(first_ok - w["end"], 3),
            }
        )
    leader_times = [h["leader_after_s"] for h in heals if h["leader_after_s"] is not None]
    # Elections no fault explains: not inside a fault window nor within 2 s after one.
    elections = sorted(
        {(e["term"], e["node"], e["time"]) for e in observed.events if e["role"] == "leader"},
        key=lambda x: x[2],
    )
    first_term = min((t for t, _n, _ti in elections), default=0)
    unprovoked = [
        {"term": term, "node": node, "time": round(t, 3)}
        for term, node, t in elections
        if term > first_term
        and t <= end
        and not any(
            w["start"] <= t <= (w["end"] if w.get("end") is not None else end) + 2.0
            for w in windows
        )
    ]
    return {
        "max_unavailability_s": round(max(gaps, default=0.0), 3),
        "ok_per_s_during_faults": round(ok_in_faults / fault_time, 2) if fault_time else None,
        "ok_per_s_outside_faults": round((len(main) - ok_in_faults) / calm_time, 2),
        "max_leader_after_heal_s": max(leader_times) if leader_times else None,
        "elections_outside_faults": unprovoked,
        "heals": heals,
    }
