"""The disk quota's logic, without processes: which ops are refused, the alarm's hysteresis,
the cached measurement, the LMDB usage figure, and the disk-full stop of DiskGuardedEnv."""

from __future__ import annotations

import asyncio
import errno
import os
from types import SimpleNamespace
from typing import Any

import lmdb
import pytest
import structlog

from node.commands import OPS
from node.config import ConfigError, load_config
from node.http import ApiError
from node.metrics import Metrics
from node.queue_service import QueueService
from node.quota import (
    ADDING_OPS,
    CLEAR_FRACTION,
    LOW_DISK_FREE_BYTES,
    MIN_MEASURE_EVERY_BYTES,
    NEVER_REFUSED_OPS,
    DiskFull,
    DiskGuardedEnv,
    DiskQuota,
    adds_data,
    default_quota_bytes,
    disk_full_cause,
    lmdb_file_bytes,
    lmdb_used_bytes,
    node_quota,
)
from raft.errors import StorageError
from tests.node.harness import Harness

QUOTA = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeDisk:
    """A measure() that answers `used` and counts its calls."""

    def __init__(self, used: int = 0) -> None:
        self.used = used
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.used


def make_quota(used: int = 0) -> tuple[DiskQuota, FakeDisk, FakeClock]:
    disk, clock = FakeDisk(used), FakeClock()
    return DiskQuota(QUOTA, disk, refresh_s=0.5, clock=clock), disk, clock


def no_queue(_name: str) -> bool:
    return False


def some_queue(_name: str) -> bool:
    return True


# ---------------------------------------------------------------- which ops


def test_every_op_is_classified_once():
    """A new op must be put on one side deliberately (refused past the quota, or not)."""
    proposable = OPS - {"batch"}  # the service builds batches from checked ops
    assert proposable == ADDING_OPS | NEVER_REFUSED_OPS
    assert not ADDING_OPS & NEVER_REFUSED_OPS


@pytest.mark.parametrize(
    ("op", "fields", "queue_exists", "adds"),
    [
        ("send", {"queue": "q", "messages": [{"body": b"x"}]}, some_queue, True),
        ("queue_put", {"name": "new", "config": {}}, no_queue, True),
        ("queue_put", {"name": "q", "config": {"delay_s": 5}}, some_queue, False),
        ("producer_init", {}, some_queue, True),
        (
            "txn",
            {"txn_id": "t", "ack": [], "send": [{"queue": "q", "messages": [{}]}]},
            some_queue,
            True,
        ),
        (
            "txn",
            {"txn_id": "t", "ack": [{"queue": "q", "receipt": "r"}], "send": []},
            some_queue,
            False,
        ),
        *[(op, {"queue": "q", "name": "q"}, some_queue, False) for op in sorted(NEVER_REFUSED_OPS)],
    ],
)
def test_adds_data(op, fields, queue_exists, adds):
    assert adds_data(op, fields, queue_exists) is adds


# ---------------------------------------------------------------- alarm and hysteresis


def test_alarm_rises_at_the_quota_and_clears_below_95_percent():
    quota, disk, clock = make_quota(used=QUOTA - 1)
    send = {"queue": "q", "messages": [{"body": b"x"}]}
    with structlog.testing.capture_logs() as logs:
        quota.check("send", send, some_queue)  # under the quota: passes
        assert not quota.alarm

        disk.used = QUOTA
        clock.now += 1
        with pytest.raises(ApiError) as refused:
            quota.check("send", send, some_queue)
        assert quota.alarm

        disk.used = int(QUOTA * CLEAR_FRACTION)  # fell, but not below 95%: still up
        clock.now += 1
        quota.refresh()
        assert quota.alarm

        disk.used = int(QUOTA * CLEAR_FRACTION) - 1
        clock.now += 1
        quota.refresh()
        assert not quota.alarm
        quota.check("send", send, some_queue)

        disk.used = QUOTA - 1  # back up, but not to the quota: no flapping
        clock.now += 1
        quota.refresh()
        assert not quota.alarm

    err = refused.value
    assert (err.status, err.code) == (507, "insufficient_storage")
    assert err.extra == {"used_bytes": QUOTA, "quota_bytes": QUOTA}
    assert str(QUOTA) in err.message and "--quota-bytes" in err.message
    assert "acks, deletes and purges still work" in err.message
    alarms = [(e["state"], e["used_bytes"]) for e in logs if e["event"] == "node.quota_alarm"]
    assert alarms == [("raised", QUOTA), ("cleared", int(QUOTA * CLEAR_FRACTION) - 1)]
    assert quota.refused == 1


