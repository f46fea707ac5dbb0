"""Disk quota and disk-full stop for one node (issue 16 §4).

Why: every replica stores the same data, so a full disk stops them all at once, and a
restart does not help (the first write fails again). A quota below the disk's size turns
that into a state the cluster can leave by itself: past it, the leader refuses the
requests that *add* data with `507 insufficient_storage`, while receives, acks, deletes
and purges (the requests that drain and free space) still work; once usage falls the
alarm clears by itself. A node whose disk fills anyway (or whose LMDB map reaches
`--max-map-bytes`) stops with one clear critical line, `node.disk_full`, before the
Raft driver's own lines about the failed storage step: LMDB aborted the transaction, so
nothing is half-written, and the other nodes go on.

What "usage" is: LMDB's live pages, i.e. for the main database and every named one,
(branch + leaf + overflow pages) * page size. Not the file size: LMDB never shrinks its
file, it reuses freed pages, so a purge lowers the live pages (and the alarm can clear)
while the file stays as large as it ever was. The Raft log is counted too (it is on the
same disk); until log compaction lands it only grows, so the alarm clears when the state
machine frees more than the log gained since.

Measuring costs a read transaction and one `stat` per sub-database (about 20 µs for the
~20 sub-databases of a node), so it is cached: a figure is reused until it is older than
`refresh_s` (0.5 s) or until the commands proposed since it was taken add up to 1/64 of
the quota (at least 64 KiB), whichever comes first; a background refresher keeps it
fresh without traffic. A burst can still overshoot the quota by what was in flight when
the last figure was taken; the default quota keeps 10 % of the disk below it for that.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import time
from collections.abc import Callable
from typing import Any, TypeVar

import lmdb
import structlog

from node.http import ApiError
from raft.lmdb_env import LmdbEnv

log = structlog.get_logger("node.quota")

T = TypeVar("T")

#: The default quota, as a fraction of what this node's LMDB could occupy (see
#: `default_quota_bytes`).
DEFAULT_QUOTA_FRACTION = 0.90
#: A raised alarm clears only below this fraction of the quota, so it does not flap while
#: usage hovers around the quota.
CLEAR_FRACTION = 0.95
REFRESH_S = 0.5
#: Re-measure after this fraction of the quota was proposed (see the module docstring).
MEASURE_EVERY_FRACTION = 1 / 64
MIN_MEASURE_EVERY_BYTES = 64 << 10

#: Ops that add data when the leader proposes them (`adds_data` refines queue_put and
#: txn). Every other op drains, frees or only moves data, and must keep working past the
#: quota: receive, ack, nack, extend, tick, redrive (moves dead letters back, adds
#: nothing), queue_delete, queue_purge.
ADDING_OPS = frozenset({"send", "queue_put", "producer_init", "txn", "user_add", "topic_append"})
# An exchange, a binding and a publish's copies add data; deleting and unbinding free it.
ADDING_OPS = ADDING_OPS | {"exchange_put", "exchange_bind", "exchange_publish"}
# user_update replaces a record in place (a token rotated on a full disk must still work);
# receipt_key is the leader's once-per-cluster 32 bytes that receipts cannot do without.
NEVER_REFUSED_OPS = frozenset(
    {
        "receive",
        "ack",
        "nack",
        "extend",
        "tick",
        "redrive",
        "queue_delete",
        "queue_purge",
        "user_update",
        "user_delete",
        "receipt_key",
        # topics: appends add data; a topic's record (and its partitions' small records) is
        # tens of bytes, and lowering its retention is how a full disk frees topic data;
        # group ops keep consumers joining, rebalancing and committing past the quota (a
        # group is one bounded record; fetches are reads, not ops)
        "topic_put",
        "topic_delete",
        "group_join",
        "group_heartbeat",
        "group_leave",
        "group_commit",
    }
) | {"exchange_delete", "exchange_unbind"}


def adds_data(op: str, fields: dict[str, Any], queue_exists: Callable[[str], bool]) -> bool:
    """Whether proposing `op` with `fields` would store new data.

    A queue_put that only changes an existing queue's settings adds nothing; one that
    creates a queue does. A transaction adds data when it sends; an ack-only transaction
    is an ack. A producer_init stores a producer record (and its only use is to send).
    """
    if op not in ADDING_OPS:
        return False
    if op == "queue_put":
        return not queue_exists(str(fields.get("name", "")))
    if op == "txn":  # sends and topic publishes add data; acks and offset commits do not
        return bool(fields.get("publish")) or any(
            s.get("messages") for s in fields.get("send") or () if isinstance(s, dict)
        )
    return True


def _live_pages(stat: dict[str, int]) -> int:
    return stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]


def lmdb_used_bytes(env: LmdbEnv) -> int:
    """Bytes in LMDB's live pages: the main database plus every named sub-database.

    The names are the main database's keys, so sub-databases added later (snapshots)
    are counted without a list to maintain here.
    """
    names = env.read(lambda txn: [bytes(key) for key, _ in txn.cursor()])
    handles = []
    for raw in names:
        try:
            handles.append(env.db(raw.decode()))
        except (UnicodeDecodeError, lmdb.Error):
            continue  # not a sub-database of ours: a plain key has no pages of its own

    def measure(txn: lmdb.Transaction) -> int:
        main = env.env.stat()
        total = _live_pages(main) * main["psize"]
        for handle in handles:
            stat = txn.stat(handle)
            total += _live_pages(stat) * stat["psize"]
        return total

    return env.read(measure)


def lmdb_file_bytes(env: LmdbEnv) -> int:
    """Size of the LMDB data file (what the disk holds; never shrinks)."""
    try:
        return os.path.getsize(os.path.join(env.path, "data.mdb"))
    except OSError:
        return 0


def default_quota_bytes(free_bytes: int, file_bytes: int, max_map_bytes: int) -> int:
    """90 % of what this node's LMDB could grow to: the smaller of the map ceiling and the
    disk space it has (its data file plus the free space at start).

    Why at start and not live: a quota that moved with free space would move with every
    other process writing to the disk; an operator who wants a fixed figure sets
    `--quota-bytes`. Nodes sharing one disk (a local test cluster) each take 90 % of it:
    give them `--quota-bytes` if that matters.
    """
    room = min(max_map_bytes, free_bytes + file_bytes)
    return max(1, int(room * DEFAULT_QUOTA_FRACTION))


def node_quota(env: LmdbEnv, configured_bytes: int | None, max_map_bytes: int) -> DiskQuota:
    """The quota a node runs with (`--quota-bytes`, else `default_quota_bytes`), measured
    once and logged, so the log of every run says where the node stands."""
    free_bytes = shutil.disk_usage(env.path).free
    quota_bytes = (
        configured_bytes
        if configured_bytes is not None
        else default_quota_bytes(free_bytes, lmdb_file_bytes(env), max_map_bytes)
    )
    quota = DiskQuota(quota_bytes, lambda: lmdb_used_bytes(env))
    quota.refresh(force=True)
    log.info(
        "node.quota",
        used_bytes=quota.used_bytes,
        quota_bytes=quota.quota_bytes,
        configured=configured_bytes is not None,
        disk_free_bytes=free_bytes,
        max_map_bytes=max_map_bytes,
        alarm=quota.alarm,
    )
    return quota


class DiskQuota:
    """The cached usage, the quota and the alarm (with hysteresis) of one node.

    `measure` answers the used bytes (`lmdb_used_bytes`); `clock` is injectable so tests
    can drive the cache without sleeping.
    """

    def __init__(
        self,
        quota_bytes: int,
        measure: Callable[[], int],
        *,
        refresh_s: float = REFRESH_S,
        clear_fraction: float = CLEAR_FRACTION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if quota_bytes <= 0:
            raise ValueError("quota_bytes must be positive")
        self.quota_bytes = quota_bytes
        self.clear_below_bytes = int(quota_bytes * clear_fraction)
        self.refresh_s = refresh_s
        self.measure_every_bytes = max(
            MIN_MEASURE_EVERY_BYTES, int(quota_bytes * MEASURE_EVERY_FRACTION)
        )
        self._written_bytes = 0  # proposed since the last measurement
        self._measure = measure
        self._clock = clock
        self.used_bytes = 0
        self.alarm = False
        self.measured_at: float | None = None
        self.refused = 0  # requests answered 507 by this node
        self._measure_failed = False

    def note_written(self, n_bytes: int) -> None:
        """`n_bytes` of commands were proposed: enough of them make the figure stale."""
        self._written_bytes += n_bytes
        if self._written_bytes >= self.measure_every_bytes:
            self.measured_at = None

    def refresh(self, *, force: bool = False) -> None:
        """Measure again if the cached figure is stale (see `note_written`) or `force`."""
        now = self._clock()
        if not force and self.measured_at is not None and now - self.measured_at < self.refresh_s:
            return
        self.measured_at = now
        self._written_bytes = 0
        try:
            used = self._measure()
        except Exception as exc:  # e.g. the env closing under a scrape: keep the last figure
            if not self._measure_failed:
                log.warning("node.quota_measure_failed", error=repr(exc))
            self._measure_failed = True
            return
        self._measure_failed = False
        self.used_bytes = used
        if not self.alarm and used >= self.quota_bytes:
            self.alarm = True
            log.warning(
                "node.quota_alarm",
                state="raised",
                used_bytes=used,
                quota_bytes=self.quota_bytes,
                clears_below_bytes=self.clear_below_bytes,
                detail="writes that add data get 507 insufficient_storage; receives, acks, "
                "deletes and purges still work",
            )
        elif self.alarm and used < self.clear_below_bytes:
            self.alarm = False
            log.info(
                "node.quota_alarm",
                state="cleared",
                used_bytes=used,
                quota_bytes=self.quota_bytes,
                clears_below_bytes=self.clear_below_bytes,
            )

    def check(self, op: str, fields: dict[str, Any], queue_exists: Callable[[str], bool]) -> None:
        """Raise 507 if `op` adds data while the alarm is up; anything else passes."""
        if op not in ADDING_OPS:  # the common ack/receive path: one set lookup
            return
        self.refresh()
        if self.alarm and adds_data(op, fields, queue_exists):
            self.refused += 1
            raise self.refusal()

    def refusal(self) -> ApiError:
        return ApiError(
            507,
            "insufficient_storage",
            f"the disk quota is reached: the leader's data takes {self.used_bytes} bytes of "
            f"its {self.quota_bytes}-byte quota (--quota-bytes). Writes that add data are "
            f"refused until usage falls below {self.clear_below_bytes} bytes; receives, "
            "acks, deletes and purges still work: drain, purge or delete queues to free space",
            used_bytes=self.used_bytes,
            quota_bytes=self.quota_bytes,
        )

    def view(self) -> dict[str, Any]:
        """This node's figures for `GET /v1/cluster` (its `disk` object) and /metrics."""
        self.refresh()
        return {"used_bytes": self.used_bytes, "quota_bytes": self.quota_bytes, "alarm": self.alarm}

    async def run(self) -> None:
        """Refresh in the background, so the alarm rises and clears (and says so in the log)
        without waiting for a request that adds data."""
        while True:
            self.refresh()
            await asyncio.sleep(self.refresh_s)


