"""Topics: partitioned append-only logs with dense offsets per partition (Kafka-like).

Why records live in their own sub-db keyed by (topic id, partition, offset): a fetch is one
cursor walk from the asked offset, retention drops a prefix of each partition, and the
snapshot and the state hash cover the logs like every other node.* table. Nothing is ever
rewritten in place: an append adds keys at the end of its partitions.

Layout:
  node.topics        name -> {"id","name","partitions","retention_s","retention_bytes",
                              "rr","created_ms"}        (rr: the round-robin counter)
  node.topic_ids     tid(8) -> name
  node.topic_parts   tid(8) + partition(4) -> [log_start, high_watermark, bytes, timer_at]
  node.records       tid(8) + partition(4) + offset(8) -> [ts_ms, key|None, value, headers]
  node.topic_timers  at(8) + b"R" + tid(8) + partition(4) -> b""   (retention by time:
                     one entry per partition, due when its oldest record expires)

Partitioner: a record with an explicit `partition` goes there; a record with a `key` goes
to `(murmur2(UTF-8 key) & 0x7fffffff) % partitions`, Kafka's default partitioner (same
seed, same positive mask), so a key's records stay in one partition and in order while the
partition count is unchanged; a record without either goes to the topic's round-robin
counter (stored in the topic record, so every replica picks the same partition).

Retention: by time (`retention_s`, measured against the command's `ts`: the state never
reads a clock) a partition's records older than retention_s are dropped by the applied
command (usually a tick) that finds its timer due; by size (`retention_bytes`, the stored
bytes of a partition's records) the oldest records are dropped by the append that passes
the limit. A partition always keeps its newest record under size retention. Dropping a
prefix moves log_start; offsets are never reused.
"""

from __future__ import annotations

import struct
from typing import Any

from node.errors import BadRequest, Conflict, NotFound, OffsetOutOfRange, TooLarge
from node.state import fields, keys, producers
from node.state.queue_config import valid_queue_name
from node.state.tables import META_NEXT_TOPIC_ID, TIMER_TOPICS, Ctx, unpack
from raft.messages import pack

MAX_PARTITIONS = 1024
MAX_RETENTION_S = 10 * 365 * 86_400
MAX_RETENTION_BYTES = 1 << 50
MAX_VALUE_BYTES = 1 << 20
MAX_KEY_BYTES = 1024
MAX_FETCH = 1000
DEFAULTS: dict[str, Any] = {"partitions": 1, "retention_s": 604_800, "retention_bytes": None}
RECORD_FIELDS = frozenset({"key", "value", "headers", "partition"})

_PART = struct.Struct(">QI")
_RECORD = struct.Struct(">QIQ")
TIMER_RETENTION_KIND = b"R"