def test_past_the_quota_only_adding_ops_are_refused():
    quota, _, _ = make_quota(used=2 * QUOTA)
    quota.refresh(force=True)
    for op in NEVER_REFUSED_OPS:
        quota.check(op, {"queue": "q", "name": "q"}, some_queue)
    quota.check("queue_put", {"name": "q", "config": {}}, some_queue)  # an update
    quota.check("txn", {"txn_id": "t", "ack": [{"queue": "q", "receipt": "r"}]}, some_queue)
    for op, fields in (
        ("send", {"queue": "q", "messages": [{"body": b"x"}]}),
        ("queue_put", {"name": "new", "config": {}}),
        ("producer_init", {}),
        ("txn", {"txn_id": "t", "send": [{"queue": "q", "messages": [{"body": b"x"}]}]}),
    ):
        with pytest.raises(ApiError) as refused:
            quota.check(op, fields, no_queue if op == "queue_put" else some_queue)
        assert refused.value.status == 507, op


# ---------------------------------------------------------------- the cache


def test_measurement_is_cached_for_refresh_s():
    quota, disk, clock = make_quota()
    send = {"queue": "q", "messages": []}
    for _ in range(1000):
        quota.check("send", send, some_queue)
        quota.view()
    assert disk.calls == 1
    clock.now += 0.49
    quota.check("send", send, some_queue)
    assert disk.calls == 1
    clock.now += 0.02
    quota.check("send", send, some_queue)
    assert disk.calls == 2


def test_ops_that_never_add_data_never_measure():
    quota, disk, _ = make_quota()
    for op in NEVER_REFUSED_OPS:
        quota.check(op, {}, some_queue)
    assert disk.calls == 0


def test_written_bytes_make_the_figure_stale_before_refresh_s():
    quota, disk, _ = make_quota()
    send = {"queue": "q", "messages": []}
    quota.check("send", send, some_queue)
    assert disk.calls == 1
    assert quota.measure_every_bytes == MIN_MEASURE_EVERY_BYTES  # 1/64 of 1 MB is less
    quota.note_written(MIN_MEASURE_EVERY_BYTES - 1)
    quota.check("send", send, some_queue)
    assert disk.calls == 1
    quota.note_written(1)
    quota.check("send", send, some_queue)
    assert disk.calls == 2
    quota.note_written(MIN_MEASURE_EVERY_BYTES - 1)  # counted from the last measurement
    quota.check("send", send, some_queue)
    assert disk.calls == 2
    assert DiskQuota(64 << 30, disk).measure_every_bytes == 1 << 30


def test_a_failed_measurement_keeps_the_last_figure():
    clock = FakeClock()
    answers: list[Any] = [2 * QUOTA, lmdb.Error("closed")]

    def measure() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    quota = DiskQuota(QUOTA, measure, clock=clock)
    quota.refresh()
    clock.now += 1
    quota.refresh()  # must not raise (a scrape must never 500)
    assert quota.view() == {"used_bytes": 2 * QUOTA, "quota_bytes": QUOTA, "alarm": True}


async def test_background_refresh_clears_the_alarm_without_traffic():
    disk = FakeDisk(2 * QUOTA)
    quota = DiskQuota(QUOTA, disk, refresh_s=0.01)
    task = asyncio.create_task(quota.run())
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if quota.alarm:
                break
        assert quota.alarm
        disk.used = 0
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not quota.alarm:
                break
        assert not quota.alarm
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_default_quota_is_90_percent_of_the_room():
    assert default_quota_bytes(free_bytes=900, file_bytes=100, max_map_bytes=1 << 40) == 900
    assert default_quota_bytes(free_bytes=1 << 30, file_bytes=0, max_map_bytes=1000) == 900
    assert default_quota_bytes(free_bytes=0, file_bytes=0, max_map_bytes=1000) == 1


def test_quota_must_be_positive():
    with pytest.raises(ValueError):
        DiskQuota(0, FakeDisk())


# ---------------------------------------------------------------- config


def _args(*extra: str) -> list[str]:
    base = ["--id", "1", "--http", "127.0.0.1:7001", "--raft", "127.0.0.1:7101"]
    return [*base, "--data-dir", "/tmp/x", *extra]


