"""The replicated queue state machine: applies committed commands to LMDB.

Why this shape:
- One write transaction per batch, which also stores applied_index, so the state and the
  index it describes can never disagree after a crash; entries at or below the stored
  applied_index are skipped, so re-applying a batch after a crash is harmless.
- A refused command changes nothing - not even the clock - while the rest of its batch
  commits. A batch first runs as ONE nested (child) transaction with its commands written
  straight into it; only if one of them is refused is that child aborted and the batch
  run again with a child transaction per command. Refusals are rare (the API checks
  input before proposing), and the children per command were 8% of a 1-node send's
  profile (about 20 µs a command, derived from that share, not timed): on every replica,
  LMDB copies each page a child touches and merges its page list on commit.
- Deterministic: time is the command's `ts` (never below the last one applied), nothing
  depends on a clock, a random source or dict iteration order of untrusted input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb
import structlog

from node.commands import USER_OPS, batch_ops, check_batched_op, decode_command
from node.errors import BadRequest, CommandError
from node.state import (
    counters,
    dead_letters,
    delivery,
    exchanges,
    groups,
    keys,
    messages,
    producers,
    queue_config,
    queue_expiry,
    queues,
    sending,
    streams,
    timers,
    topics,
    transactions,
    users,
)
from node.state.snapshot import restore_snapshot, write_snapshot
from node.state.snapshot_process import write_in_child
from node.state.tables import (
    META_APPLIED_INDEX,
    META_LAST_TS,
    META_RECEIPT_KEY,
    TABLE_NAMES,
    TIMER_DELAYED,
    TIMER_LEASES,
    TIMER_RETENTION,
    TIMER_TABLES,
    UNKNOWN_FLOOR,
    Ctx,
    Tables,
)
from raft.lmdb_env import LmdbEnv
from raft.messages import Entry, EntryKind
from raft.state_machine import SnapshotFile

log = structlog.get_logger("node.state_machine")

Handler = Callable[[Ctx, dict[str, Any]], dict[str, Any]]
_RunCommand = Callable[[lmdb.Transaction, int, dict[str, Any]], dict[str, Any]]


class _Refused(Exception):
    """A command of an optimistically applied batch was refused (or failed)."""


@dataclass(slots=True)
class _FloorsAndClock:
    """What a replica keeps in memory between commands instead of reading it each time.

    `floors`: the timer floors (Ctx.floors). `clock`: the stored META_LAST_TS (the last
    command's effective time), None until first read. Both must move with transactions:
    a batch works on a copy, a refused command's or an undone attempt's changes are
    dropped with it, and the copy is kept only once the batch has committed. A fresh
    instance (a restart) knows nothing and reads.
    """

    floors: list[int]
    clock: int | None

    def copy(self) -> _FloorsAndClock:
        return _FloorsAndClock(self.floors[:], self.clock)


def _send(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    queue = queues.require_queue(ctx, cmd.get("queue"))
    batch = sending.check_batch(cmd.get("messages"), queue)
    if cmd.get("producer") is not None:
        return producers.send_with_session(ctx, queue, batch, cmd["producer"])
    return {"messages": sending.enqueue(ctx, queue, batch)}


def _redrive(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    dlq = queues.require_queue(ctx, cmd.get("queue"))
    return {"redriven": dead_letters.redrive(ctx, dlq)}


def _tick(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = dict(ctx.released)
    expired = queue_expiry.expire_due(ctx, queues.queue_delete)
    if expired:
        result["queues_expired"] = expired
    return result


CONFIG_OPS = frozenset({"queue_put", "queue_delete"})  # ops that change queue_config()

HANDLERS: dict[str, Handler] = {
    "queue_put": queues.queue_put,
    "queue_delete": queues.queue_delete,
    "queue_purge": queues.queue_purge,
    "send": _send,
    "receive": delivery.receive,
    "ack": delivery.ack,
    "nack": delivery.nack,
    "extend": delivery.extend,
    "redrive": _redrive,
    "tick": _tick,
    "producer_init": producers.producer_init,
    "txn": transactions.txn,
    "user_add": users.user_add,
    "user_update": users.user_update,
    "user_delete": users.user_delete,
    "receipt_key": messages.set_receipt_key,
    "exchange_put": exchanges.exchange_put,
    "exchange_delete": exchanges.exchange_delete,
    "exchange_bind": exchanges.exchange_bind,
    "exchange_unbind": exchanges.exchange_unbind,
    "exchange_publish": exchanges.exchange_publish,
    "topic_put": streams.topic_put,
    "topic_delete": streams.topic_delete,
    "topic_append": topics.append,
    "group_join": groups.group_join,
    "group_heartbeat": groups.group_heartbeat,
    "group_leave": groups.group_leave,
    "group_commit": groups.group_commit,
}


class QueueStateMachine:
    """raft.state_machine.StateMachine for queues, stored in the node.* sub-dbs."""

    def __init__(
        self, env: LmdbEnv, *, snapshot_in_child: bool = True, receipt_key: bytes = b""
    ) -> None:
        """`snapshot_in_child`: write snapshots in a child process (see
        node/state/snapshot_process.py); False writes them on the calling thread.
        `receipt_key`: the cluster's key for receipt tags (the same on every replica:
        node/state/messages.py receipt_key_from)."""
        self.env = env
        self.receipt_key = receipt_key
        self.snapshot_in_child = snapshot_in_child
        self.tables = Tables(env)
        # queue_config() runs on every send: answer it from memory. An entry is trusted only
        # while no queue_put/queue_delete has committed since it was read (generation check).
        self._config_cache: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self._config_gen = 0
        self._config_dirty = False
        # The API authenticates every request against node.users: answer user() from
        # memory, trusted while no user op has committed since (users_gen counts them).
        self._user_cache: dict[str, dict[str, Any] | None] = {}
        self.users_gen = 0
        self._users_dirty = False
        # `_committed` holds for the committed state; `_work` is the running batch's copy and
        # `_pending` the copy of a batch whose transaction is not yet committed. A floor
        # raised (or a clock moved) by writes that were then rolled back would skip a due
        # entry (or move time) on this replica only.
        self._committed = _FloorsAndClock([UNKNOWN_FLOOR] * len(TIMER_TABLES), None)
        self._work: _FloorsAndClock | None = None
        self._pending: _FloorsAndClock | None = None

    # ---- StateMachine protocol -------------------------------------------------------

    def applied_index(self) -> int:
        return self.env.read(lambda txn: self._ctx(txn, 0).get_int(META_APPLIED_INDEX))

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        results = self.env.write(lambda txn: self._apply_batch(txn, entries))
        self.committed(entries)
        return results

    def apply_in_txn(self, txn: lmdb.Transaction, entries: Sequence[Entry]) -> list[Any]:
        """Apply inside the driver's transaction (shared with the log append)."""
        return self._apply_batch(txn, entries)

    def committed(self, entries: Sequence[Entry]) -> None:
        """The batch is durable: keep its timer floors and clock; drop cached queue
        configs if a config op was in it."""
        if self._pending is not None:
            self._committed, self._pending = self._pending, None
        if self._config_dirty:
            self._config_dirty = False
            self._config_gen += 1
            self._config_cache.clear()
        if self._users_dirty:
            self._users_dirty = False
            self.users_gen += 1
            self._user_cache.clear()

    # ---- snapshots ------------------------------------------------------------------------

    def write_snapshot(self, path: str) -> SnapshotFile:
        """Every node.* record at the applied index, from one read transaction, to `path`.

        Runs on any thread: the read transaction sees one committed state (LMDB MVCC), so
        the file is exactly the state at the applied index it records. By default the
        records are copied by a child process, which leaves this process's GIL to its
        event loop.
        """
        if self.snapshot_in_child:
            return write_in_child(self.env.path, path)

        def read(txn: lmdb.Transaction) -> SnapshotFile:
            applied = self._ctx(txn, 0).get_int(META_APPLIED_INDEX)
            return write_snapshot(txn, self.tables.handles, TABLE_NAMES, applied, path)

        return self.env.read(read)

    def restore_in_txn(self, txn: lmdb.Transaction, path: str) -> int:
        """Replace the whole state by a snapshot file inside the driver's write transaction
        (which also replaces the log); returns its applied index. Call `restored()` once
        that transaction committed."""
        self._pending = None
        return restore_snapshot(txn, self.tables.handles, TABLE_NAMES, path)

    def restored(self) -> None:
        """A restore committed: nothing cached about the old state may be used again."""
        self._committed = _FloorsAndClock([UNKNOWN_FLOOR] * len(TIMER_TABLES), None)
        self._pending = None
        self._config_gen += 1
        self._config_cache.clear()
        self.users_gen += 1
        self._user_cache.clear()

    # ---- read-only queries (any thread) ------------------------------------------------

    def queue_info(self, name: str, now_ms: int) -> dict[str, Any] | None:
        if not queue_config.valid_queue_name(name):
            return None

        def read(txn: lmdb.Transaction) -> dict[str, Any] | None:
            ctx = self._ctx(txn, now_ms)
            queue = queues.get_queue(ctx, name)
            return None if queue is None else queues.info(ctx, queue, now_ms)

        return self.env.read(read)

    def queue_config(self, name: str) -> dict[str, Any] | None:
        """The queue's config only (no stats): what the API checks on every send."""
        if not queue_config.valid_queue_name(name):
            return None

        gen = self._config_gen
        cached = self._config_cache.get(name)
        if cached is not None and cached[0] == gen:
            return cached[1]

        def read(txn: lmdb.Transaction) -> dict[str, Any] | None:
            queue = queues.get_queue(self._ctx(txn, 0), name)
            return None if queue is None else queues.public_config(queue)

        config = self.env.read(read)
        if self._config_gen == gen:  # no config op committed meanwhile: safe to keep
            if len(self._config_cache) >= 4096:
                self._config_cache.clear()
            self._config_cache[name] = (gen, config)
        return config

    def user(self, name: str) -> dict[str, Any] | None:
        """User `name`'s record (salt, hash, permissions) as applied here, or None."""
        gen = self.users_gen
        if name in self._user_cache:
            return self._user_cache[name]
        record = self.env.read(lambda txn: users.get_user(self._ctx(txn, 0), name))
        if self.users_gen == gen:  # no user op committed meanwhile: safe to keep
            if len(self._user_cache) >= 4096:
                self._user_cache.clear()
            self._user_cache[name] = record
        return record

    def users_bootstrapped(self) -> bool:
        """Whether the first start's admin was added (or refused) here already."""
        return self.env.read(lambda txn: users.bootstrapped(self._ctx(txn, 0)))

    def list_users(self) -> list[dict[str, Any]]:
        def read(txn: lmdb.Transaction) -> list[dict[str, Any]]:
            return [users.public(n, r) for n, r in users.all_users(self._ctx(txn, 0))]

        return self.env.read(read)

    def list_queues(self, now_ms: int) -> list[dict[str, Any]]:
        def read(txn: lmdb.Transaction) -> list[dict[str, Any]]:
            ctx = self._ctx(txn, now_ms)
            return [queues.info(ctx, q, now_ms) for q in queues.all_queues(ctx)]

        return self.env.read(read)

    def nothing_to_receive(self, name: str, now_ms: int) -> bool:
        """True when queue `name` exists, has no ready message, and no lease, delay or
        retention deadline is due by `now_ms`: a receive applied now would find nothing.

        From this node's applied state (on the leader: every acknowledged write), so a
        long-poll can wait for a send without first committing an empty receive. A deadline
        that may be due, in any queue, answers False: applying a command may release
        messages. That is told by the committed timer floors the apply keeps (lower bounds
        of each index's earliest deadline), without a cursor; an unknown floor (after a
        restart) answers False too, and the receive's own apply then learns it.
        """
        if not queue_config.valid_queue_name(name):
            return False
        floors = self._committed.floors
        if any(floors[i] <= now_ms for i in (TIMER_RETENTION, TIMER_LEASES, TIMER_DELAYED)):
            return False

        def read(txn: lmdb.Transaction) -> bool:
            queue = queues.get_queue(self._ctx(txn, now_ms), name)
            if queue is None:
                return False
            prefix = keys.u64(queue["id"])
            cur = txn.cursor(db=self.tables.ready)
            return not (cur.set_range(prefix) and cur.key()[: len(prefix)] == prefix)

        return self.env.read(read)

    def exchange_info(self, name: str) -> dict[str, Any] | None:
        """An exchange's record and counters with its bindings, or None."""
        if not queue_config.valid_queue_name(name):
            return None

        def read(txn: lmdb.Transaction) -> dict[str, Any] | None:
            ctx = self._ctx(txn, 0)
            record = exchanges.get_exchange(ctx, name)
            if record is None:
                return None
            return {
                **exchanges.public(record),
                "bindings": exchanges.all_bindings(ctx, name),
            }

        return self.env.read(read)

    def exchange(self, name: str) -> dict[str, Any] | None:
        """An exchange's record and counters (no bindings), or None."""
        if not queue_config.valid_queue_name(name):
            return None

        def read(txn: lmdb.Transaction) -> dict[str, Any] | None:
            record = exchanges.get_exchange(self._ctx(txn, 0), name)
            return None if record is None else exchanges.public(record)

        return self.env.read(read)

    def list_exchanges(self) -> list[dict[str, Any]]:
        def read(txn: lmdb.Transaction) -> list[dict[str, Any]]:
            return [exchanges.public(r) for r in exchanges.all_exchanges(self._ctx(txn, 0))]

        return self.env.read(read)

    # ---- topics and groups (read-only; the API maps a CommandError to its status) ---------

    def list_topics(self) -> list[dict[str, Any]]:
        def read(txn: lmdb.Transaction) -> list[dict[str, Any]]:
            ctx = self._ctx(txn, 0)
            return [topics.info(ctx, t) for t in topics.all_topics(ctx)]

        return self.env.read(read)

    def topic_info(self, name: str) -> dict[str, Any] | None:
        def read(txn: lmdb.Transaction) -> dict[str, Any] | None:
            ctx = self._ctx(txn, 0)
            topic = topics.get_topic(ctx, name)
            return None if topic is None else topics.info(ctx, topic)

        return self.env.read(read)

    def topic_fetch(
        self, name: str, partition: int, offset: int, max_records: int, max_bytes: int
    ) -> dict[str, Any]:
        """Records of one partition from `offset` (raises NotFound / OffsetOutOfRange)."""
        return self.env.read(
            lambda txn: topics.fetch(
                self._ctx(txn, 0), name, partition, offset, max_records, max_bytes
            )
        )

    def group_info(self, name: str) -> dict[str, Any] | None:
        def read(txn: lmdb.Transaction) -> dict[str, Any] | None:
            ctx = self._ctx(txn, 0)
            group = groups.get_group(ctx, name)
            return None if group is None else groups.info(ctx, name, group)

        return self.env.read(read)

    def next_deadline_ms(self) -> int | None:
        return self.env.read(lambda txn: timers.next_deadline_ms(self._ctx(txn, 0)))

    def timer_floors(self) -> tuple[int, ...]:
        """The committed timer floors (Ctx.floors), for tests: each must stay <= the
        deadline of its index's first entry."""
        return tuple(self._committed.floors)

    def last_ts_ms(self) -> int:
        """The effective time of the last applied command (the leader stamps >= this)."""
        return self.env.read(lambda txn: self._ctx(txn, 0).get_int(META_LAST_TS))

    def state_hash(self) -> str:
        """sha256 over every key/value of every node.* sub-db, in name then key order.

        applied_index is left out (callers compare it separately): the hash describes the
        queue state, so a refused command or a NOOP entry leaves it unchanged.
        """
        return self.env.read(self._hash_in)

    def applied_state(self) -> tuple[int, str]:
        """(applied index, state hash) read in one transaction, so the two always match.

        Why: `GET /v1/admin/state` hashes the whole database off the event loop (it would
        stall heartbeats on a big state), while entries keep applying; read apart, the
        index and the hash could describe two different states.
        """

        def read(txn: lmdb.Transaction) -> tuple[int, str]:
            return self._ctx(txn, 0).get_int(META_APPLIED_INDEX), self._hash_in(txn)

        return self.env.read(read)

    def _hash_in(self, txn: lmdb.Transaction) -> str:
        digest = hashlib.sha256()
        for name in TABLE_NAMES:
            digest.update(b"T" + len(name).to_bytes(2, "big") + name.encode())
            for key, value in txn.cursor(db=self.tables.handles[name]):
                if name == "node.meta" and key == META_APPLIED_INDEX:
                    continue
                digest.update(len(key).to_bytes(4, "big") + key)
                digest.update(len(value).to_bytes(4, "big") + value)
        return digest.hexdigest()

    # ---- internals ----------------------------------------------------------------------

    def _ctx(self, txn: lmdb.Transaction, now_ms: int) -> Ctx:
        # the cluster's key once applied (messages.set_receipt_key), else the fallback
        stored = txn.get(META_RECEIPT_KEY, db=self.tables.meta)
        key = self.receipt_key if stored is None else stored
        return Ctx(txn=txn, tables=self.tables, now_ms=now_ms, receipt_key=key)

    def has_receipt_key(self) -> bool:
        """Whether the cluster's receipt key is applied here (node/receipt_key.py)."""
        return self.env.read(lambda txn: txn.get(META_RECEIPT_KEY, db=self.tables.meta)) is not None

    def _apply_batch(self, txn: lmdb.Transaction, entries: Sequence[Entry]) -> list[Any]:
        """Apply `entries`: optimistically in one child transaction, and again with one
        child per command if any command is refused (same results, see the module doc)."""
        self._pending = None
        self._work = self._committed.copy()
        try:
            child = self.env.env.begin(write=True, parent=txn)
            try:
                results = self._apply_entries(child, entries, self._run_direct)
            except _Refused:
                child.abort()
                self._work = self._committed.copy()  # the undone attempt's changes go too
                results = self._apply_entries(txn, entries, self._run_isolated)
            except BaseException:
                child.abort()
                raise
            else:
                child.commit()
            self._pending = self._work  # kept by committed()
            return results
        finally:
            self._work = None

    def _apply_entries(
        self, txn: lmdb.Transaction, entries: Sequence[Entry], run: _RunCommand
    ) -> list[Any]:
        root = self._ctx(txn, 0)
        applied = root.get_int(META_APPLIED_INDEX)
        results: list[Any] = []
        for entry in entries:
            if entry.index <= applied:
                results.append(None)
                continue
            applied = entry.index
            if entry.kind != EntryKind.NORMAL:
                results.append(None)
                continue
            results.append(self._apply_command(txn, entry, run))
        root.put_int(META_APPLIED_INDEX, applied)
        work = self._work  # read now: a refused command may have replaced it
        assert work is not None
        if work.clock is not None:
            # once per batch: the last applied command's time (a refused one's was undone)
            root.put_int(META_LAST_TS, work.clock)
        return results

    def _apply_command(
        self, parent: lmdb.Transaction, entry: Entry, run: _RunCommand
    ) -> dict[str, Any]:
        try:
            cmd = decode_command(entry.data)
            if cmd["op"] != "batch":
                return run(parent, entry.index, cmd)
            subs = batch_ops(cmd)
        except CommandError as exc:
            return exc.to_result()
        # Each sub-command runs exactly as if it were its own entry with the batch's stamp.
        results = []
        for sub in subs:
            try:
                full = check_batched_op(sub, cmd["ts"])
            except CommandError as exc:
                results.append(exc.to_result())
                continue
            results.append(run(parent, entry.index, full))
        return {"results": results}

    def _run_direct(self, txn: lmdb.Transaction, index: int, cmd: dict[str, Any]) -> dict[str, Any]:
        """Run one command straight in the batch's transaction; _Refused if it is refused
        (its writes so far cannot be undone alone: the whole batch runs again isolated)."""
        try:
            return self._execute(txn, cmd)
        except lmdb.BadValsizeError as exc:  # a key built from input: the command's fault
            raise _Refused from exc
        except (lmdb.Error, MemoryError):
            raise  # MapFullError, disk or memory trouble: never a result (see _run_isolated)
        except Exception as exc:
            raise _Refused from exc

    def _run_isolated(
        self, parent: lmdb.Transaction, index: int, cmd: dict[str, Any]
    ) -> dict[str, Any]:
        """Run one command in a child transaction: a refused one changes nothing."""
        assert self._work is not None  # commands run only inside _apply_batch
        before = self._work.copy()

        def undo() -> None:
            child.abort()
            self._work = before

        child = self.env.env.begin(write=True, parent=parent)
        try:
            result = self._execute(child, cmd)
            child.commit()
            return result
        except CommandError as exc:
            undo()
            return exc.to_result()
        except lmdb.BadValsizeError as exc:  # a key built from input was too long
            undo()
            return BadRequest(f"a field is too long to store: {exc}").to_result()
        except (lmdb.Error, MemoryError):
            undo()
            raise  # MapFullError, disk or memory trouble: not the command's fault; never a result
        except Exception as exc:  # a bug must not stop the node; the command changes nothing
            undo()
            log.exception("node.apply_failed", index=index)
            return {"error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}}

    def _execute(self, txn: lmdb.Transaction, cmd: dict[str, Any]) -> dict[str, Any]:
        ctx = self._ctx(txn, 0)
        work = self._work
        assert work is not None  # commands run only inside _apply_batch
        ctx.floors = work.floors
        if work.clock is None:
            work.clock = ctx.get_int(META_LAST_TS)
        ctx.now_ms = work.clock = max(cmd["ts"], work.clock)
        ctx.released = timers.release_due(ctx)
        if cmd["op"] in CONFIG_OPS:
            self._config_dirty = True
        elif cmd["op"] in USER_OPS:
            self._users_dirty = True
        handler = HANDLERS.get(cmd["op"])
        if handler is None:  # decode_command already refuses unknown ops
            raise BadRequest(f"unknown command op {cmd['op']!r}", field="op")
        result = handler(ctx, cmd)
        if "queues_expired" in result:  # a tick deleted queues: cached configs are stale
            self._config_dirty = True
        counters.flush(ctx)
        return result