# ---------------------------------------------------------------- partitioner


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as a signed 32-bit int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[i * 4 : i * 4 + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = data[n4 * 4 :]
    if rest == 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: str, partitions: int) -> int:
    """Kafka's default: toPositive(murmur2(key bytes)) % partitions."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


# ---------------------------------------------------------------- keys and records


def part_key(tid: int, partition: int) -> bytes:
    return _PART.pack(tid, partition)


def record_key(tid: int, partition: int, offset: int) -> bytes:
    return _RECORD.pack(tid, partition, offset)


def retention_timer_key(at_ms: int, tid: int, partition: int) -> bytes:
    return keys.u64(at_ms) + TIMER_RETENTION_KIND + _PART.pack(tid, partition)


def check_topic_name(name: Any, field: str = "name") -> str:
    if not valid_queue_name(name):
        raise BadRequest(
            f"invalid topic name {str(name)[:100]!r}: use 1-80 characters of A-Z a-z 0-9 _ . -",
            field=field,
        )
    return name


def get_topic(ctx: Ctx, name: str) -> dict[str, Any] | None:
    if not valid_queue_name(name):
        return None
    return ctx.get(ctx.tables.topics, name.encode())


def require_topic(ctx: Ctx, name: Any, field: str = "topic") -> dict[str, Any]:
    check_topic_name(name, field)
    topic = get_topic(ctx, name)
    if topic is None:
        raise NotFound(f"topic {name!r} does not exist", topic=name)
    return topic


def all_topics(ctx: Ctx) -> list[dict[str, Any]]:
    return [unpack(v) for _k, v in ctx.txn.cursor(db=ctx.tables.topics)]


def public_config(topic: dict[str, Any]) -> dict[str, Any]:
    return {"name": topic["name"], **{k: topic[k] for k in DEFAULTS}}


def get_part(ctx: Ctx, tid: int, partition: int) -> list[int]:
    """[log_start, high_watermark, bytes, timer_at] of one partition."""
    state = ctx.get(ctx.tables.topic_parts, part_key(tid, partition))
    return [0, 0, 0, 0] if state is None else state


def _put_part(ctx: Ctx, tid: int, partition: int, state: list[int]) -> None:
    ctx.put(ctx.tables.topic_parts, part_key(tid, partition), state)


# ---------------------------------------------------------------- config


def _merge_config(existing: dict[str, Any] | None, update: Any) -> dict[str, Any]:
    if update is None:
        update = {}
    if not isinstance(update, dict):
        raise BadRequest("config must be a map", field="config")
    unknown = sorted(str(k) for k in update if k not in DEFAULTS)
    if unknown:
        raise BadRequest(f"unknown topic setting(s) {unknown}", field=unknown[0])
    base = dict(DEFAULTS) if existing is None else {k: existing[k] for k in DEFAULTS}
    if "partitions" in update:
        base["partitions"] = fields.int_field(update["partitions"], "partitions", 1, MAX_PARTITIONS)
    for name, hi in (("retention_s", MAX_RETENTION_S), ("retention_bytes", MAX_RETENTION_BYTES)):
        if name in update:
            value = update[name]
            base[name] = None if value is None else fields.int_field(value, name, 1, hi)
    if existing is not None and base["partitions"] < existing["partitions"]:
        raise Conflict(
            f"topic {existing['name']!r} has {existing['partitions']} partitions; "
            "partitions may grow, never shrink",
            partitions=existing["partitions"],
        )
    return base


def topic_put(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    """Create a topic, or change its retention / grow its partitions. Retention changes
    apply at once: timers are re-armed and size retention trims every partition."""
    name = check_topic_name(cmd.get("name"))
    existing = get_topic(ctx, name)
    config = _merge_config(existing, cmd.get("config"))
    if existing is None:
        tid = ctx.next_counter(META_NEXT_TOPIC_ID)
        ctx.txn.put(keys.u64(tid), name.encode(), db=ctx.tables.topic_ids)
        record = {"id": tid, "name": name, **config, "rr": 0, "created_ms": ctx.now_ms}
        old_partitions = 0
    else:
        record = {**existing, **config}
        old_partitions = existing["partitions"]
    ctx.put(ctx.tables.topics, name.encode(), record)
    for p in range(record["partitions"]):
        state = get_part(ctx, record["id"], p)
        if p >= old_partitions:
            _put_part(ctx, record["id"], p, state)
        else:
            _disarm(ctx, record["id"], p, state)
            _trim_bytes(ctx, record, p, state)
            _arm(ctx, record, p, state)
            _put_part(ctx, record["id"], p, state)
    return {"created": existing is None, "topic": public_config(record), "grew": old_partitions}


def topic_delete(ctx: Ctx, topic: dict[str, Any]) -> int:
    """Drop a topic's records, partitions, timers and producer sessions; returns the
    number of records dropped."""
    tid = topic["id"]
    dropped = 0
    for p in range(topic["partitions"]):
        state = get_part(ctx, tid, p)
        _disarm(ctx, tid, p, state)
        dropped += state[1] - state[0]
        ctx.txn.delete(part_key(tid, p), db=ctx.tables.topic_parts)
    prefix = keys.u64(tid)
    cur = ctx.txn.cursor(db=ctx.tables.records)
    cur.set_range(prefix)
    while True:
        key = cur.key()
        if not key or not key.startswith(prefix):
            break
        cur.delete()
    producers.drop_prefix(ctx, b"T" + prefix)
    ctx.txn.delete(prefix, db=ctx.tables.topic_ids)
    ctx.txn.delete(topic["name"].encode(), db=ctx.tables.topics)
    return dropped


# ---------------------------------------------------------------- append


def check_record(rec: Any, i: int, partitions: int) -> dict[str, Any]:
    where = f"records[{i}]"
    if not isinstance(rec, dict):
        raise BadRequest(f"{where} must be a map", field=where)
    if not RECORD_FIELDS.issuperset(rec):
        key = next(k for k in rec if k not in RECORD_FIELDS)
        raise BadRequest(f"{where} has unknown field {str(key)[:40]!r}", field=f"{where}.{key}")
    value = rec.get("value")
    if type(value) is not bytes:
        raise BadRequest(f"{where}.value must be bytes", field=f"{where}.value")
    if len(value) > MAX_VALUE_BYTES:
        raise TooLarge(f"{where}.value is {len(value)} bytes; at most {MAX_VALUE_BYTES}", index=i)
    key = rec.get("key")
    if key is not None and (
        not isinstance(key, str)
        or not key
        or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES
    ):
        raise BadRequest(
            f"{where}.key must be a string of 1..{MAX_KEY_BYTES} bytes", field=f"{where}.key"
        )
    partition = rec.get("partition")
    if partition is not None:
        partition = fields.int_field(partition, f"{where}.partition", 0, partitions - 1)
    headers = fields.attributes(rec.get("headers"), f"{where}.headers")
    return {"key": key, "value": value, "headers": headers, "partition": partition}


def check_records(value: Any, partitions: int) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("records must be a non-empty list", field="records")
    if len(value) > fields.MAX_BATCH:
        raise TooLarge(f"batch of {len(value)} records exceeds {fields.MAX_BATCH}")
    return [check_record(r, i, partitions) for i, r in enumerate(value)]


def append(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    """topic_append: the records at the end of their partitions, once per producer seq."""
    topic = require_topic(ctx, cmd.get("topic"))
    batch = check_records(cmd.get("records"), topic["partitions"])
    if cmd.get("producer") is not None:
        return producers.run_with_session(
            ctx,
            lambda pid: producers.topic_session_key(topic["id"], pid),
            cmd["producer"],
            lambda: {"records": append_records(ctx, topic, batch)},
            "records",
        )
    return {"records": append_records(ctx, topic, batch)}


def append_records(
    ctx: Ctx, topic: dict[str, Any], batch: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    tid, n = topic["id"], topic["partitions"]
    rr = topic["rr"]
    states: dict[int, list[int]] = {}
    results = []
    for rec in batch:
        p = rec["partition"]
        if p is None:
            if rec["key"] is not None:
                p = partition_for_key(rec["key"], n)
            else:
                p, rr = rr % n, rr + 1
        state = states.get(p)
        if state is None:
            state = states[p] = get_part(ctx, tid, p)
        offset = state[1]
        raw = pack([ctx.now_ms, rec["key"], rec["value"], rec["headers"]])
        ctx.txn.put(record_key(tid, p, offset), raw, db=ctx.tables.records)
        state[1] = offset + 1
        state[2] += len(raw)
        results.append({"partition": p, "offset": offset, "duplicate": False})
    if rr != topic["rr"]:
        topic["rr"] = rr
        ctx.put(ctx.tables.topics, topic["name"].encode(), topic)
    for p in sorted(states):
        state = states[p]
        _trim_bytes(ctx, topic, p, state)
        _arm(ctx, topic, p, state)
        _put_part(ctx, tid, p, state)
    return results


# ---------------------------------------------------------------- retention


def _drop_first(ctx: Ctx, tid: int, p: int, state: list[int]) -> None:
    key = record_key(tid, p, state[0])
    raw = ctx.txn.get(key, db=ctx.tables.records)
    if raw is not None:
        state[2] -= len(raw)
        ctx.txn.delete(key, db=ctx.tables.records)
    state[0] += 1


def _trim_bytes(ctx: Ctx, topic: dict[str, Any], p: int, state: list[int]) -> None:
    limit = topic["retention_bytes"]
    if limit is None:
        return
    while state[2] > limit and state[1] - state[0] > 1:
        _drop_first(ctx, topic["id"], p, state)


def _first_ts(ctx: Ctx, tid: int, p: int, state: list[int]) -> int | None:
    if state[0] >= state[1]:
        return None
    raw = ctx.txn.get(record_key(tid, p, state[0]), db=ctx.tables.records)
    return None if raw is None else unpack(raw)[0]


def _arm(ctx: Ctx, topic: dict[str, Any], p: int, state: list[int]) -> None:
    """Set the partition's retention timer to when its oldest record expires (if unset)."""
    if state[3] or topic["retention_s"] is None:
        return
    ts = _first_ts(ctx, topic["id"], p, state)
    if ts is None:
        return
    at = ts + topic["retention_s"] * 1000
    ctx.txn.put(retention_timer_key(at, topic["id"], p), b"", db=ctx.tables.topic_timers)
    ctx.timer_added(TIMER_TOPICS, at)
    state[3] = at


