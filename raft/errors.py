"""Typed errors of the consensus layer.

Split the h11 way: *local* errors say the caller misused the API or asked the wrong
node; *remote* errors say a peer (or the disk) gave us something we must not trust.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base of every error raised by the raft package."""


class NotLeader(RaftError):
    """This node cannot serve the request; `leader_id`/`leader_addr` hint where to go (None if unknown)."""

    def __init__(self, leader_id: int | None, leader_addr: str | None = None) -> None:
        self.leader_id = leader_id
        self.leader_addr = leader_addr
        super().__init__(f"not the leader (leader_id={leader_id}, leader_addr={leader_addr})")


class ProposalDropped(RaftError):
    """The proposal will never commit: leadership was lost or its log slot was overwritten."""


class ConfChangeRefused(RaftError):
    """A membership change was not proposed (one is in progress, or it breaks a rule)."""


class LeadershipLost(RaftError):
    """This leader lost its quorum while the proposal was in flight: it may or may not commit.

    Why not wait for the log to decide: a leader cut off from its quorum learns the outcome
    only when the partition heals, and its callers would hang for all that time. They get
    this at once instead and retry on the new leader with the same idempotency key.
    """


class EntryTooLarge(RaftError):
    """A proposal is larger than `max_entry_bytes`; nothing was proposed (a local error).

    Why a hard cap: an entry must always fit in one AppendEntries frame, or the leader
    could append it and never replicate it, and every later write would wait behind it.
    """

    def __init__(self, size_bytes: int, limit_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes
        super().__init__(f"entry of {size_bytes} bytes exceeds max_entry_bytes {limit_bytes}")


class UndeliverableMessage(RaftError):
    """The transport cannot carry a message the core must deliver (a broken invariant).

    Raised instead of dropping the message: an AppendEntries that can never leave stalls
    replication for good, so the node stops loudly rather than silently wedging writes.
    """


class SafetyViolation(RaftError):
    """A Raft safety check failed: this node's log or the leader's cannot be trusted.

    Never handled: the driver stops and the process exits non-zero (etcd panics). A node
    that went on voting and serving after its own checks failed could spread the damage.
    Bad bytes from a peer are not this: the transport refuses those.
    """


class InvalidMessage(RaftError):
    """A peer sent bytes that do not decode to a valid message (remote error)."""


class StorageError(RaftError):
    """The durable store failed or holds something we cannot trust."""


class StorageCorruption(StorageError):
    """A stored record failed its checksum or shape check; `index` names the log index."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"log entry {index} is corrupt: {reason}")


class Compacted(StorageError):
    """The requested index was compacted away (a snapshot covers it)."""


class Unavailable(StorageError):
    """The requested index is beyond the last stored index."""
