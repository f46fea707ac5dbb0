"""Majority arithmetic for a single voter set (membership changes one server at a time).

Kept apart from the core so the one rule every safety argument leans on — "a quorum is
more than half of the voters" — lives in one small, separately tested place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum


class VoteResult(Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(voter_count: int) -> int:
    """Smallest number of voters that forms a quorum."""
    return voter_count // 2 + 1


def committed_index(voters: Iterable[int], match_index: Mapping[int, int]) -> int:
    """Largest index that a quorum of voters has durably replicated (0 if none)."""
    ids = list(voters)
    if not ids:
        return 0
    matches = sorted((match_index.get(v, 0) for v in ids), reverse=True)
    return matches[majority(len(ids)) - 1]


def vote_result(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a quorum granted, LOST once a quorum can no longer be reached."""
    ids = list(voters)
    need = majority(len(ids))
    granted = sum(1 for v in ids if votes.get(v) is True)
    rejected = sum(1 for v in ids if votes.get(v) is False)
    if granted >= need:
        return VoteResult.WON
    if len(ids) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Iterable[int], members: Iterable[int]) -> bool:
    """True if `members` contains a quorum of `voters` (used by check-quorum)."""
    ids = set(voters)
    return len(ids & set(members)) >= majority(len(ids))