def test_quota_flag_and_toml(tmp_path):
    assert load_config(_args()).quota_bytes is None
    assert load_config(_args("--quota-bytes", "5000000")).quota_bytes == 5_000_000
    toml = tmp_path / "node.toml"
    toml.write_text("quota_bytes = 7000000\n")
    assert load_config(_args("--config", str(toml))).quota_bytes == 7_000_000
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="quota_bytes must be positive"):
            load_config(_args("--quota-bytes", bad))


# ---------------------------------------------------------------- the queue service


class FakeRaft:
    def __init__(self, is_leader: bool) -> None:
        self.is_leader = is_leader
        self.leader_id = 1 if is_leader else 2
        self.proposed: list[bytes] = []

    def propose_nowait(self, data: bytes) -> asyncio.Future[Any]:
        self.proposed.append(data)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result({"ok": True})
        return fut


class FakeSm:
    def queue_config(self, name: str) -> dict[str, Any] | None:
        return {"name": name} if name == "q" else None


def _service(is_leader: bool) -> tuple[QueueService, FakeRaft]:
    cfg = load_config(_args("--peers", "1=http://127.0.0.1:7001@127.0.0.1:7101"))
    quota, _, _ = make_quota(used=2 * QUOTA)
    raft = FakeRaft(is_leader)
    return QueueService(cfg, raft, FakeSm(), Metrics(), quota=quota), raft


async def test_a_refused_write_proposes_nothing():
    service, raft = _service(is_leader=True)
    send = {"queue": "q", "messages": [{"body": b"x"}]}
    with pytest.raises(ApiError) as refused:
        await service.propose("send", **send)
    assert refused.value.status == 507
    with pytest.raises(ApiError):
        service.propose_detached("send", **send)  # ack=none: 507, not 202 and lost
    with pytest.raises(ApiError):
        await service.propose("queue_put", name="new", config={})
    await asyncio.sleep(0.01)  # a coalesced batch would have flushed by now
    assert raft.proposed == []
    await service.propose("ack", queue="q", receipts=["r"])
    await service.propose("queue_put", name="q", config={})
    await service.propose("queue_purge", name="q")
    assert len(raft.proposed) == 3


async def test_a_follower_does_not_refuse_it_forwards():
    """Only the leader checks: a follower's proposal goes on to fail with not_leader,
    which the API forwards to the leader, whose own quota decides."""
    service, raft = _service(is_leader=False)
    await service.propose("send", queue="q", messages=[{"body": b"x"}])
    assert len(raft.proposed) == 1


# ---------------------------------------------------------------- usage of a real env


def test_usage_counts_live_pages_and_falls_after_a_purge(tmp_path):
    h = Harness(str(tmp_path / "lmdb"))
    try:
        empty = lmdb_used_bytes(h.env)
        h.create("q")
        for _ in range(20):
            h.send("q", *[os.urandom(1000) for _ in range(50)])
        full = lmdb_used_bytes(h.env)
        assert full - empty > 1_000_000  # the bodies, at least
        file_before = lmdb_file_bytes(h.env)
        h.ok("queue_purge", name="q")
        purged = lmdb_used_bytes(h.env)
        assert purged < empty + 100_000  # the pages were freed...
        assert lmdb_file_bytes(h.env) >= file_before  # ...while the file never shrinks
    finally:
        h.close()


def test_node_quota_logs_where_the_node_stands(tmp_path):
    env = DiskGuardedEnv(str(tmp_path / "lmdb"), sync=False)
    try:
        with structlog.testing.capture_logs() as logs:
            configured = node_quota(env, 123_456, 1 << 40)
            default = node_quota(env, None, 10 << 20)
        assert configured.quota_bytes == 123_456
        assert default.quota_bytes == int((10 << 20) * 0.9)  # the ceiling is the smaller
        started = [e for e in logs if e["event"] == "node.quota"]
        assert [e["configured"] for e in started] == [True, False]
        assert all("used_bytes" in e and "disk_free_bytes" in e for e in started)
    finally:
        env.close()


# ---------------------------------------------------------------- disk full


def _fill(env: DiskGuardedEnv) -> None:
    db = env.db("t")
    for i in range(10_000):
        env.write(lambda txn, i=i: txn.put(i.to_bytes(4, "big"), os.urandom(4000), db=db))


