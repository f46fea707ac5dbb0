"""Consumer groups of a topic: members, generations, range assignment, committed offsets.

Why in the replicated state: every member must see the same membership, the same
generation and the same assignment, whichever node it asks, and an offset commit must be
fenced against the generation in force when it applies (a member that missed a rebalance
cannot move a partition's offset it no longer owns).

Rules:
- A group belongs to one topic (its first join names it; a join naming another is 409).
- The generation goes up by one on every membership change: a join of a new member, a
  leave, a session that expired, and the topic's partitions growing.
- Assignment is range assignment (Kafka's RangeAssignor): members sorted by member id,
  each gets a contiguous run of floor(P/M) partitions and the first P%M one more. It is
  recomputed from the members alone, so every replica computes the same one.
- A member's session ends `session_timeout_s` after its last join, heartbeat or commit,
  measured in command time (the leader's stamps): a due timer in node.topic_timers
  removes it when a command (a tick) applies after that.
- Committed offsets are the next offset to read. A new group starts each partition at
  log_start ("earliest") or at the high watermark when the group was made ("latest").

Layout:
  node.groups        name -> {"topic","topic_id","generation","start","members":
                              [[member_id, timeout_ms, deadline_ms], ...] (sorted),
                              "offsets": [committed|None per partition], "created_ms"}
  node.topic_timers  at(8) + b"M" + group + b"\\0" + member_id -> b""
"""

from __future__ import annotations

from typing import Any

from node.errors import BadRequest, Conflict, NotFound
from node.state import fields, keys, topics
from node.state.queue_config import valid_queue_name
from node.state.tables import META_NEXT_MEMBER, TIMER_TOPICS, Ctx, unpack

MIN_SESSION_MS = 100
MAX_SESSION_MS = 3_600_000
DEFAULT_SESSION_MS = 30_000
MAX_MEMBERS = 1000
STARTS = ("earliest", "latest")
TIMER_MEMBER_KIND = b"M"


def check_group_name(name: Any, field: str = "group") -> str:
    if not valid_queue_name(name):
        raise BadRequest(
            f"invalid group name {str(name)[:100]!r}: use 1-80 characters of A-Z a-z 0-9 _ . -",
            field=field,
        )
    return name


def get_group(ctx: Ctx, name: str) -> dict[str, Any] | None:
    if not valid_queue_name(name):
        return None
    return ctx.get(ctx.tables.groups, name.encode())


def _require_group(ctx: Ctx, name: Any) -> dict[str, Any]:
    check_group_name(name)
    group = get_group(ctx, name)
    if group is None:
        raise NotFound(f"group {name!r} does not exist", group=name)
    return group


def _member_timer(at: int, group: str, member_id: str) -> bytes:
    return keys.u64(at) + TIMER_MEMBER_KIND + group.encode() + b"\0" + member_id.encode()


def _find(group: dict[str, Any], member_id: str) -> list[Any] | None:
    for member in group["members"]:
        if member[0] == member_id:
            return member
    return None


def assignment(member_ids: list[str], partitions: int) -> dict[str, list[int]]:
    """Range assignment over the sorted member ids (see the module doc)."""
    ordered = sorted(member_ids)
    out: dict[str, list[int]] = {}
    if not ordered:
        return out
    per, extra = divmod(partitions, len(ordered))
    start = 0
    for i, member_id in enumerate(ordered):
        count = per + (1 if i < extra else 0)
        out[member_id] = list(range(start, start + count))
        start += count
    return out


def _positions(
    ctx: Ctx, group: dict[str, Any], topic: dict[str, Any], parts: list[int]
) -> list[dict[str, int]]:
    """Where the member reads each of its partitions from: the committed offset, or
    log_start when none is committed or retention dropped past it."""
    out = []
    for p in parts:
        start = topics.get_part(ctx, topic["id"], p)[0]
        committed = group["offsets"][p] if p < len(group["offsets"]) else None
        out.append(
            {"partition": p, "offset": start if committed is None else max(committed, start)}
        )
    return out