def _disarm(ctx: Ctx, tid: int, p: int, state: list[int]) -> None:
    if state[3]:
        ctx.txn.delete(retention_timer_key(state[3], tid, p), db=ctx.tables.topic_timers)
        state[3] = 0


def expire_partition(ctx: Ctx, timer_key: bytes, budget: int) -> int:
    """A due retention timer: drop the partition's records older than retention_s (at
    most `budget`), then re-arm for the new oldest record. Returns records dropped."""
    tid, p = _PART.unpack_from(timer_key, 9)
    ctx.txn.delete(timer_key, db=ctx.tables.topic_timers)
    name = ctx.txn.get(keys.u64(tid), db=ctx.tables.topic_ids)
    topic = None if name is None else ctx.get(ctx.tables.topics, bytes(name))
    if topic is None:
        return 0
    state = get_part(ctx, tid, p)
    state[3] = 0
    dropped = 0
    retention_s = topic["retention_s"]
    while retention_s is not None and dropped < budget:
        ts = _first_ts(ctx, tid, p, state)
        if ts is None or ts + retention_s * 1000 > ctx.now_ms:
            break
        _drop_first(ctx, tid, p, state)
        dropped += 1
    _arm(ctx, topic, p, state)
    _put_part(ctx, tid, p, state)
    return dropped