def test_map_full_at_the_ceiling_stops_with_one_clear_line(tmp_path):
    path = str(tmp_path / "lmdb")
    env = DiskGuardedEnv(path, sync=False, map_size=1 << 20, max_map_size=1 << 20)
    with structlog.testing.capture_logs() as logs, pytest.raises(DiskFull) as full:
        _fill(env)
    db = env.db("t")
    with pytest.raises(DiskFull):  # the next write fails the same way, silently
        env.write(lambda txn: txn.put(b"k", os.urandom(8000), db=db))
    critical = [e for e in logs if e["log_level"] == "critical"]
    assert [e["event"] for e in critical] == ["node.disk_full"]
    assert "--max-map-bytes" in critical[0]["error"] and str(1 << 20) in critical[0]["error"]
    assert "data is intact" in critical[0]["error"]
    assert isinstance(full.value.__cause__, lmdb.MapFullError)
    db = env.db("t")
    count = env.read(lambda txn: txn.stat(db)["entries"])
    env.close()
    # a larger ceiling opens the same data and takes writes again
    bigger = DiskGuardedEnv(path, sync=False, max_map_size=16 << 20)
    try:
        db = bigger.db("t")  # opened before read(): open_db runs its own transaction
        assert bigger.read(lambda txn: txn.stat(db)["entries"]) == count > 0
        bigger.write(lambda txn: txn.put(b"more", os.urandom(8000), db=db))
    finally:
        bigger.close()


@pytest.mark.parametrize(
    "exc",
    [lmdb.DiskError("mdb_txn_commit: No space left on device"), OSError(errno.ENOSPC, "full")],
)
def test_enospc_stops_with_one_clear_line(tmp_path, exc):
    env = DiskGuardedEnv(str(tmp_path / "lmdb"), sync=False)

    def write(_txn: Any) -> None:
        raise exc

    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(DiskFull) as full:
            env.write(write)
        assert "is full" in str(full.value) and "Free space" in str(full.value)
        assert [e["event"] for e in logs if e["log_level"] == "critical"] == ["node.disk_full"]
    finally:
        env.close()


class _FailingCommits:
    """Stands in for the lmdb.Environment: its write transactions fail at commit."""

    def __init__(self, env: Any, error: Exception) -> None:
        self._env, self._error = env, error

    def begin(self, **kw: Any) -> Any:
        txn, error = self._env.begin(**kw), self._error

        class Txn:
            def __getattr__(self, name: str) -> Any:
                return getattr(txn, name)

            def commit(self) -> None:
                txn.abort()
                raise error

            def abort(self) -> None:
                txn.abort()

        return Txn()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def test_a_short_write_on_an_almost_full_disk_is_a_full_disk(tmp_path, monkeypatch):
    """LMDB answers a short write (what a full disk gives) with EIO, not ENOSPC."""
    env = DiskGuardedEnv(str(tmp_path / "lmdb"), sync=False)
    db = env.db("t")
    real = env.env
    eio = lmdb.Error("mdb_txn_commit: Input/output error")

    def put(txn: Any) -> None:
        txn.put(b"k", b"v", db=db)

    def bad_put(_txn: Any) -> None:
        raise lmdb.Error("mdb_put: something of ours")

    try:
        env.env = _FailingCommits(real, eio)
        with pytest.raises(lmdb.Error) as plain:  # plenty of space: an I/O error stays one
            env.write(put)
        assert not isinstance(plain.value, DiskFull)
        almost_full = SimpleNamespace(free=LOW_DISK_FREE_BYTES - 1)
        monkeypatch.setattr("node.quota.shutil.disk_usage", lambda _path: almost_full)
        with pytest.raises(lmdb.Error) as ours:  # not the commit: not the disk
            env.write(bad_put)
        assert not isinstance(ours.value, DiskFull)
        with pytest.raises(DiskFull):
            env.write(put)
    finally:
        env.env = real
        env.close()
    reopened = DiskGuardedEnv(str(tmp_path / "lmdb"), sync=False)
    try:  # nothing of the failed commits landed
        db = reopened.db("t")
        assert reopened.read(lambda txn: txn.get(b"k", db=db)) is None
    finally:
        reopened.close()


def test_other_errors_pass_through_unchanged(tmp_path):
    env = DiskGuardedEnv(str(tmp_path / "lmdb"), sync=False)

    def write(_txn: Any) -> None:
        raise OSError(errno.EACCES, "denied")

    try:
        with pytest.raises(PermissionError):
            env.write(write)
    finally:
        env.close()


def test_disk_full_cause_finds_it_behind_the_driver_failure():
    full = DiskFull("full")
    try:
        try:
            raise full
        except DiskFull as exc:
            raise StorageError("storage step failed") from exc
    except StorageError as wrapped:
        assert disk_full_cause(wrapped) is full
    assert disk_full_cause(StorageError("other")) is None
    assert disk_full_cause(None) is None