def _view(ctx: Ctx, name: str, group: dict[str, Any], member_id: str) -> dict[str, Any]:
    topic = topics.get_topic(ctx, group["topic"])
    assert topic is not None  # a topic's groups are dropped with it
    ids = [m[0] for m in group["members"]]
    parts = assignment(ids, topic["partitions"]).get(member_id, [])
    return {
        "group": name,
        "topic": group["topic"],
        "member_id": member_id,
        "generation": group["generation"],
        "partitions": parts,
        "positions": _positions(ctx, group, topic, parts),
    }


def _touch(ctx: Ctx, name: str, member: list[Any]) -> None:
    """(Re)start a member's session: its timer moves to now + its timeout."""
    if member[2]:
        ctx.txn.delete(_member_timer(member[2], name, member[0]), db=ctx.tables.topic_timers)
    at = ctx.now_ms + member[1]
    ctx.txn.put(_member_timer(at, name, member[0]), b"", db=ctx.tables.topic_timers)
    ctx.timer_added(TIMER_TOPICS, at)
    member[2] = at


def _store(ctx: Ctx, name: str, group: dict[str, Any]) -> None:
    group["members"].sort(key=lambda m: m[0])
    ctx.put(ctx.tables.groups, name.encode(), group)


def group_join(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    name = check_group_name(cmd.get("group"))
    topic = topics.require_topic(ctx, cmd.get("topic"))
    member_id = fields.optional_id(cmd.get("member_id"), "member_id")
    timeout = cmd.get("session_timeout_ms")
    timeout_ms = (
        DEFAULT_SESSION_MS
        if timeout is None
        else fields.int_field(timeout, "session_timeout_ms", MIN_SESSION_MS, MAX_SESSION_MS)
    )
    start = cmd.get("start", "earliest")
    if start not in STARTS:
        raise BadRequest("start must be 'earliest' or 'latest'", field="start")
    group = get_group(ctx, name)
    if group is None:
        n = topic["partitions"]
        offsets: list[int | None] = [None] * n
        if start == "latest":
            offsets = [topics.get_part(ctx, topic["id"], p)[1] for p in range(n)]
        group = {
            "topic": topic["name"],
            "topic_id": topic["id"],
            "generation": 0,
            "start": start,
            "members": [],
            "offsets": offsets,
            "created_ms": ctx.now_ms,
        }
    elif group["topic"] != topic["name"]:
        raise Conflict(
            f"group {name!r} consumes topic {group['topic']!r}, not {topic['name']!r}",
            topic=group["topic"],
        )
    member = None if member_id is None else _find(group, member_id)
    if member is None:
        if len(group["members"]) >= MAX_MEMBERS:
            raise Conflict(f"group {name!r} has {MAX_MEMBERS} members already")
        if member_id is None:
            member_id = f"member-{ctx.next_counter(META_NEXT_MEMBER)}"
        member = [member_id, timeout_ms, 0]
        group["members"].append(member)
        group["generation"] += 1
    else:
        member[1] = timeout_ms
    assert member_id is not None
    _touch(ctx, name, member)
    _store(ctx, name, group)
    return _view(ctx, name, group, member_id)


def _require_member(ctx: Ctx, cmd: dict[str, Any]) -> tuple[str, dict[str, Any], list[Any]]:
    group = _require_group(ctx, cmd.get("group"))
    name = cmd["group"]
    member_id = fields.optional_id(cmd.get("member_id"), "member_id")
    if member_id is None:
        raise BadRequest("member_id is required", field="member_id")
    member = _find(group, member_id)
    if member is None:
        raise Conflict(
            f"member {member_id!r} is not in group {name!r} (its session ended or it left): "
            "join again",
            reason="unknown_member",
            generation=group["generation"],
        )
    return name, group, member


def group_heartbeat(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    """Keep a member's session; answer the generation and its partitions in force."""
    name, group, member = _require_member(ctx, cmd)
    _touch(ctx, name, member)
    _store(ctx, name, group)
    return _view(ctx, name, group, member[0])


def _remove(ctx: Ctx, name: str, group: dict[str, Any], member: list[Any]) -> None:
    if member[2]:
        ctx.txn.delete(_member_timer(member[2], name, member[0]), db=ctx.tables.topic_timers)
    group["members"].remove(member)
    group["generation"] += 1
    _store(ctx, name, group)


def group_leave(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    name, group, member = _require_member(ctx, cmd)
    _remove(ctx, name, group, member)
    return {"group": name, "left": member[0], "generation": group["generation"]}


def group_commit(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    """Offsets of the member's own partitions, only in the generation in force."""
    name, group, member = _require_member(ctx, cmd)
    generation = fields.int_field(cmd.get("generation"), "generation", 0, 1 << 62)
    if generation != group["generation"]:
        raise Conflict(
            f"generation {generation} of group {name!r} is over; it is "
            f"{group['generation']} now: heartbeat or join for the current assignment",
            reason="stale_generation",
            generation=group["generation"],
        )
    topic = topics.get_topic(ctx, group["topic"])
    assert topic is not None
    owned = assignment([m[0] for m in group["members"]], topic["partitions"])[member[0]]
    items = cmd.get("offsets")
    if not isinstance(items, list) or not items or len(items) > MAX_MEMBERS:
        raise BadRequest("offsets must be a non-empty list", field="offsets")
    while len(group["offsets"]) < topic["partitions"]:
        group["offsets"].append(None)
    for i, item in enumerate(items):
        where = f"offsets[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be a map {{topic, partition, offset}}", field=where)
        if item.get("topic", group["topic"]) != group["topic"]:
            raise BadRequest(f"{where}.topic must be {group['topic']!r}", field=f"{where}.topic")
        p = fields.int_field(item.get("partition"), f"{where}.partition", 0, MAX_MEMBERS * 64)
        if p not in owned:
            raise Conflict(
                f"partition {p} is not assigned to member {member[0]!r} in generation {generation}",
                reason="not_assigned",
                generation=group["generation"],
            )
        hw = topics.get_part(ctx, topic["id"], p)[1]
        group["offsets"][p] = fields.int_field(item.get("offset"), f"{where}.offset", 0, hw)
    _touch(ctx, name, member)
    _store(ctx, name, group)
    return {"group": name, "committed": len(items), "generation": group["generation"]}


# ---------------------------------------------------------------- reactions and timers


def topic_grew(ctx: Ctx, topic_name: str, partitions: int) -> None:
    """The topic's partition count went up: every group of it rebalances."""
    for key, raw in list(ctx.txn.cursor(db=ctx.tables.groups)):
        group = unpack(raw)
        if group["topic"] != topic_name:
            continue
        while len(group["offsets"]) < partitions:
            group["offsets"].append(None)
        group["generation"] += 1
        _store(ctx, bytes(key).decode(), group)


def drop_groups_of(ctx: Ctx, topic_name: str) -> int:
    """Drop every group of a deleted topic (and its members' timers)."""
    dropped = 0
    for key, raw in list(ctx.txn.cursor(db=ctx.tables.groups)):
        group = unpack(raw)
        if group["topic"] != topic_name:
            continue
        name = bytes(key).decode()
        for member in group["members"]:
            if member[2]:
                ctx.txn.delete(
                    _member_timer(member[2], name, member[0]), db=ctx.tables.topic_timers
                )
        ctx.txn.delete(bytes(key), db=ctx.tables.groups)
        dropped += 1
    return dropped


def expire_member(ctx: Ctx, timer_key: bytes) -> None:
    """A member's session timer is due: the member leaves (the generation goes up)."""
    ctx.txn.delete(timer_key, db=ctx.tables.topic_timers)
    at = keys.read_u64(timer_key)
    name_raw, _, member_raw = timer_key[9:].partition(b"\0")
    name = name_raw.decode()
    group = get_group(ctx, name)
    if group is None:
        return
    member = _find(group, member_raw.decode())
    if member is not None and member[2] == at:
        member[2] = 0  # its timer is gone already
        _remove(ctx, name, group, member)


def info(ctx: Ctx, name: str, group: dict[str, Any]) -> dict[str, Any]:
    """Members, generation, committed offsets and lag per partition (read-only)."""
    topic = topics.get_topic(ctx, group["topic"])
    assert topic is not None
    owners = assignment([m[0] for m in group["members"]], topic["partitions"])
    offsets = []
    for p in range(topic["partitions"]):
        start, hw, _size, _timer = topics.get_part(ctx, topic["id"], p)
        committed = group["offsets"][p] if p < len(group["offsets"]) else None
        position = start if committed is None else max(committed, start)
        offsets.append(
            {
                "partition": p,
                "committed": committed,
                "log_start": start,
                "high_watermark": hw,
                "lag": hw - position,
            }
        )
    return {
        "group": name,
        "topic": group["topic"],
        "generation": group["generation"],
        "start": group["start"],
        "assignment": "range",
        "members": [
            {
                "member_id": m[0],
                "partitions": owners.get(m[0], []),
                "session_timeout_s": m[1] / 1000,
                "expires_ms": m[2],
            }
            for m in group["members"]
        ],
        "offsets": offsets,
    }


def all_groups(ctx: Ctx) -> list[tuple[str, dict[str, Any]]]:
    return [(bytes(k).decode(), unpack(v)) for k, v in ctx.txn.cursor(db=ctx.tables.groups)]


def txn_commit_offsets(ctx: Ctx, items: list[Any]) -> int:
    """The commit_offsets of a transaction: each item {group, generation, topic?,
    partition, offset, member_id?} fenced by the group's generation (and, with a member_id,
    by that member's assignment). A refusal raises, which aborts the whole transaction."""
    checked = []
    for i, item in enumerate(items):
        where = f"commit_offsets[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be a map", field=where)
        name = check_group_name(item.get("group"), f"{where}.group")
        generation = fields.int_field(item.get("generation"), f"{where}.generation", 0, 1 << 62)
        partition = fields.int_field(item.get("partition"), f"{where}.partition", 0, 1 << 20)
        offset = fields.int_field(item.get("offset"), f"{where}.offset", 0, 1 << 62)
        member_id = fields.optional_id(item.get("member_id"), f"{where}.member_id")
        checked.append((where, name, generation, partition, offset, member_id, item.get("topic")))
    touched: dict[str, dict[str, Any]] = {}
    for where, name, generation, partition, offset, member_id, topic_name in checked:
        group = touched.get(name) or _require_group(ctx, name)
        touched[name] = group
        if generation != group["generation"]:
            raise Conflict(
                f"{where}: generation {generation} of group {name!r} is over; it is "
                f"{group['generation']} now",
                reason="stale_generation",
                generation=group["generation"],
            )
        if topic_name is not None and topic_name != group["topic"]:
            raise BadRequest(f"{where}.topic must be {group['topic']!r}", field=f"{where}.topic")
        topic = topics.get_topic(ctx, group["topic"])
        assert topic is not None
        if partition >= topic["partitions"]:
            raise BadRequest(f"{where}.partition is past the topic's", field=f"{where}.partition")
        if member_id is not None:
            member = _find(group, member_id)
            owners = assignment([m[0] for m in group["members"]], topic["partitions"])
            if member is None or partition not in owners.get(member_id, []):
                raise Conflict(
                    f"{where}: partition {partition} is not assigned to {member_id!r}",
                    reason="not_assigned",
                    generation=group["generation"],
                )
        hw = topics.get_part(ctx, topic["id"], partition)[1]
        if offset > hw:
            raise BadRequest(f"{where}.offset is past the high watermark {hw}", field=where)
        while len(group["offsets"]) < topic["partitions"]:
            group["offsets"].append(None)
        group["offsets"][partition] = offset
    for name, group in touched.items():
        _store(ctx, name, group)
    return len(checked)