# ---------------------------------------------------------------- reads


def partition_stats(ctx: Ctx, topic: dict[str, Any]) -> list[dict[str, int]]:
    out = []
    for p in range(topic["partitions"]):
        start, hw, size, _timer = get_part(ctx, topic["id"], p)
        out.append({"partition": p, "log_start": start, "high_watermark": hw, "bytes": size})
    return out


def info(ctx: Ctx, topic: dict[str, Any]) -> dict[str, Any]:
    return {
        **public_config(topic),
        "created_ms": topic["created_ms"],
        "partition_stats": partition_stats(ctx, topic),
    }


def fetch(
    ctx: Ctx, name: str, partition: int, offset: int, max_records: int, max_bytes: int
) -> dict[str, Any]:
    """Records of one partition from `offset` on (at most max_records, and max_bytes of
    values past the first record). Raises NotFound / OffsetOutOfRange."""
    topic = get_topic(ctx, name)
    if topic is None:
        raise NotFound(f"topic {name!r} does not exist", topic=name)
    if not 0 <= partition < topic["partitions"]:
        raise NotFound(
            f"topic {name!r} has partitions 0..{topic['partitions'] - 1}",
            partitions=topic["partitions"],
        )
    tid = topic["id"]
    start, hw, _size, _timer = get_part(ctx, tid, partition)
    if not start <= offset <= hw:
        raise OffsetOutOfRange(
            f"offset {offset} is outside {start}..{hw} of {name!r} partition {partition}",
            log_start=start,
            high_watermark=hw,
        )
    records: list[dict[str, Any]] = []
    taken = 0
    cur = ctx.txn.cursor(db=ctx.tables.records)
    prefix = part_key(tid, partition)
    if offset < hw and cur.set_range(record_key(tid, partition, offset)):
        for key, raw in cur:
            if not key.startswith(prefix) or len(records) >= max_records:
                break
            ts, rkey, value, headers = unpack(raw)
            if records and taken + len(value) > max_bytes:
                break
            taken += len(value)
            records.append(
                {
                    "offset": keys.read_u64(key, 12),
                    "timestamp_ms": ts,
                    "key": rkey,
                    "value": value,
                    "headers": headers,
                }
            )
    next_offset = records[-1]["offset"] + 1 if records else offset
    return {
        "records": records,
        "next_offset": next_offset,
        "high_watermark": hw,
        "log_start": start,
    }


def txn_publish(ctx: Ctx, items: list[Any]) -> list[dict[str, Any]]:
    """The publish of a transaction: each item {topic, records} appended (no producer
    session: the transaction's txn_id makes a retry apply nothing)."""
    out = []
    for i, item in enumerate(items):
        where = f"publish[{i}]"
        if not isinstance(item, dict) or set(item) != {"topic", "records"}:
            raise BadRequest(f"{where} must be a map {{topic, records}}", field=where)
        topic = require_topic(ctx, item["topic"], field=f"{where}.topic")
        batch = check_records(item["records"], topic["partitions"])
        out.append({"topic": topic["name"], "records": append_records(ctx, topic, batch)})
    return out
