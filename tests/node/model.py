"""The in-memory reference model of the queue semantics, written for clarity, not speed.

It keeps every message in plain dicts and recomputes everything by brute force (sorting
all messages for every delivery, scanning all for every deadline), so it is easy to
check by reading. The hypothesis test runs it side by side with QueueStateMachine and
demands identical results. Commands that fail change nothing: the model runs each
command on a deep copy and keeps it only on success.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

DEFAULTS: dict[str, Any] = {
    "fifo": False,
    "visibility_timeout_s": 30,
    "max_receives": 0,
    "dead_letter_queue": None,
    "retention_s": 345_600,
    "delay_s": 0,
    "dedup_window_s": 300,
    "max_message_bytes": 262_144,
    "content_based_dedup": False,
    "expires_s": None,
}
TOTALS = ("sent_total", "acked_total", "dead_lettered_total", "expired_total")
READY, IN_FLIGHT, DELAYED = "ready", "in_flight", "delayed"


class ModelError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class ModelQueue:
    name: str
    config: dict[str, Any]
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> message
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOTALS, 0))
    dedup: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)  # producer -> session


@dataclass
class ModelState:
    now_ms: int = 0
    next_seq: int = 1
    queues: dict[str, ModelQueue] = field(default_factory=dict)
    next_producer: int = 1
    producer_epochs: dict[str, int] = field(default_factory=dict)
    txns: dict[str, dict[str, Any]] = field(default_factory=dict)
    # name -> {"type", "alternate_queue", "bindings": [binding, ...], counters...}
    exchanges: dict[str, dict[str, Any]] = field(default_factory=dict)


def ms(seconds: float | None, default_s: float) -> int:
    return round((default_s if seconds is None else seconds) * 1000)


class QueueModel:
    def __init__(self) -> None:
        self.state = ModelState()

    # ---- entry point ------------------------------------------------------------------

    def apply(self, op: str, ts_ms: int, **fields: Any) -> dict[str, Any]:
        trial = copy.deepcopy(self.state)
        try:
            trial.now_ms = max(ts_ms, trial.now_ms)
            released = self._release(trial)
            result = getattr(self, f"_op_{op}")(trial, released, **fields)
        except ModelError as exc:
            return {"error": {"code": exc.code}}
        self.state = trial
        return result

    # ---- queries ----------------------------------------------------------------------

    def info(self, name: str, now_ms: int) -> dict[str, Any]:
        q = self.state.queues[name]
        states = [m["state"] for m in q.messages.values()]
        oldest = min((m["enq"] for m in q.messages.values()), default=None)
        return {
            "name": name,
            **q.config,
            "depth": states.count(READY),
            "in_flight": states.count(IN_FLIGHT),
            "delayed": states.count(DELAYED),
            **q.totals,
            "oldest_age_ms": None if oldest is None else max(0, now_ms - oldest),
        }

    def list_queues(self, now_ms: int) -> list[dict[str, Any]]:
        return [self.info(name, now_ms) for name in sorted(self.state.queues)]

    # ---- time -------------------------------------------------------------------------

    def _release(self, s: ModelState) -> dict[str, int]:
        counts = {
            "expired": 0,
            "leases_expired": 0,
            "delays_ended": 0,
            "dedup_expired": 0,
            "txns_expired": 0,
        }
        for q in s.queues.values():
            for seq, m in sorted(q.messages.items()):
                if m["expire"] <= s.now_ms:
                    del q.messages[seq]
                    q.totals["expired_total"] += 1
                    counts["expired"] += 1
            for m in q.messages.values():
                if m["state"] != READY and m["deadline"] <= s.now_ms:
                    counts["leases_expired" if m["state"] == IN_FLIGHT else "delays_ended"] += 1
                    m["state"], m["deadline"] = READY, 0
            for key in [k for k, e in q.dedup.items() if e["expire"] <= s.now_ms]:
                del q.dedup[key]
                counts["dedup_expired"] += 1
        for txn_id in [t for t, e in s.txns.items() if e["expire"] <= s.now_ms]:
            del s.txns[txn_id]
            counts["txns_expired"] += 1
        return counts

    # ---- ops --------------------------------------------------------------------------

    def _queue(self, s: ModelState, name: str) -> ModelQueue:
        if name not in s.queues:
            raise ModelError("not_found")
        return s.queues[name]

    def _op_tick(self, s: ModelState, released: dict[str, int]) -> dict[str, Any]:
        return released

    def _op_queue_put(self, s: ModelState, released, name: str, config: dict) -> dict[str, Any]:
        existing = s.queues.get(name)
        merged = dict(DEFAULTS) if existing is None else dict(existing.config)
        if existing is None and name.endswith(".fifo") and "fifo" not in config:
            merged["fifo"] = True
        merged.update(config)
        if merged["dead_letter_queue"] == name:
            raise ModelError("bad_request")
        if existing is not None and merged["fifo"] != existing.config["fifo"]:
            raise ModelError("conflict")
        if name.endswith(".fifo") and not merged["fifo"]:
            raise ModelError("bad_request")
        if merged["content_based_dedup"] and not merged["fifo"]:
            raise ModelError("bad_request")
        dlq = merged["dead_letter_queue"]
        if merged["max_receives"] > 0 and dlq is None:
            raise ModelError("bad_request")
        if dlq is not None and (
            dlq == name or dlq not in s.queues or s.queues[dlq].config["fifo"] != merged["fifo"]
        ):
            raise ModelError("bad_request")
        if existing is None:
            s.queues[name] = ModelQueue(name, merged)
        else:
            existing.config = merged
        return {"created": existing is None, "queue": {"name": name, **merged}}

    def _op_queue_delete(self, s: ModelState, released, name: str) -> dict[str, Any]:
        q = self._queue(s, name)
        if any(o.config["dead_letter_queue"] == name for o in s.queues.values()):
            raise ModelError("conflict")
        del s.queues[name]  # its producer sessions go with it
        result: dict[str, Any] = {"deleted": True, "messages": len(q.messages)}
        unbound = {}
        for ex_name, ex in sorted(s.exchanges.items()):
            kept = [b for b in ex["bindings"] if b["queue"] != name]
            if len(kept) != len(ex["bindings"]):
                unbound[ex_name] = len(ex["bindings"]) - len(kept)
                ex["bindings"] = kept
        if unbound:
            result["unbound"] = unbound
        return result

    def _op_queue_purge(self, s: ModelState, released, name: str) -> dict[str, Any]:
        q = self._queue(s, name)
        n = len(q.messages)
        q.messages.clear()
        return {"purged": n}

    def _op_send(
        self, s: ModelState, released, queue: str, messages: list, producer=None
    ) -> dict[str, Any]:
        q = self._queue(s, queue)
        self._check_batch(q, messages)
        if producer is None:
            return {"messages": self._enqueue(s, q, messages)}
        pid, epoch, seq = producer["id"], producer["epoch"], producer["seq"]
        session = q.sessions.get(pid)
        latest = s.producer_epochs.get(pid, -1)
        if session is not None:
            latest = max(latest, session["epoch"])
        if epoch < latest:
            raise ModelError("producer_fenced")
        if session is not None and session["epoch"] == epoch:
            if seq == session["seq"]:
                return {"messages": [{**m, "duplicate": True} for m in session["result"]]}
            if seq != session["seq"] + 1:
                raise ModelError("out_of_order_sequence")
        s.producer_epochs[pid] = max(s.producer_epochs.get(pid, -1), epoch)
        result = self._enqueue(s, q, messages)
        q.sessions[pid] = {"epoch": epoch, "seq": seq, "result": result}
        return {"messages": result}

    def _op_producer_init(self, s: ModelState, released, producer_id=None) -> dict[str, Any]:
        if producer_id is None:
            producer_id = f"p{s.next_producer:016x}"
            s.next_producer += 1
        epoch = s.producer_epochs.get(producer_id, -1) + 1
        s.producer_epochs[producer_id] = epoch
        return {"producer_id": producer_id, "epoch": epoch}

    def _op_txn(
        self, s: ModelState, released, txn_id: str, ack=(), send=(), commit_offsets=()
    ) -> dict[str, Any]:
        if txn_id in s.txns:
            return {**s.txns[txn_id]["result"], "duplicate": True}
        acked, stale = 0, []
        for item in ack:
            q = self._queue(s, item["queue"])
            m = self._leased(s, q, item["receipt"])
            if m is None:
                stale.append(item)
                continue
            del q.messages[m["seq"]]
            q.totals["acked_total"] += 1
            acked += 1
        if stale:
            raise ModelError("conflict")
        sent = []
        for item in send:
            q = self._queue(s, item["queue"])
            self._check_batch(q, item["messages"])
            sent.append({"queue": q.name, "messages": self._enqueue(s, q, item["messages"])})
        result = {"committed": True, "txn_id": txn_id, "results": {"send": sent, "ack": acked}}
        s.txns[txn_id] = {"result": result, "expire": s.now_ms + 300_000}
        return {**result, "duplicate": False}

    # ---- exchanges ----------------------------------------------------------------------

    def exchanges(self) -> list[dict[str, Any]]:
        return [self._public_exchange(n, e) for n, e in sorted(self.state.exchanges.items())]

    @staticmethod
    def _public_exchange(name: str, ex: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "type": ex["type"],
            "alternate_queue": ex["alternate_queue"],
            "binding_count": len(ex["bindings"]),
            "published_total": ex["published_total"],
            "routed_total": ex["routed_total"],
            "unroutable_total": ex["unroutable_total"],
        }

    def _exchange(self, s: ModelState, name: str) -> dict[str, Any]:
        if name not in s.exchanges:
            raise ModelError("not_found")
        return s.exchanges[name]

    def _op_exchange_put(
        self, s: ModelState, released, name: str, type: str, alternate_queue=None
    ) -> dict[str, Any]:
        existing = s.exchanges.get(name)
        if existing is not None and existing["type"] != type:
            raise ModelError("conflict")
        if alternate_queue is not None and alternate_queue not in s.queues:
            raise ModelError("bad_request")
        if existing is None:
            existing = s.exchanges[name] = {
                "type": type,
                "bindings": [],
                "published_total": 0,
                "routed_total": 0,
                "unroutable_total": 0,
            }
            created = True
        else:
            created = False
        existing["alternate_queue"] = alternate_queue
        return {"created": created, "exchange": self._public_exchange(name, existing)}

    def _op_exchange_delete(self, s: ModelState, released, name: str) -> dict[str, Any]:
        ex = self._exchange(s, name)
        del s.exchanges[name]
        return {"deleted": name, "bindings": len(ex["bindings"])}

    @staticmethod
    def _binding(kind: str, queue: str, spec: dict[str, Any]) -> dict[str, Any]:
        given = {k for k, v in spec.items() if v is not None}
        allowed = {
            "direct": {"routing_key"},
            "fanout": set(),
            "topic": {"pattern", "routing_key"},
            "headers": {"headers", "match"},
        }[kind]
        if given - allowed:
            raise ModelError("bad_request")
        binding: dict[str, Any] = {"queue": queue}
        if kind == "direct":
            binding["routing_key"] = spec.get("routing_key") or ""
        elif kind == "topic":
            if given == {"pattern", "routing_key"}:
                raise ModelError("bad_request")
            binding["pattern"] = spec.get("pattern", spec.get("routing_key")) or ""
        elif kind == "headers":
            if spec.get("headers") is None:
                raise ModelError("bad_request")
            binding["headers"] = dict(sorted(spec["headers"].items()))
            binding["match"] = spec.get("match") or "all"
        return binding

    def _op_exchange_bind(
        self, s: ModelState, released, exchange: str, queue: str, **spec: Any
    ) -> dict[str, Any]:
        ex = self._exchange(s, exchange)
        binding = self._binding(ex["type"], queue, spec)
        self._queue(s, queue)
        if binding in ex["bindings"]:
            return {"created": False, "binding": binding}
        ex["bindings"].append(binding)
        return {"created": True, "binding": binding}

    def _op_exchange_unbind(
        self, s: ModelState, released, exchange: str, queue: str, **spec: Any
    ) -> dict[str, Any]:
        ex = self._exchange(s, exchange)
        binding = self._binding(ex["type"], queue, spec)
        if binding not in ex["bindings"]:
            raise ModelError("not_found")
        ex["bindings"].remove(binding)
        return {"deleted": True, "binding": binding}

    @staticmethod
    def _matches(kind: str, b: dict[str, Any], key: str, headers: dict[str, str]) -> bool:
        if kind == "fanout":
            return True
        if kind == "direct":
            return b["routing_key"] == key
        if kind == "topic":
            return topic_literal(b["pattern"].split(".") if b["pattern"] else [],
                                 key.split(".") if key else [])  # fmt: skip
        hits = [headers.get(k) == v for k, v in b["headers"].items()]
        return any(hits) if b["match"] == "any" else all(hits)

    def _op_exchange_publish(
        self, s: ModelState, released, exchange: str, messages: list
    ) -> dict[str, Any]:
        ex = self._exchange(s, exchange)
        if not messages:
            raise ModelError("bad_request")
        routes, matched, copies_of = [], [], {}
        for i, msg in enumerate(messages):
            key, headers = msg.get("routing_key") or "", msg.get("headers") or {}
            targets = sorted(
                {b["queue"] for b in ex["bindings"] if self._matches(ex["type"], b, key, headers)}
            )
            matched.append(bool(targets))
            if not targets and ex["alternate_queue"] is not None:
                targets = [ex["alternate_queue"]]
            routes.append(targets)
            copy_msg = {k: v for k, v in msg.items() if k not in ("routing_key", "headers")}
            if headers:
                copy_msg["attributes"] = {**headers, **(msg.get("attributes") or {})}
            for name in targets:
                copies_of.setdefault(name, []).append((i, copy_msg))
        ids: list[dict[str, str]] = [{} for _ in messages]
        dups: list[list[str]] = [[] for _ in messages]
        copies = 0
        for name in sorted(copies_of):
            if name not in s.queues:
                for i, _m in copies_of[name]:
                    routes[i] = [q for q in routes[i] if q != name]
                continue
            q = s.queues[name]
            batch = [m for _i, m in copies_of[name]]
            self._check_batch(q, batch)
            for (i, _m), result in zip(copies_of[name], self._enqueue(s, q, batch), strict=True):
                ids[i][name] = result["id"]
                if result["duplicate"]:
                    dups[i].append(name)
                else:
                    copies += 1
        ex["published_total"] += len(messages)
        ex["routed_total"] += copies
        ex["unroutable_total"] += matched.count(False)
        return {
            "messages": [
                {
                    "routed_to": routes[i],
                    "ids": ids[i],
                    "duplicates": dups[i],
                    "unroutable": not matched[i],
                }
                for i in range(len(messages))
            ]
        }

    def _check_batch(self, q: ModelQueue, messages: list) -> None:
        cfg = q.config
        if not messages:
            raise ModelError("bad_request")
        for msg in messages:  # the same check order as the state machine
            if len(msg["body"]) > cfg["max_message_bytes"]:
                raise ModelError("too_large")
            if cfg["fifo"] and msg.get("group_id") is None:
                raise ModelError("bad_request")

    def _enqueue(self, s: ModelState, q: ModelQueue, messages: list) -> list[dict[str, Any]]:
        cfg = q.config
        out = []
        for msg in messages:
            dedup_id = msg.get("dedup_id")
            if dedup_id is None and cfg["content_based_dedup"]:
                dedup_id = hashlib.sha256(msg["body"]).hexdigest()
            window_ms = cfg["dedup_window_s"] * 1000
            if dedup_id is not None and window_ms > 0 and dedup_id in q.dedup:
                seen = q.dedup[dedup_id]
                out.append({"id": seen["id"], "seq": seen["seq"], "duplicate": True})
                continue
            seq = s.next_seq
            s.next_seq += 1
            delay_ms = ms(msg.get("delay_s"), 0)
            if delay_ms <= 0:
                delay_ms = cfg["delay_s"] * 1000
            q.messages[seq] = {
                "id": format(seq, "016x"),
                "seq": seq,
                "body": msg["body"],
                "attrs": dict(sorted((msg.get("attributes") or {}).items())),
                "group": msg.get("group_id"),
                "prio": msg.get("priority") or 0,
                "enq": s.now_ms,
                "expire": s.now_ms + cfg["retention_s"] * 1000,
                "state": DELAYED if delay_ms > 0 else READY,
                "deadline": s.now_ms + delay_ms if delay_ms > 0 else 0,
                "rc": 0,
                "lease": 0,
                "src": None,
            }
            q.totals["sent_total"] += 1
            if dedup_id is not None and window_ms > 0:
                q.dedup[dedup_id] = {
                    "id": format(seq, "016x"),
                    "seq": seq,
                    "expire": s.now_ms + window_ms,
                }
            out.append({"id": format(seq, "016x"), "seq": seq, "duplicate": False})
        return out

    def _deliverable(self, q: ModelQueue) -> list[dict[str, Any]]:
        """READY messages in delivery order (FIFO: only each group's oldest message)."""
        ready = [m for m in q.messages.values() if m["state"] == READY]
        if q.config["fifo"]:
            heads = {}
            for m in sorted(q.messages.values(), key=lambda m: m["seq"]):
                heads.setdefault(m["group"], m["seq"])
            ready = [m for m in ready if heads[m["group"]] == m["seq"]]
            return sorted(ready, key=lambda m: m["seq"])
        return sorted(ready, key=lambda m: (-m["prio"], m["seq"]))

    def _move(self, s: ModelState, src: ModelQueue, dst: ModelQueue, m: dict, *, origin, rc):
        del src.messages[m["seq"]]
        m.update(
            state=READY,
            deadline=0,
            expire=s.now_ms + dst.config["retention_s"] * 1000,
            src=origin,
            rc=rc,
        )
        dst.messages[m["seq"]] = m

    def _op_receive(
        self,
        s: ModelState,
        released,
        queue: str,
        max: int = 1,
        visibility_timeout_s=None,
        auto_ack: bool = False,
    ) -> dict[str, Any]:
        q = self._queue(s, queue)
        if not 1 <= max <= 1000:
            raise ModelError("bad_request")
        vt_ms = ms(visibility_timeout_s, q.config["visibility_timeout_s"])
        out: list[dict[str, Any]] = []
        while len(out) < max:
            candidates = self._deliverable(q)
            if not candidates:
                break
            m = candidates[0]
            limit = q.config["max_receives"]
            if limit > 0 and m["rc"] + 1 > limit:
                dlq = s.queues[q.config["dead_letter_queue"]]
                self._move(s, q, dlq, m, origin=m["src"] or q.name, rc=m["rc"])
                q.totals["dead_lettered_total"] += 1
                continue
            m["rc"] += 1
            m["lease"] += 1
            out.append(
                {
                    "id": m["id"],
                    "body": m["body"],
                    "attributes": m["attrs"],
                    "receipt": _receipt(q.name, m),
                    "receive_count": m["rc"],
                    "enqueued_at": m["enq"],
                    "group_id": m["group"],
                    "priority": m["prio"],
                    "seq": m["seq"],
                }
            )
            if auto_ack:
                del q.messages[m["seq"]]
                q.totals["acked_total"] += 1
            else:
                m["state"], m["deadline"] = IN_FLIGHT, s.now_ms + vt_ms
        return {"messages": out}

    def _leased(self, s: ModelState, q: ModelQueue, receipt: Any) -> dict[str, Any] | None:
        for m in q.messages.values():
            if (
                m["state"] == IN_FLIGHT
                and receipt == _receipt(q.name, m)
                and m["deadline"] > s.now_ms
            ):
                return m
        return None

    def _op_ack(self, s: ModelState, released, queue: str, receipts: list) -> dict[str, Any]:
        q = self._queue(s, queue)
        acked, stale = 0, []
        for r in receipts:
            m = self._leased(s, q, r)
            if m is None:
                stale.append(r)
                continue
            del q.messages[m["seq"]]
            q.totals["acked_total"] += 1
            acked += 1
        return {"acked": acked, "stale": stale}

    def _op_nack(
        self, s: ModelState, released, queue: str, receipts: list, delay_s=None
    ) -> dict[str, Any]:
        q = self._queue(s, queue)
        delay_ms = ms(delay_s, 0)
        nacked, stale = 0, []
        for r in receipts:
            m = self._leased(s, q, r)
            if m is None:
                stale.append(r)
                continue
            if delay_ms > 0:
                m["state"], m["deadline"] = DELAYED, s.now_ms + delay_ms
            else:
                m["state"], m["deadline"] = READY, 0
            nacked += 1
        return {"nacked": nacked, "stale": stale}

    def _op_extend(
        self, s: ModelState, released, queue: str, receipts: list, visibility_timeout_s=None
    ) -> dict[str, Any]:
        q = self._queue(s, queue)
        vt_ms = ms(visibility_timeout_s, q.config["visibility_timeout_s"])
        extended, stale = 0, []
        for r in receipts:
            m = self._leased(s, q, r)
            if m is None:
                stale.append(r)
                continue
            m["deadline"] = s.now_ms + vt_ms
            extended += 1
        return {"extended": extended, "stale": stale}

    def _op_redrive(self, s: ModelState, released, queue: str) -> dict[str, Any]:
        dlq = self._queue(s, queue)
        moved = 0
        for seq in sorted(dlq.messages):
            m = dlq.messages[seq]
            source = s.queues.get(m["src"]) if m["src"] is not None else None
            if source is None or m["state"] == IN_FLIGHT:
                continue
            if source.config["fifo"] != dlq.config["fifo"]:
                continue
            self._move(s, dlq, source, m, origin=None, rc=0)
            moved += 1
        return {"redriven": moved}


def topic_literal(pattern: list[str], key: list[str]) -> bool:
    """AMQP topic matching read literally: `*` one word, `#` zero or more."""
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(topic_literal(rest, key[i:]) for i in range(len(key) + 1))
    return bool(key) and head in ("*", key[0]) and topic_literal(rest, key[1:])


def _receipt(queue: str, m: dict[str, Any]) -> str:
    """What the API documents: `{id}.{lease}.{tag}`, the tag the 12-byte keyed BLAKE2b of
    "{queue}\\n{id}\\n{lease}" under the cluster key, in URL-safe base64 (the model runs
    with the empty key of a cluster without a secret)."""
    mac = hashlib.blake2b(f"{queue}\n{m['id']}\n{m['lease']}".encode(), digest_size=12)
    return f"{m['id']}.{m['lease']}.{base64.urlsafe_b64encode(mac.digest()).decode()}"