# ---------------------------------------------------------------- disk full


#: Below this much free space, a failed LMDB commit is taken for a full disk (see
#: DiskGuardedEnv._is_disk_full).
LOW_DISK_FREE_BYTES = 16 << 20


class DiskFull(Exception):
    """This node's LMDB has no room left (the disk, or its --max-map-bytes ceiling).

    The failed write transaction was aborted, so the data on disk is the last committed
    state; the node must stop rather than keep answering without being able to persist.
    """


class DiskGuardedEnv(LmdbEnv):
    """An LmdbEnv whose writes turn "no room" into `DiskFull` with one clear critical line.

    Why here and not in the Raft driver: the driver only knows that storage failed; the
    node knows what the operator can do about it (free space, raise the ceiling) and says
    so once, before the driver's own lines (the first critical line of a run is what
    `raftq up` reports as the reason a node stopped).
    """

    _disk_full_logged = False

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        committing = False

        def run(txn: lmdb.Transaction) -> T:
            nonlocal committing
            committing = False  # `fn` may run again after a map growth
            result = fn(txn)
            committing = True  # an error from here on is the commit's: LMDB's disk write
            return result

        try:
            return super().write(run)
        except lmdb.MapFullError as exc:
            raise self._disk_full(
                f"the LMDB map is full at its ceiling of {self.max_map_size} bytes "
                f"(--max-map-bytes; data in {self.path}): this node stopped; the write was "
                "aborted and the data is intact. If the disk has room, restart it with a larger "
                "--max-map-bytes; lower --quota-bytes so writes get 507 before the ceiling",
                exc,
            ) from exc
        except (lmdb.Error, OSError) as exc:
            if not self._is_disk_full(exc, committing):
                raise
            raise self._disk_full(
                f"the disk holding {self.path} is full (LMDB: {exc}): this node stopped; the "
                "write was aborted and the data is intact. Free space on that disk (or move "
                "the data dir to a larger one) and restart it; lower --quota-bytes so writes "
                "get 507 before the disk fills",
                exc,
            ) from exc

    def _is_disk_full(self, exc: BaseException, committing: bool) -> bool:
        """ENOSPC, however it arrives: py-lmdb's DiskError, an OSError, or a failed commit
        (LMDB answers a short write, which is what a full disk gives, with EIO) while the
        disk has almost no free space left. Errors of `fn` itself are not a full disk."""
        if isinstance(exc, lmdb.DiskError):
            return True
        if isinstance(exc, OSError):
            return exc.errno == errno.ENOSPC
        if not committing:
            return False
        try:
            return shutil.disk_usage(self.path).free < LOW_DISK_FREE_BYTES
        except OSError:
            return False

    def _disk_full(self, message: str, exc: BaseException) -> DiskFull:
        if not self._disk_full_logged:
            self._disk_full_logged = True
            log.critical(
                "node.disk_full",
                error=message,
                path=self.path,
                map_bytes=self.map_size_bytes(),
                max_map_bytes=self.max_map_size,
                cause=repr(exc),
            )
        return DiskFull(message)


def disk_full_cause(exc: BaseException | None) -> DiskFull | None:
    """The DiskFull behind a driver failure (it arrives wrapped in a StorageError)."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, DiskFull):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
