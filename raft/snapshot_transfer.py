"""InstallSnapshot as a stream of chunks, without I/O: one sender per (leader, peer) and
one receiver per node, used by the asyncio driver and by the seeded simulation alike.

Why chunks and not one message: a snapshot of a queue holding a million messages is
hundreds of MiB; one message would block the peer link for seconds, exceed any frame
limit, and start over from nothing after every dropped connection. So:

- the sender sends chunks of `chunk_bytes` (each with its offset, the snapshot's total
  size and SHA-256, and its own CRC32), at most `window_chunks` ahead of what the
  receiver acknowledged (flow control: a slow follower never has more than that queued);
- the receiver takes chunks strictly in order, writes them where the caller says (a file
  for the driver), and answers each with how far it has the snapshot (`SnapChunk.offset`
  of its SNAP_RESP): an ack, or "resend from here" after a gap, a bad CRC or a chunk of
  a snapshot it is not receiving;
- the sender goes back to the receiver's offset on "resend" and after `retry_s` without
  progress (a lost chunk or response); after `give_up_s` without progress it fails, and
  the driver reports that to the core, which asks for a snapshot again later. A receiver
  that keeps its partial snapshot lets a retried transfer of the same snapshot resume
  where it stopped.
- when the last byte is in and the digest matches, the receiver hands the core one whole
  SNAP message (no chunk); the core decides whether to install it.

SNAP_RESP codes travel in `Message.reject_hint`: RESP_ACK, RESP_RESEND, RESP_REFUSE.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

from raft.messages import Message, MessageType, SnapChunk, SnapshotMeta

RESP_ACK = 0
RESP_RESEND = 1
RESP_REFUSE = 2

DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_WINDOW_CHUNKS = 4


@dataclass(frozen=True, slots=True)
class SnapshotSource:
    """One snapshot ready to send: what it stands for and how to read its bytes."""

    meta: SnapshotMeta
    snap_id: bytes
    total: int
    digest: bytes
    read: Callable[[int, int], bytes]  # (offset, length) -> bytes


class SnapshotSender:
    """Streams one snapshot to one peer; `done` or `failed` once it ends."""

    def __init__(
        self,
        *,
        node_id: int,
        to: int,
        term: int,
        commit: int,
        source: SnapshotSource,
        now_s: float,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        window_chunks: int = DEFAULT_WINDOW_CHUNKS,
        retry_s: float = 1.0,
        give_up_s: float = 10.0,
    ) -> None:
        if chunk_bytes < 1 or window_chunks < 1:
            raise ValueError("chunk_bytes and window_chunks must be >= 1")
        self.node_id = node_id
        self.to = to
        self.term = term
        self.commit = commit
        self.source = source
        self.chunk_bytes = chunk_bytes
        self.window_bytes = chunk_bytes * window_chunks
        self.retry_s = retry_s
        self.give_up_s = give_up_s
        self.acked = 0  # the receiver holds bytes [0, acked)
        self.sent = 0  # the next byte to send
        self.done = False
        self.failed = False
        self.chunks_sent = 0
        self._last_progress_s = now_s
        self._last_send_s = now_s

    @property
    def ended(self) -> bool:
        return self.done or self.failed

    def start(self, now_s: float) -> list[Message]:
        return self._fill(now_s)

    def on_resp(self, m: Message, now_s: float) -> list[Message]:
        """A SNAP_RESP from the peer: move the window on, or go back where it says."""
        c = m.chunk
        if self.ended or c is None or c.snap_id != self.source.snap_id or m.frm != self.to:
            return []
        if m.reject_hint == RESP_REFUSE:
            self.failed = True
            return []
        offset = min(c.offset, self.source.total)
        if offset > self.acked:
            self._last_progress_s = now_s
        if m.reject_hint == RESP_RESEND or offset < self.acked:
            self.sent = offset  # a gap, a bad chunk, or a receiver that started over
        self.acked = offset
        self.sent = max(self.sent, self.acked)
        if self.acked >= self.source.total:
            self.done = True
            return []
        return self._fill(now_s)

    def tick(self, now_s: float) -> list[Message]:
        """Time passes: resend from the acked offset when stuck, give up when stuck long."""
        if self.ended:
            return []
        if now_s - self._last_progress_s >= self.give_up_s:
            self.failed = True
            return []
        if now_s - self._last_send_s >= self.retry_s:
            self.sent = self.acked
            return self._fill(now_s, force=True)
        return []

    def _fill(self, now_s: float, force: bool = False) -> list[Message]:
        out: list[Message] = []
        src = self.source
        while self.sent < src.total and (
            self.sent - self.acked < self.window_bytes or (force and not out)
        ):
            data = src.read(self.sent, min(self.chunk_bytes, src.total - self.sent))
            if not data:
                break
            out.append(
                Message(
                    MessageType.SNAP,
                    to=self.to,
                    frm=self.node_id,
                    term=self.term,
                    commit=self.commit,
                    context=data,
                    snapshot=src.meta,
                    chunk=SnapChunk(
                        src.snap_id, self.sent, src.total, zlib.crc32(data), src.digest
                    ),
                )
            )
            self.sent += len(data)
        if out:
            self._last_send_s = now_s
            self.chunks_sent += len(out)
        return out


class SnapshotReceiver:
    """Takes the chunks of one snapshot at a time, in order, through caller callbacks.

    `begin(chunk)` starts a new incoming snapshot (truncating any partial one), `write(
    offset, data)` stores bytes, `finish(chunk)` is called once all bytes are in and
    returns the SHA-256 of what was stored. A partial snapshot is kept: a new transfer
    of the same `snap_id` from the same leader resumes at the received offset.
    """

    def __init__(
        self,
        node_id: int,
        *,
        begin: Callable[[SnapChunk], None],
        write: Callable[[int, bytes], None],
        finish: Callable[[SnapChunk], bytes],
        max_total_bytes: int = 1 << 40,
    ) -> None:
        self.node_id = node_id
        self._begin = begin
        self._write = write
        self._finish = finish
        self.max_total_bytes = max_total_bytes
        self.snap_id = b""
        self.leader = 0
        self.received = 0
        self.total = 0
        self.completed = 0  # snapshots received whole

    def on_chunk(self, m: Message, current_term: int) -> tuple[Message | None, Message | None]:
        """(the SNAP_RESP to send or None, the whole SNAP for the core or None)."""
        c = m.chunk
        if c is None or m.snapshot is None or m.term < current_term:
            return None, None  # not a chunk, or from a leader of an older term: ignore
        if c.total > self.max_total_bytes:
            return self._resp(m, c, 0, RESP_REFUSE), None
        if c.snap_id != self.snap_id or m.frm != self.leader:
            if c.offset != 0:
                return self._resp(m, c, 0, RESP_RESEND), None  # start it from the beginning
            self.snap_id, self.leader, self.received, self.total = c.snap_id, m.frm, 0, c.total
            self._begin(c)
        if c.offset != self.received:
            return self._resp(m, c, self.received, RESP_RESEND), None
        data = m.context
        if zlib.crc32(data) != c.crc or c.offset + len(data) > c.total:
            return self._resp(m, c, self.received, RESP_RESEND), None
        self._write(c.offset, data)
        self.received += len(data)
        if self.received < c.total:
            return self._resp(m, c, self.received, RESP_ACK), None
        digest = self._finish(c)
        self.snap_id, self.leader, self.received = b"", 0, 0
        if digest != c.digest:
            return self._resp(m, c, 0, RESP_RESEND), None  # corrupt: start over
        self.completed += 1
        whole = Message(
            MessageType.SNAP,
            to=self.node_id,
            frm=m.frm,
            term=m.term,
            commit=m.commit,
            snapshot=m.snapshot,
        )
        return self._resp(m, c, c.total, RESP_ACK), whole

    def _resp(self, m: Message, c: SnapChunk, offset: int, code: int) -> Message:
        return Message(
            MessageType.SNAP_RESP,
            to=m.frm,
            frm=self.node_id,
            term=m.term,
            reject_hint=code,
            chunk=SnapChunk(c.snap_id, offset, c.total),
        )
