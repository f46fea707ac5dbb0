"""Commands that touch topics and their consumer groups together, and their shared timers.

Why a module of its own: groups read topics (partitions, offsets), and a topic's changes
reach its groups (growing partitions rebalances them, deleting a topic drops them); the
ops that do both, and the timer index both use (node.topic_timers: retention of a
partition, session of a member), live here so neither module imports the other both ways.
"""

from __future__ import annotations

from typing import Any

from node.state import groups, topics
from node.state.tables import TIMER_TOPICS, Ctx

#: Records dropped by retention per command at most (the rest by the next command).
RETENTION_BUDGET = 10_000


def topic_put(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    result = topics.topic_put(ctx, cmd)
    grew_from = result.pop("grew")
    partitions = result["topic"]["partitions"]
    if not result["created"] and partitions > grew_from:
        groups.topic_grew(ctx, result["topic"]["name"], partitions)
    return result


def topic_delete(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    topic = topics.require_topic(ctx, cmd.get("name"), field="name")
    dropped = topics.topic_delete(ctx, topic)
    dropped_groups = groups.drop_groups_of(ctx, topic["name"])
    return {"deleted": topic["name"], "records": dropped, "groups": dropped_groups}


def expire_due(ctx: Ctx, limit: int) -> int:
    """Run the due entries of node.topic_timers (at most `limit` timers, and at most
    RETENTION_BUDGET records dropped); returns the number of timers run."""
    if ctx.nothing_due(TIMER_TOPICS):
        return 0
    ran = 0
    budget = RETENTION_BUDGET
    while ran < limit and budget > 0:
        key = ctx.first_due(ctx.txn.cursor(db=ctx.tables.topic_timers), TIMER_TOPICS)
        if key is None:
            break
        kind = key[8:9]
        if kind == topics.TIMER_RETENTION_KIND:
            budget -= topics.expire_partition(ctx, key, budget)
        elif kind == groups.TIMER_MEMBER_KIND:
            groups.expire_member(ctx, key)
        else:  # unknown kind (a later version's): drop it rather than loop on it
            ctx.txn.delete(key, db=ctx.tables.topic_timers)
        ran += 1
    return ran
