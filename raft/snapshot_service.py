"""The asyncio driver's side of snapshots: the files, the transfers, and what to install.

Why apart from raft/driver.py: the transfer logic itself is I/O-free
(raft/snapshot_transfer.py, shared with the simulation); what is left is file work —
writing the state machine's snapshot in a thread, serving chunks from it, receiving a
follower's copy next to its data, handing the finished file to the storage step to
install — and that is easier to read and test on its own.

Files live in one directory per node: `state-<index>-<rand>.snap` (written here for
followers, and for `POST /v1/admin/snapshot`), `incoming-<id>.part` (being received),
`received-<index>-<term>.snap` (received whole, waiting for the core's install).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from raft.errors import RaftError
from raft.messages import Message, MessageType, SnapChunk, SnapshotMeta
from raft.snapshot_transfer import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_WINDOW_CHUNKS,
    SnapshotReceiver,
    SnapshotSender,
    SnapshotSource,
)
from raft.state_machine import SnapshotFile, SnapshotStateMachine

log = structlog.get_logger("raft.snapshots")


@dataclass(slots=True)
class SnapshotStats:
    written: int = 0  # snapshot files written by this node
    sent: int = 0  # transfers completed to followers
    failed: int = 0  # transfers given up
    received: int = 0  # snapshots received whole
    installed: int = 0  # installed here
    last_write_s: float = 0.0
    last_install_s: float = 0.0


class _Written:
    """A snapshot file of ours and its open handle for chunk reads."""

    def __init__(self, file: SnapshotFile, term: int) -> None:
        self.file = file
        self.term = term
        self.fd = os.open(file.path, os.O_RDONLY)
        self.users = 0

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            os.remove(self.file.path)


class SnapshotService:
    """Leader side: stream our state to followers that need it. Follower side: receive a
    snapshot into a file and keep it until the storage step installs it."""

    def __init__(
        self,
        node_id: int,
        directory: str,
        state_machine: SnapshotStateMachine,
        term_at: Callable[[int], int],
        send: Callable[[Message], None],
        report: Callable[[int, bool], None],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        window_chunks: int = DEFAULT_WINDOW_CHUNKS,
        retry_s: float = 2.0,
        give_up_s: float = 30.0,
    ) -> None:
        self.node_id = node_id
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in self.dir.glob("*"):  # what a previous run left half done
            if stale.suffix in (".part", ".tmp", ".snap"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        self._sm = state_machine
        self._term_at = term_at
        self._send = send
        self._report = report
        self.chunk_bytes = chunk_bytes
        self.window_chunks = window_chunks
        self.retry_s = retry_s
        self.give_up_s = give_up_s
        self.stats = SnapshotStats()
        self._senders: dict[int, SnapshotSender] = {}
        self._writing: asyncio.Task[_Written] | None = None
        self._latest: _Written | None = None
        self._retired: list[_Written] = []
        self._receiver = SnapshotReceiver(
            node_id, begin=self._begin, write=self._write, finish=self._finish
        )
        self._incoming: Any = None
        self._incoming_path: Path | None = None
        self._incoming_digest: Any = None
        # Received files by (index, term); the storage step (maybe on its own thread)
        # looks one up to install it and removes it after: guarded by a lock.
        self._received: dict[tuple[int, int], Path] = {}
        self._received_lock = threading.Lock()
        self._wanted: dict[int, tuple[SnapshotMeta, int, int]] = {}  # peer -> (meta, term, commit)

    # ------------------------------------------------------------ leader side

    def request(self, m: Message, term: int) -> None:
        """The core wants `m.to` to get a snapshot at least at `m.snapshot.index`."""
        assert m.snapshot is not None
        current = self._senders.get(m.to)
        if (
            current is not None
            and not current.ended
            and current.source.meta.index >= m.snapshot.index
        ):
            return  # the one on its way will do
        self._wanted[m.to] = (m.snapshot, term, m.commit)
        latest = self._latest
        if latest is not None and latest.file.applied_index >= m.snapshot.index:
            self._start(m.to)
        else:
            self._ensure_writing()

    def _ensure_writing(self) -> None:
        if self._writing is None or self._writing.done():
            self._writing = asyncio.get_running_loop().create_task(self._write_latest())
            self._writing.add_done_callback(self._written)

    async def write_now(self) -> SnapshotFile:
        """Write a snapshot of the state now (POST /v1/admin/snapshot) and keep it."""
        if self._writing is not None and not self._writing.done():
            await asyncio.shield(self._writing)
        self._ensure_writing()
        assert self._writing is not None
        written = await asyncio.shield(self._writing)
        return written.file

    async def _write_latest(self) -> _Written:
        path = str(self.dir / f"state-{secrets.token_hex(4)}.snap")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        file: SnapshotFile = await loop.run_in_executor(None, self._sm.write_snapshot, path)
        took = time.perf_counter() - started
        term = self._term_at(file.applied_index)
        self.stats.written += 1
        self.stats.last_write_s = took
        log.info(
            "raft.snapshot_written",
            index=file.applied_index,
            bytes=file.size,
            seconds=round(took, 3),
        )
        return _Written(file, term)

    def _written(self, task: asyncio.Task[_Written]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("raft.snapshot_write_failed", error=repr(exc))
            for peer in list(self._wanted):
                self._fail(peer)
            return
        written = task.result()
        if self._latest is not None:
            self._retired.append(self._latest)
        self._latest = written
        self._close_retired()
        for peer in list(self._wanted):
            self._start(peer)

    def _start(self, peer: int) -> None:
        wanted = self._wanted.pop(peer, None)
        latest = self._latest
        if wanted is None or latest is None:
            return
        meta, term, commit = wanted
        if latest.file.applied_index < meta.index:
            self._wanted[peer] = wanted
            self._ensure_writing()
            return
        source = SnapshotSource(
            SnapshotMeta(latest.file.applied_index, latest.term, meta.conf),
            secrets.token_bytes(8),
            latest.file.size,
            latest.file.digest,
            latest.read,
        )
        old = self._senders.pop(peer, None)
        if old is not None:
            self._release(old)
        sender = SnapshotSender(
            node_id=self.node_id,
            to=peer,
            term=term,
            commit=commit,
            source=source,
            now_s=time.monotonic(),
            chunk_bytes=self.chunk_bytes,
            window_chunks=self.window_chunks,
            retry_s=self.retry_s,
            give_up_s=self.give_up_s,
        )
        latest.users += 1
        self._senders[peer] = sender
        log.info(
            "raft.snapshot_sending",
            to=peer,
            index=source.meta.index,
            bytes=source.total,
        )
        self._emit(sender.start(time.monotonic()))

    def on_resp(self, m: Message) -> None:
        sender = self._senders.get(m.frm)
        if sender is None:
            return
        self._emit(sender.on_resp(m, time.monotonic()))
        self._check_ended(m.frm, sender)

    def tick(self) -> None:
        now = time.monotonic()
        for peer, sender in list(self._senders.items()):
            self._emit(sender.tick(now))
            self._check_ended(peer, sender)

    def abort_all(self) -> None:
        """This node stopped leading: its transfers end (the next leader sends its own)."""
        for sender in self._senders.values():
            self._release(sender)
        self._senders.clear()
        self._wanted.clear()

    def _check_ended(self, peer: int, sender: SnapshotSender) -> None:
        if not sender.ended:
            return
        del self._senders[peer]
        self._release(sender)
        if sender.failed:
            self.stats.failed += 1
            log.warning("raft.snapshot_send_failed", to=peer, acked=sender.acked)
        else:
            self.stats.sent += 1
            log.info("raft.snapshot_sent", to=peer, index=sender.source.meta.index)
        self._report(peer, sender.failed)

    def _fail(self, peer: int) -> None:
        self._wanted.pop(peer, None)
        self.stats.failed += 1
        self._report(peer, True)

    def _emit(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self._send(msg)

    def _release(self, sender: SnapshotSender) -> None:
        for written in [self._latest, *self._retired]:
            if written is not None and written.read == sender.source.read:
                written.users -= 1
        self._close_retired()

    def _close_retired(self) -> None:
        keep = []
        for written in self._retired:
            if written.users > 0:
                keep.append(written)
            else:
                written.close()
        self._retired = keep

    @property
    def latest(self) -> SnapshotFile | None:
        return self._latest.file if self._latest is not None else None

    @property
    def sending(self) -> int:
        return len(self._senders)

    # ------------------------------------------------------------ follower side

    def on_chunk(self, m: Message, current_term: int) -> Message | None:
        """A chunk from the leader; the whole SNAP for the core once it is complete."""
        resp, whole = self._receiver.on_chunk(m, current_term)
        if resp is not None:
            self._send(resp)
        if whole is None or whole.snapshot is None:
            return None
        snap = whole.snapshot
        assert self._incoming_path is not None
        final = self.dir / f"received-{snap.index}-{snap.term}.snap"
        os.replace(self._incoming_path, final)
        self._incoming_path = None
        with self._received_lock:  # older ones go once a newer one is installed
            self._received[(snap.index, snap.term)] = final
        self.stats.received += 1
        log.info("raft.snapshot_received", index=snap.index, term=snap.term, frm=m.frm)
        return whole

    def path_for(self, snap: SnapshotMeta) -> str:
        """The received file of `snap` (the storage step installs it)."""
        with self._received_lock:
            path = self._received.get((snap.index, snap.term))
        if path is None:
            raise RaftError(f"no received snapshot file for ({snap.index}, {snap.term})")
        return str(path)

    def installed(self, snap: SnapshotMeta, seconds: float) -> None:
        with self._received_lock:
            done = [key for key in self._received if key[0] <= snap.index]
            paths = [self._received.pop(key) for key in done]
        for path in paths:  # this one, and any older one the core will never install now
            with contextlib.suppress(OSError):
                path.unlink()
        self.stats.installed += 1
        self.stats.last_install_s = seconds

    def _begin(self, chunk: SnapChunk) -> None:
        self._close_incoming()
        self._incoming_path = self.dir / f"incoming-{chunk.snap_id.hex()}.part"
        fd = os.open(self._incoming_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._incoming = os.fdopen(fd, "wb")  # kept open across chunks; owner only
        self._incoming_digest = hashlib.sha256()

    def _write(self, offset: int, data: bytes) -> None:
        self._incoming.write(data)
        self._incoming_digest.update(data)

    def _finish(self, chunk: SnapChunk) -> bytes:
        self._incoming.close()
        self._incoming = None
        return self._incoming_digest.digest()

    def _close_incoming(self) -> None:
        if self._incoming is not None:
            self._incoming.close()
            self._incoming = None
        if self._incoming_path is not None:
            with contextlib.suppress(OSError):
                self._incoming_path.unlink()
            self._incoming_path = None

    def close(self) -> None:
        self.abort_all()
        if self._writing is not None:
            self._writing.cancel()
        self._close_incoming()
        for written in [self._latest, *self._retired]:
            if written is not None:
                written.close()
        self._latest = None
        self._retired = []

    def status(self) -> dict[str, Any]:
        latest = self._latest
        return {
            "written": self.stats.written,
            "sent": self.stats.sent,
            "failed": self.stats.failed,
            "received": self.stats.received,
            "installed": self.stats.installed,
            "sending": len(self._senders),
            "latest_index": latest.file.applied_index if latest else None,
            "latest_bytes": latest.file.size if latest else None,
            "last_write_s": round(self.stats.last_write_s, 3),
            "last_install_s": round(self.stats.last_install_s, 3),
        }


def message_is_chunk(m: Message) -> bool:
    return m.type is MessageType.SNAP and m.chunk is not None
