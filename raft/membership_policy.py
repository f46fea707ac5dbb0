"""The leader's membership housekeeping and the vote filter for stale incarnations, I/O
free, so the asyncio driver and the simulation run the very same decisions.

Why a node has an incarnation: a node restarted on an empty or wiped data dir has the id
of a member but none of its promises (its vote, its log). Counting it as that member
could elect a leader without committed entries. So the configuration names the data dir
(the incarnation) each member had when the leader recorded it; a node that shows up under
another incarnation (it says so in the peer handshake) neither votes nor is voted for
until the leader has replaced the old member by the new incarnation, as a learner, and
promoted it once it caught up (Raft thesis §4.2 changes, one at a time).

Limit: a member is recorded on the first contact after it joined or after the cluster
bootstrapped; a data dir wiped before that is not told apart from the one it replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from raft.messages import ConfState, Member, Message, MessageType

LEADER_TYPES = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})
VOTE_TYPES = frozenset(
    {MessageType.VOTE, MessageType.PRE_VOTE, MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP}
)


def stale_incarnation(conf: ConfState, peer: int, seen: str) -> bool:
    """Is `peer` a data dir other than the one the configuration names (so its votes and
    vote requests must be dropped)? False while either side is not known."""
    member = conf.member(peer)
    return bool(member is not None and member.incarnation and seen and seen != member.incarnation)


def drop_message(
    conf: ConfState, self_id: int, self_incarnation: str, m: Message, sender_incarnation: str
) -> str | None:
    """Why message `m` must be dropped, or None.

    - `stale_sender` (anything but a leader's appends, heartbeats and snapshots): the
      configuration names another data dir for the sender. A node that lost its disk
      forgot its term and its log too: its acknowledgements could let a deposed leader
      commit or serve a read, so nothing it answers counts until the leader has swapped
      it in under its new incarnation. What a leader sends is taken from anyone: a
      leader's authority is its term (won with votes that are checked), and its appends
      are how a lagging node learns that the configuration changed;
    - `stale_self` (vote requests): the configuration names another data dir for us: our
      log says we were replaced (or are about to be), and a vote from us would be a
      promise we may have forgotten;
    - `unbound_voter` (granted votes): from a voter whose incarnation the configuration
      has not recorded, once it has recorded a majority of the voters'. A data dir nobody
      recorded cannot be told from one that lost its disk; the leader records everyone it
      hears from in one change, so after a cluster's first moments this bites only a node
      no leader ever heard from. Before that (a new cluster) every vote counts.
    Peers that announce no incarnation (tests, tools) are not judged.
    """
    if m.type not in LEADER_TYPES and stale_incarnation(conf, m.frm, sender_incarnation):
        return "stale_sender"
    if m.type not in VOTE_TYPES:
        return None
    if m.type in (MessageType.VOTE, MessageType.PRE_VOTE) and stale_incarnation(
        conf, self_id, self_incarnation
    ):
        return "stale_self"
    if (
        m.type in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP)
        and not m.reject
        and sender_incarnation
        and len(recorded_voters(conf)) > len(conf.voters) // 2
    ):
        member = conf.member(m.frm)
        if member is None or member.incarnation != sender_incarnation:
            return "unbound_voter"
    return None


def unsafe_change(conf: ConfState, seen: Mapping[int, str]) -> str | None:
    """Why configuration `conf` must not be proposed, or None: it would leave fewer than
    a majority of its voters with the data dir it records for them (a voter whose node
    came back under another incarnation lost its disk; with too many of those in the
    voters the log's only copies may be gone). Unknown incarnations count as intact."""
    stale = sorted(v for v in conf.voters if stale_incarnation(conf, v, seen.get(v, "")))
    if stale and len(conf.voters) - len(stale) <= len(conf.voters) // 2:
        return (
            f"voters {list(conf.voters)} would include too many nodes that lost their data "
            f"dir ({stale}, not yet replaced): wait until they are back as learners"
        )
    return None


def recorded_voters(conf: ConfState) -> set[int]:
    """Voters whose data dir (incarnation) the configuration records."""
    return {v for v in conf.voters if (m := conf.member(v)) is not None and m.incarnation}


def with_member(conf: ConfState, member: Member) -> ConfState:
    """`conf` with `member`'s record replaced (or added)."""
    others = tuple(m for m in conf.members if m.id != member.id)
    return ConfState(conf.voters, conf.learners, (*others, member))


def next_change(
    core: Any, seen: Mapping[int, str], promote_lag: int
) -> tuple[str, int, ConfState] | None:
    """The one configuration change the leader `core` should propose now, if any:
    (why, member id, new configuration). `seen` maps node ids to the incarnation they
    announced (this node's own included).

    In order: record a member's incarnation the first time it is seen; replace a member
    that came back under a new incarnation by that incarnation as a learner (marked for
    promotion); promote learners marked so that have caught up. Nothing while a change
    is uncommitted or before the leader committed an entry of its term (the core refuses
    those anyway; asking first keeps the log free of refused attempts).
    """
    if core.log.last_conf_index() > core.log.committed or not core.committed_in_current_term():
        return None
    conf: ConfState = core.conf_state
    unbound = [
        pid
        for pid in conf.ids()
        if seen.get(pid) and not (conf.member(pid) or Member(pid)).incarnation
    ]
    if unbound:  # everyone heard from and not yet recorded, in one change
        new = conf
        for pid in unbound:
            new = with_member(new, replace(conf.member(pid) or Member(pid), incarnation=seen[pid]))
        return "bind_incarnation", unbound[0], new
    for pid in conf.ids():
        now = seen.get(pid, "")
        member = conf.member(pid) or Member(pid)
        if not now or member.incarnation == now:
            continue
        if pid == core.id:
            continue  # the leader itself is what it is: another data dir is another leader
        voters = tuple(v for v in conf.voters if v != pid)
        if not voters:
            continue
        learners = tuple(sorted({*conf.learners, pid}))
        new = with_member(
            ConfState(voters, learners, conf.members),
            replace(member, incarnation=now, promote=True),
        )
        return "replace_incarnation", pid, new
    for pid in core.learners_caught_up(promote_lag):
        member = conf.member(pid) or Member(pid)
        if member.promote:
            voters = tuple(sorted({*conf.voters, pid}))
            learners = tuple(v for v in conf.learners if v != pid)
            return "promote", pid, ConfState(voters, learners, conf.members)
    return None
