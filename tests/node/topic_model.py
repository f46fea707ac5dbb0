"""A reference model of topics and consumer groups: plain Python lists and dicts.

It states the rules the LMDB state (node/state/topics.py, groups.py, streams.py) must
follow, the simple way: every command first drops what retention lets go and the members
whose session ended (in command time), then runs; a refused command changes nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from node.state.topics import partition_for_key
from raft.messages import pack


class ModelError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Topic:
    partitions: int
    retention_s: int | None
    retention_bytes: int | None
    rr: int = 0
    # per partition: log_start, next offset, [(offset, ts, size, record)]
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    logs: list[list[tuple[int, int, int, dict[str, Any]]]] = field(default_factory=list)


@dataclass
class Group:
    topic: str
    generation: int
    offsets: list[int | None]
    members: dict[str, list[int]] = field(default_factory=dict)  # id -> [timeout, deadline]


@dataclass
class State:
    now_ms: int = 0
    topics: dict[str, Topic] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    producers: dict[str, int] = field(default_factory=dict)  # id -> latest epoch
    sessions: dict[tuple[str, str], tuple[int, int, list[dict[str, Any]]]] = field(
        default_factory=dict
    )
    next_member: int = 0
    txns: dict[str, dict[str, Any]] = field(default_factory=dict)


def assignment(members: list[str], partitions: int) -> dict[str, list[int]]:
    ordered = sorted(members)
    out, start = {}, 0
    for i, m in enumerate(ordered):
        n = partitions // len(ordered) + (1 if i < partitions % len(ordered) else 0)
        out[m] = list(range(start, start + n))
        start += n
    return out


class TopicModel:
    def __init__(self) -> None:
        self.state = State()

    def apply(self, op: str, ts_ms: int, **fields: Any) -> dict[str, Any]:
        trial = copy.deepcopy(self.state)
        try:
            trial.now_ms = max(ts_ms, trial.now_ms)
            self._release(trial)
            result = getattr(self, f"_op_{op}")(trial, **fields)
        except ModelError as exc:
            return {"error": {"code": exc.code}}
        self.state = trial
        return result

    # ---- time ---------------------------------------------------------------------------

    def _release(self, s: State) -> None:
        for t in s.topics.values():
            if t.retention_s is None:
                continue
            for p, log in enumerate(t.logs):
                while log and log[0][1] + t.retention_s * 1000 <= s.now_ms:
                    log.pop(0)
                    t.starts[p] += 1
        for g in s.groups.values():
            for m in [m for m, (_t, at) in g.members.items() if at <= s.now_ms]:
                del g.members[m]
                g.generation += 1

    # ---- topics -------------------------------------------------------------------------

    def _trim(self, t: Topic, p: int) -> None:
        if t.retention_bytes is None:
            return
        while sum(r[2] for r in t.logs[p]) > t.retention_bytes and len(t.logs[p]) > 1:
            t.logs[p].pop(0)
            t.starts[p] += 1

    def _op_topic_put(self, s: State, name: str, config: dict[str, Any]) -> dict[str, Any]:
        old = s.topics.get(name)
        parts = config.get("partitions", 1 if old is None else old.partitions)
        if not 1 <= parts <= 1024:
            raise ModelError("bad_request")
        if old is not None and parts < old.partitions:
            raise ModelError("conflict")
        t = Topic(parts, 604_800, None) if old is None else old
        t.retention_s = config.get("retention_s", t.retention_s)
        t.retention_bytes = config.get("retention_bytes", t.retention_bytes)
        grew = old is not None and parts > old.partitions
        while len(t.logs) < parts:
            t.logs.append([])
            t.starts.append(0)
            t.ends.append(0)
        t.partitions = parts
        for p in range(parts):
            self._trim(t, p)
        s.topics[name] = t
        if grew:
            for g in s.groups.values():
                if g.topic == name:
                    g.offsets += [None] * (parts - len(g.offsets))
                    g.generation += 1
        public = {"name": name, "partitions": parts}
        public |= {"retention_s": t.retention_s, "retention_bytes": t.retention_bytes}
        return {"created": old is None, "topic": public}

    def _op_topic_delete(self, s: State, name: str) -> dict[str, Any]:
        t = s.topics.pop(name, None)
        if t is None:
            raise ModelError("not_found")
        groups = [g for g in s.groups if s.groups[g].topic == name]
        for g in groups:
            del s.groups[g]
        s.sessions = {k: v for k, v in s.sessions.items() if k[0] != name}
        dropped = sum(e - st for st, e in zip(t.starts, t.ends, strict=True))
        return {"deleted": name, "records": dropped, "groups": len(groups)}

    def _op_topic_append(
        self, s: State, topic: str, records: list[dict[str, Any]], producer: Any = None
    ) -> dict[str, Any]:
        t = s.topics.get(topic)
        if t is None:
            raise ModelError("not_found")
        for r in records:
            if r.get("partition") is not None and not 0 <= r["partition"] < t.partitions:
                raise ModelError("bad_request")
        if producer is None:
            return {"records": self._append(s, t, records)}
        pid, epoch, seq = producer["id"], producer["epoch"], producer["seq"]
        session = s.sessions.get((topic, pid))
        latest = max(s.producers.get(pid, -1), -1 if session is None else session[0])
        if epoch < latest:
            raise ModelError("producer_fenced")
        if session is not None and session[0] == epoch:
            if seq == session[1]:
                return {"records": [{**r, "duplicate": True} for r in session[2]]}
            if seq != session[1] + 1:
                raise ModelError("out_of_order_sequence")
        s.producers[pid] = max(s.producers.get(pid, -1), epoch)
        result = self._append(s, t, records)
        s.sessions[(topic, pid)] = (epoch, seq, result)
        return {"records": result}

    def _append(self, s: State, t: Topic, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out, touched = [], set()
        for r in records:
            p = r.get("partition")
            if p is None:
                if r.get("key") is not None:
                    p = partition_for_key(r["key"], t.partitions)
                else:
                    p, t.rr = t.rr % t.partitions, t.rr + 1
            offset = t.ends[p]
            stored = [s.now_ms, r.get("key"), r["value"], r.get("headers", {})]
            t.logs[p].append((offset, s.now_ms, len(pack(stored)), r))
            t.ends[p] += 1
            touched.add(p)
            out.append({"partition": p, "offset": offset, "duplicate": False})
        for p in touched:
            self._trim(t, p)
        return out

    # ---- groups -------------------------------------------------------------------------

    def _view(self, s: State, name: str, member: str) -> dict[str, Any]:
        g = s.groups[name]
        t = s.topics[g.topic]
        parts = assignment(list(g.members), t.partitions).get(member, [])
        positions = []
        for p in parts:
            committed = g.offsets[p] if p < len(g.offsets) else None
            start = t.starts[p]
            positions.append(
                {"partition": p, "offset": start if committed is None else max(committed, start)}
            )
        return {
            "group": name,
            "topic": g.topic,
            "member_id": member,
            "generation": g.generation,
            "partitions": parts,
            "positions": positions,
        }

    def _op_group_join(
        self,
        s: State,
        group: str,
        topic: str,
        member_id: str | None = None,
        session_timeout_ms: int = 30_000,
        start: str = "earliest",
    ) -> dict[str, Any]:
        t = s.topics.get(topic)
        if t is None:
            raise ModelError("not_found")
        g = s.groups.get(group)
        if g is None:
            offsets = [None if start == "earliest" else t.ends[p] for p in range(t.partitions)]
            g = Group(topic, 0, offsets)
        elif g.topic != topic:
            raise ModelError("conflict")
        if member_id is None or member_id not in g.members:
            if member_id is None:
                s.next_member += 1
                member_id = f"member-{s.next_member}"
            g.generation += 1
        g.members[member_id] = [session_timeout_ms, s.now_ms + session_timeout_ms]
        s.groups[group] = g
        return self._view(s, group, member_id)

    def _member(self, s: State, group: str, member_id: str) -> Group:
        g = s.groups.get(group)
        if g is None:
            raise ModelError("not_found")
        if member_id not in g.members:
            raise ModelError("conflict")
        return g

    def _op_group_heartbeat(self, s: State, group: str, member_id: str) -> dict[str, Any]:
        g = self._member(s, group, member_id)
        g.members[member_id][1] = s.now_ms + g.members[member_id][0]
        return self._view(s, group, member_id)

    def _op_group_leave(self, s: State, group: str, member_id: str) -> dict[str, Any]:
        g = self._member(s, group, member_id)
        del g.members[member_id]
        g.generation += 1
        return {"group": group, "left": member_id, "generation": g.generation}

    def _op_group_commit(
        self, s: State, group: str, member_id: str, generation: int, offsets: list[dict[str, Any]]
    ) -> dict[str, Any]:
        g = self._member(s, group, member_id)
        if generation != g.generation:
            raise ModelError("conflict")
        t = s.topics[g.topic]
        owned = assignment(list(g.members), t.partitions)[member_id]
        g.offsets += [None] * (t.partitions - len(g.offsets))
        for item in offsets:
            if item["partition"] not in owned:
                raise ModelError("conflict")
            if not 0 <= item["offset"] <= t.ends[item["partition"]]:
                raise ModelError("bad_request")
            g.offsets[item["partition"]] = item["offset"]
        g.members[member_id][1] = s.now_ms + g.members[member_id][0]
        return {"group": group, "committed": len(offsets), "generation": g.generation}

    def _op_txn(
        self, s: State, txn_id: str, publish=(), commit_offsets=(), ack=(), send=()
    ) -> dict[str, Any]:
        """Topic publishes and group offset commits in a transaction (no queue items here:
        tests/node/model.py covers those)."""
        seen = s.txns.get(txn_id)
        if seen is not None and seen["expire"] > s.now_ms:
            return {**seen["result"], "duplicate": True}
        results: dict[str, Any] = {"send": [], "ack": 0}
        if publish:
            out = []
            for item in publish:
                t = s.topics.get(item["topic"])
                if t is None:
                    raise ModelError("not_found")
                for r in item["records"]:
                    if r.get("partition") is not None and not 0 <= r["partition"] < t.partitions:
                        raise ModelError("bad_request")
                out.append({"topic": item["topic"], "records": self._append(s, t, item["records"])})
            results["publish"] = out
        if commit_offsets:
            for item in commit_offsets:
                g = s.groups.get(item["group"])
                if g is None:
                    raise ModelError("not_found")
                if item["generation"] != g.generation:
                    raise ModelError("conflict")
                t = s.topics[g.topic]
                p = item["partition"]
                if p >= t.partitions:
                    raise ModelError("bad_request")
                member = item.get("member_id")
                if member is not None and p not in assignment(list(g.members), t.partitions).get(
                    member, []
                ):
                    raise ModelError("conflict")
                if item["offset"] > t.ends[p]:
                    raise ModelError("bad_request")
                g.offsets += [None] * (t.partitions - len(g.offsets))
                g.offsets[p] = item["offset"]
            results["commit_offsets"] = len(commit_offsets)
        result = {"committed": True, "txn_id": txn_id, "results": results}
        s.txns[txn_id] = {"result": result, "expire": s.now_ms + 300_000}
        return {**result, "duplicate": False}

    def _op_tick(self, s: State) -> dict[str, Any]:
        return {}

    # ---- views --------------------------------------------------------------------------

    def partitions(self, name: str) -> list[tuple[int, int]]:
        t = self.state.topics[name]
        return list(zip(t.starts, t.ends, strict=True))

    def records(self, name: str, p: int) -> list[tuple[int, bytes, str | None]]:
        t = self.state.topics[name]
        return [(off, r["value"], r.get("key")) for off, _ts, _size, r in t.logs[p]]

    def group_view(self, name: str) -> dict[str, Any]:
        g = self.state.groups[name]
        return {
            "generation": g.generation,
            "members": sorted(g.members),
            "committed": [
                g.offsets[p] if p < len(g.offsets) else None
                for p in range(self.state.topics[g.topic].partitions)
            ],
        }
