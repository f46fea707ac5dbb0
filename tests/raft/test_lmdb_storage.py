"""LmdbStorage on real LMDB files: appends, truncation, reopen, corruption, growth, kill -9."""

from __future__ import annotations

import itertools
import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from raft.errors import Compacted, StorageCorruption, StorageError, Unavailable
from raft.lmdb_env import LmdbEnv
from raft.lmdb_storage import (
    LOG_DB,
    META_DB,
    LmdbStorage,
    MetaCorruption,
    encode_record,
    index_key,
)
from raft.messages import ConfState, Entry, EntryKind, HardState
from raft.storage import DurableStorage, LogStorage
from tests.raft.storage_writer import payload_matches

WRITER = str(Path(__file__).with_name("storage_writer.py"))


def ents(lo: int, hi: int, term: int, size: int = 100) -> list[Entry]:
    """Entries [lo, hi) of `term` whose payload names index and term."""
    return [
        Entry(i, term, EntryKind.NORMAL, f"{i}/{term}".encode().ljust(size, b"."))
        for i in range(lo, hi)
    ]


class Opened:
    """Opens LmdbEnv + LmdbStorage on one path and closes whatever is still open."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.env: LmdbEnv | None = None

    def open(self, **kwargs: object) -> LmdbStorage:
        self.close()
        env_kwargs = {k: kwargs.pop(k) for k in ("map_size",) if k in kwargs}
        self.env = LmdbEnv(self.path, **env_kwargs)  # type: ignore[arg-type]
        try:
            return LmdbStorage(self.env, **kwargs)  # type: ignore[arg-type]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def raw_write(self, fn) -> None:  # type: ignore[no-untyped-def]
        """Write with plain lmdb, bypassing LmdbStorage (to plant corruption)."""
        self.close()
        env = lmdb.open(self.path, max_dbs=64, subdir=True)
        try:
            with env.begin(write=True) as txn:
                fn(
                    txn,
                    env.open_db(LOG_DB.encode(), txn=txn),
                    env.open_db(META_DB.encode(), txn=txn),
                )
        finally:
            env.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Opened]:
    opened = Opened(tmp_path / "env")
    try:
        yield opened
    finally:
        opened.close()


def seeded(store: Opened, n: int = 10, term: int = 1, commit: int = 0) -> LmdbStorage:
    s = store.open(initial_conf=ConfState((1, 2, 3)))
    s.save(HardState(term=term, vote=1, commit=commit), ents(1, n + 1, term))
    return s


# ---------------------------------------------------------------- basics


def test_empty_log_sentinel_and_bounds(store: Opened) -> None:
    s = store.open(initial_conf=ConfState((1, 2, 3), (4,)))
    assert isinstance(s, LogStorage) and isinstance(s, DurableStorage)
    assert s.initial_state() == (HardState(), ConfState((1, 2, 3), (4,)))
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.term(0) == 0
    assert s.entries(1, 1) == []
    with pytest.raises(Unavailable):
        s.term(1)
    with pytest.raises(Unavailable):
        s.entries(1, 2)


def test_append_read_and_reopen_identical(store: Opened) -> None:
    s = seeded(store, 10, term=1)
    s.save(HardState(term=2, vote=3, commit=8), ents(11, 21, 2))
    written = s.entries(1, 21)
    assert [e.index for e in written] == list(range(1, 21))
    assert [s.term(i) for i in (0, 1, 10, 11, 20)] == [0, 1, 1, 2, 2]
    assert written == ents(1, 11, 1) + ents(11, 21, 2)

    s = store.open(initial_conf=ConfState((9,)))  # a stored conf wins over initial_conf
    assert s.initial_state() == (HardState(term=2, vote=3, commit=8), ConfState((1, 2, 3)))
    assert (s.first_index(), s.last_index(), s.term(20)) == (1, 20, 2)
    assert s.entries(1, 21) == written


def test_hard_state_alone_is_durable(store: Opened) -> None:
    s = store.open()
    s.save(HardState(term=5, vote=2), [])
    s = store.open()
    assert s.initial_state()[0] == HardState(term=5, vote=2, commit=0)


def test_save_is_one_transaction_for_hard_state_truncation_and_1000_entries(store: Opened) -> None:
    s = seeded(store, 10)
    assert store.env is not None
    before = store.env.env.info()["last_txnid"]
    s.save(HardState(term=2, vote=2, commit=3), ents(5, 1005, 2))
    assert store.env.env.info()["last_txnid"] == before + 1
    assert (s.last_index(), s.term(1004), s.term(4)) == (1004, 2, 1)


def test_overwrite_suffix_truncates_everything_after(store: Opened) -> None:
    s = seeded(store, 10, term=1, commit=3)
    s.save(HardState(term=2, vote=2, commit=3), ents(6, 8, 2))
    assert (s.last_index(), s.term(7), s.term(5)) == (7, 2, 1)
    with pytest.raises(Unavailable):
        s.term(8)
    assert s.entries(1, 8) == ents(1, 6, 1) + ents(6, 8, 2)
    s = store.open()
    assert s.last_index() == 7
    assert s.entries(5, 8) == ents(5, 6, 1) + ents(6, 8, 2)
    assert store.env is not None
    keys = store.env.read(
        lambda txn: list(txn.cursor(db=store.env.db(LOG_DB)).iternext(values=False))
    )
    assert keys == [index_key(i) for i in range(1, 8)]


def test_overwrite_of_whole_log_and_of_same_committed_entries(store: Opened) -> None:
    s = seeded(store, 5, term=1, commit=2)
    # Re-sending committed entries with their own term is allowed (identical content).
    s.save(HardState(term=2, vote=0, commit=2), ents(1, 3, 1) + ents(3, 4, 2))
    assert (s.last_index(), s.term(3)) == (3, 2)


@pytest.mark.parametrize(
    ("hard_state", "entries", "match"),
    [
        (None, ents(12, 13, 1), "gap"),
        (None, [*ents(11, 12, 1), *ents(13, 14, 1)], "non-consecutive"),
        (HardState(term=3, vote=1, commit=3), [*ents(11, 12, 3), *ents(12, 13, 2)], "below"),
        (None, ents(11, 12, 7), "above the hard state term"),
        (HardState(term=1, vote=1, commit=11), [Entry(11, 1, EntryKind.NORMAL, "s")], "bytes"),  # type: ignore[arg-type]
        (None, [Entry(11, 0, EntryKind.NORMAL, b"")], "positive"),
        (None, [(11, 1, 0, b"")], "not an Entry"),
        (None, [Entry(11.0, 1, EntryKind.NORMAL, b"")], "positive integer"),  # type: ignore[arg-type]
        (HardState(term=0, vote=1, commit=0), [], "term would go back"),
        (HardState(term=1, vote=2, commit=0), [], "vote in term 1"),
        (HardState(term=1, vote=1, commit=2), [], "commit would go back"),
        (HardState(term=1, vote=1, commit=11), [], "beyond last index"),
        (HardState(term=2, vote=0, commit=3), ents(3, 4, 2), "committed"),
        (HardState(term=-1, vote=0, commit=3), [], "unsigned"),
    ],
)
def test_bad_save_is_refused_and_changes_nothing(
    store: Opened, hard_state: HardState | None, entries: list[Entry], match: str
) -> None:
    s = seeded(store, 10, term=1, commit=3)
    with pytest.raises(StorageError, match=match):
        s.save(hard_state, entries)
    for reopen in (False, True):
        if reopen:
            s = store.open()
        assert s.initial_state()[0] == HardState(term=1, vote=1, commit=3)
        assert (s.last_index(), s.term(10)) == (10, 1)
        assert s.entries(1, 11) == ents(1, 11, 1)


def test_entries_edges_and_max_bytes(store: Opened) -> None:
    s = seeded(store, 10)  # each entry: 100 data bytes -> size() 124
    one = ents(1, 2, 1)[0].size()
    assert s.entries(3, 3) == []
    assert [e.index for e in s.entries(3, 11, max_bytes=0)] == [3]  # always at least one
    assert [e.index for e in s.entries(3, 11, max_bytes=3 * one)] == [3, 4, 5]
    assert [e.index for e in s.entries(3, 11, max_bytes=4 * one - 1)] == [3, 4, 5]
    assert [e.index for e in s.entries(3, 11, max_bytes=10**9)] == list(range(3, 11))
    assert [e.index for e in s.entries(10, 11)] == [10]
    with pytest.raises(Unavailable):
        s.entries(3, 12)
    with pytest.raises(Compacted):
        s.entries(0, 2)
    with pytest.raises(ValueError):
        s.entries(5, 4)
    with pytest.raises(Unavailable):
        s.term(11)


# ---------------------------------------------------------------- corruption


def _flip_byte(index: int, offset: int):  # type: ignore[no-untyped-def]
    def fn(txn, log_db, _meta):  # type: ignore[no-untyped-def]
        value = bytearray(txn.get(index_key(index), db=log_db))
        value[offset] ^= 0x40
        txn.put(index_key(index), bytes(value), db=log_db)

    return fn


@pytest.mark.parametrize("offset", [0, 5, -1])  # in the CRC, the term, the payload
def test_flipped_byte_is_named_at_open(store: Opened, offset: int) -> None:
    seeded(store, 10)
    store.raw_write(_flip_byte(7, offset))
    with pytest.raises(StorageCorruption, match="crc mismatch") as exc:
        store.open(verify_all=True)
    assert exc.value.index == 7
    with pytest.raises(StorageCorruption) as exc:  # default tail window covers it too
        store.open()
    assert exc.value.index == 7


def test_corruption_outside_verified_tail_is_caught_on_read(store: Opened) -> None:
    seeded(store, 10)
    store.raw_write(_flip_byte(3, -1))
    s = store.open(verify_tail_entries=2)  # only 9 and 10 verified at open
    with pytest.raises(StorageCorruption) as exc:
        s.entries(1, 11)
    assert exc.value.index == 3
    with pytest.raises(StorageCorruption):
        s.term(3)
    assert s.entries(4, 11) == ents(4, 11, 1)


@pytest.mark.parametrize(
    ("planted", "reason"),
    [
        (lambda good, other: good[:3], "shorter than its header"),
        (lambda good, other: b"", "shorter than its header"),
        (lambda good, other: good[:-10], "crc mismatch"),  # torn write
        (lambda good, other: other, "crc mismatch"),  # a valid record under the wrong key
        (lambda good, other: encode_record(index_key(6), "not a list"), "array"),
        (lambda good, other: encode_record(index_key(6), [1, 9, b"x"]), "kind"),
        (lambda good, other: encode_record(index_key(6), [True, 0, b"x"]), "term"),
        (lambda good, other: encode_record(index_key(6), [1, 0, "str"]), "bytes"),
        (lambda good, other: good[:4] + b"\xc1garbage", "crc mismatch"),
    ],
)
def test_truncated_or_garbage_record_is_named(store: Opened, planted, reason: str) -> None:  # type: ignore[no-untyped-def]
    seeded(store, 10)

    def fn(txn, log_db, _meta):  # type: ignore[no-untyped-def]
        good = txn.get(index_key(6), db=log_db)
        other = txn.get(index_key(5), db=log_db)
        txn.put(index_key(6), planted(good, other), db=log_db)

    store.raw_write(fn)
    with pytest.raises(StorageCorruption, match=reason) as exc:
        store.open(verify_all=True)
    assert exc.value.index == 6


def test_hole_and_lost_tail_are_startup_errors(store: Opened) -> None:
    seeded(store, 10, commit=10)
    store.raw_write(lambda txn, log_db, _m: txn.delete(index_key(5), db=log_db))
    with pytest.raises(StorageCorruption, match="missing") as exc:
        store.open()
    assert exc.value.index == 5

    store.raw_write(
        lambda txn, log_db, _m: txn.put(index_key(5), txn.get(index_key(4), db=log_db), db=log_db)
    )
    with pytest.raises(StorageCorruption):
        store.open(verify_all=True)  # the copied record fails the key-bound CRC


def test_record_missing_under_an_open_storage_is_classified(store: Opened) -> None:
    """A read whose snapshot lacks an index the cached bounds promise: a hole is
    corruption; a missing tail or head is a truncation/compaction that raced the read."""
    s = seeded(store, 10)
    s._tail = (0, (), 0)  # read through LMDB: the in-memory tail would answer otherwise
    assert store.env is not None
    log_db = store.env.db(LOG_DB)

    def delete(*indexes: int) -> None:
        store.env.write(lambda txn: [txn.delete(index_key(i), db=log_db) for i in indexes])  # type: ignore[union-attr]

    delete(5)
    with pytest.raises(StorageCorruption) as exc:
        s.entries(1, 11)
    assert exc.value.index == 5
    with pytest.raises(StorageCorruption):
        s.term(5)
    delete(9, 10)
    with pytest.raises(Unavailable):
        s.entries(8, 11)
    with pytest.raises(Unavailable):
        s.term(9)
    delete(1, 2)
    with pytest.raises(Compacted):
        s.entries(1, 3)
    assert s.entries(3, 5) == ents(3, 5, 1)


def test_truncated_tail_below_commit_is_a_startup_error(store: Opened) -> None:
    seeded(store, 10, commit=9)

    def drop_tail(txn, log_db, _meta):  # type: ignore[no-untyped-def]
        for i in (8, 9, 10):
            txn.delete(index_key(i), db=log_db)

    store.raw_write(drop_tail)
    with pytest.raises(StorageCorruption, match="commit 9") as exc:
        store.open()
    assert exc.value.index == 8


def test_corrupt_hard_state_is_a_startup_error(store: Opened) -> None:
    seeded(store, 3)

    def fn(txn, _log, meta_db):  # type: ignore[no-untyped-def]
        value = bytearray(txn.get(b"hard_state", db=meta_db))
        value[-1] ^= 1
        txn.put(b"hard_state", bytes(value), db=meta_db)

    store.raw_write(fn)
    with pytest.raises(MetaCorruption, match="hard_state") as exc:
        store.open()
    assert exc.value.key == "hard_state"

    store.raw_write(lambda txn, _l, meta_db: txn.delete(b"hard_state", db=meta_db))
    with pytest.raises(MetaCorruption, match="missing"):
        store.open()


def test_entry_term_above_hard_state_term_is_a_startup_error(store: Opened) -> None:
    seeded(store, 3, term=2)
    store.raw_write(
        lambda txn, _l, meta_db: txn.put(
            b"hard_state", encode_record(b"hard_state", [1, 0, 0]), db=meta_db
        )
    )
    with pytest.raises(StorageCorruption, match="above the hard state term") as exc:
        store.open()
    assert exc.value.index == 3


# ---------------------------------------------------------------- env sharing, identity


def test_only_raft_sub_databases_and_state_machine_data_untouched(store: Opened) -> None:
    s = store.open()
    assert store.env is not None
    queue_db = store.env.db("queue.messages")
    store.env.write(lambda txn: txn.put(b"k", b"v", db=queue_db))
    s.save(HardState(term=1, vote=1), ents(1, 50, 1))
    s.save(HardState(term=2, vote=1), ents(10, 12, 2))
    s.compact(1)
    names = store.env.read(lambda txn: list(txn.cursor().iternext(values=False)))
    assert sorted(names) == [b"queue.messages", b"raft.log", b"raft.meta"]
    assert store.env.read(lambda txn: txn.get(b"k", db=queue_db)) == b"v"


def test_identity_is_stored_and_checked(store: Opened) -> None:
    s = store.open(cluster_id="c1", node_id=2)
    assert (s.cluster_id, s.node_id) == ("c1", 2)
    s = store.open()
    assert (s.cluster_id, s.node_id) == ("c1", 2)
    with pytest.raises(StorageError, match="belongs to node 2"):
        store.open(node_id=3)
    with pytest.raises(StorageError, match="belongs to cluster 'c1'"):
        store.open(cluster_id="c2")


def test_closed_storage_refuses_writes(store: Opened) -> None:
    s = seeded(store, 2)
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.save(HardState(term=1, vote=1), ents(3, 4, 1))


# ---------------------------------------------------------------- compaction


def test_compact_keeps_boundary_term_and_survives_reopen(store: Opened) -> None:
    s = seeded(store, 10, term=1, commit=8)
    s.save(HardState(term=2, vote=1, commit=8), ents(9, 13, 2))  # 9..12 now term 2
    with pytest.raises(StorageError, match="not committed"):
        s.compact(10)
    s.compact(1)  # no-op
    s.compact(6)
    assert (s.first_index(), s.last_index(), s.term(5), s.snapshot_point()) == (6, 12, 1, (5, 1))
    with pytest.raises(Compacted):
        s.term(4)
    with pytest.raises(Compacted):
        s.entries(5, 7)
    with pytest.raises(Compacted):
        s.compact(3)
    s = store.open(verify_all=True)
    assert (s.first_index(), s.last_index(), s.term(5)) == (6, 12, 1)
    assert s.entries(6, 13) == ents(6, 9, 1) + ents(9, 13, 2)
    # Appends after compaction; entries at/below the compaction point are skipped.
    s.save(HardState(term=2, vote=1, commit=12), ents(4, 14, 1)[:2] + ents(13, 14, 2))
    assert (s.last_index(), s.entries(13, 14)) == (13, ents(13, 14, 2))


def test_compact_whole_log_then_append(store: Opened) -> None:
    s = seeded(store, 5, term=3, commit=5)
    s.compact(6)
    assert (s.first_index(), s.last_index(), s.term(5)) == (6, 5, 3)
    assert s.entries(6, 6) == []
    s = store.open()
    assert (s.first_index(), s.last_index(), s.term(5)) == (6, 5, 3)
    s.save(None, ents(6, 8, 3))
    assert s.entries(6, 8) == ents(6, 8, 3)
    with pytest.raises(Unavailable):
        s.compact(9)


# ---------------------------------------------------------------- map growth


def test_map_grows_from_64k_without_dropping_entries(store: Opened) -> None:
    s = store.open(map_size=64 << 10)
    assert store.env is not None
    s.save(HardState(term=1, vote=1), [])
    next_index = 1
    for _ in range(40):  # 40 x 16 x 8 KiB = 5 MiB
        batch = ents(next_index, next_index + 16, 1, size=8 << 10)
        s.save(None, batch)
        next_index += 16
    assert store.env.map_size_bytes() >= 4 << 20
    s = store.open(map_size=64 << 10, verify_all=True)
    assert s.last_index() == 640
    got = s.entries(1, 641)
    assert got == ents(1, 641, 1, size=8 << 10)


def test_map_growth_is_safe_with_concurrent_readers(store: Opened) -> None:
    s = store.open(map_size=64 << 10)
    assert store.env is not None
    s.save(HardState(term=1, vote=1), ents(1, 2, 1))
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                last = s.last_index()
                got = s.entries(max(1, last - 3), last + 1)
                assert got[-1].index == last and got[0].data.startswith(f"{got[0].index}/".encode())
                reads[0] += 1
                # Paced: two pure-Python readers spinning without a pause starve the writer
                # of the GIL (CPython's convoy effect: py-spy shows it waiting to reacquire
                # the GIL inside txn.abort(), not in the read gate). Real readers are paced.
                time.sleep(0.0005)
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for start in range(2, 2 + 30 * 8, 8):
            s.save(None, ents(start, start + 8, 1, size=16 << 10))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[0]
    assert reads[0] > 0
    assert store.env.map_size_bytes() >= 4 << 20
    assert s.entries(1, s.last_index() + 1) == ents(1, 2, 1) + ents(2, 242, 1, size=16 << 10)


# ---------------------------------------------------------------- kill -9


def _read_until_lines(proc: subprocess.Popen[bytes], want_lines: int, max_s: float) -> bytes:
    """What the child printed, once it printed `want_lines` lines or `max_s` passed."""
    assert proc.stdout is not None
    out = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + max_s
    try:
        while out.count(b"\n") < want_lines and time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break  # child exited
            out += chunk
    finally:
        sel.close()
    return out


@pytest.mark.slow
def test_kill_9_never_loses_a_saved_entry(tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    rng = random.Random(20261128)
    prev_commit = 0
    for round_no in range(4):  # each round reopens what the previous kill left
        err_path = tmp_path / f"stderr-{round_no}.txt"
        with open(err_path, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, WRITER, str(env_dir), str(rng.randrange(1 << 30)), "1000000"],
                stdout=subprocess.PIPE,
                stderr=err,
            )
            try:
                out = _read_until_lines(proc, rng.randint(5, 80), max_s=20.0)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                assert proc.stdout is not None
                out += proc.stdout.read()  # lines printed before the kill landed count too
            finally:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                if proc.stdout is not None:
                    proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, err_path.read_text()
        whole_lines = out.decode().split("\n")[:-1]  # the last piece is "" or torn
        assert whole_lines, "writer printed nothing before the kill"
        last_index, term, commit = (int(x) for x in whole_lines[-1].split())

        env = LmdbEnv(str(env_dir))
        try:
            s = LmdbStorage(env, verify_all=True)
            hs, conf = s.initial_state()
            assert conf == ConfState((1,))
            assert s.last_index() >= last_index
            assert hs.term >= term and hs.vote == 1
            assert prev_commit <= commit <= hs.commit <= s.last_index()
            got = s.entries(1, s.last_index() + 1)
            assert [e.index for e in got] == list(range(1, s.last_index() + 1))
            assert all(payload_matches(e) for e in got)
            assert all(a.term <= b.term for a, b in itertools.pairwise(got))
            assert got[last_index - 1].term >= term
            assert got[-1].term <= hs.term
            prev_commit = hs.commit
        finally:
            env.close()


# ---------------------------------------------------------------- model-based


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_match_a_list_model(store: Opened, seed: int) -> None:
    """Appends, suffix overwrites, commits, compactions and reopens against a plain list."""
    rng = random.Random(seed)
    s = store.open()
    model: dict[int, Entry] = {}
    snap = (0, 0)  # compaction point (index, term)
    term, commit = 1, 0
    s.save(HardState(term=term, vote=1), [])
    for _ in range(40):
        last = max(model, default=snap[0])
        op = rng.random()
        if op < 0.55:  # append, sometimes overwriting an uncommitted suffix
            start = last + 1
            if rng.random() < 0.3 and last > max(commit, snap[0]):
                term += 1
                start = rng.randint(max(commit, snap[0]) + 1, last)
            batch = ents(start, start + rng.randint(1, 20), term, size=rng.randint(1, 300))
            for i in [i for i in model if i >= start]:
                del model[i]
            model.update({e.index: e for e in batch})
            s.save(HardState(term=term, vote=1, commit=commit), batch)
        elif op < 0.75 and last > commit:
            commit = rng.randint(commit + 1, last)
            s.save(HardState(term=term, vote=1, commit=commit), [])
        elif op < 0.85 and commit > snap[0]:
            new_first = rng.randint(snap[0] + 1, commit + 1)
            if new_first > snap[0] + 1:
                snap = (new_first - 1, s.term(new_first - 1))
                for i in [i for i in model if i < new_first]:
                    del model[i]
            s.compact(new_first)
        elif op < 0.95:
            s = store.open(verify_all=rng.random() < 0.5)
        lo, hi = snap[0] + 1, max(model, default=snap[0]) + 1
        assert (s.first_index(), s.last_index()) == (lo, hi - 1)
        assert s.initial_state()[0] == HardState(term=term, vote=1, commit=commit)
        assert s.term(snap[0]) == snap[1]
        assert s.entries(lo, hi) == [model[i] for i in range(lo, hi)]
        if hi - lo > 2:
            a = rng.randint(lo, hi - 1)
            b = rng.randint(a, hi)
            cap = rng.randint(0, 2000)
            got = s.entries(a, b, max_bytes=cap)
            want = [model[i] for i in range(a, b)]
            assert got == want[: len(got)]
            if a < b:
                assert len(got) >= 1
                assert len(got) == 1 or sum(e.size() for e in got) <= cap
                if len(got) < len(want):
                    assert sum(e.size() for e in want[: len(got) + 1]) > cap


def test_map_resize_waits_for_running_reads(store: Opened) -> None:
    """The gate holds a resize back until a read transaction in another thread ends."""
    store.open(map_size=64 << 10)
    env = store.env
    assert env is not None
    in_read = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def long_read(_txn: lmdb.Transaction) -> None:
        in_read.set()
        release.wait(10)
        order.append("read done")

    t = threading.Thread(target=env.read, args=(long_read,))
    t.start()
    try:
        assert in_read.wait(10)
        grower = threading.Thread(target=lambda: (env._resize(grow=True), order.append("grown")))
        grower.start()
        grower.join(0.2)
        assert grower.is_alive() and order == []  # blocked behind the open read
        release.set()
        grower.join(10)
    finally:
        release.set()
        t.join(10)
    assert order == ["read done", "grown"]
    assert env.map_size_bytes() == 128 << 10


def test_env_refuses_nested_writes_instead_of_deadlocking(store: Opened) -> None:
    store.open()
    env = store.env
    assert env is not None
    with pytest.raises(RuntimeError, match="inside write"):
        env.write(lambda _txn: env.write(lambda _t: None))
    with pytest.raises(RuntimeError, match="before write"):
        env.write(lambda _txn: env.db("queue.new"))
    handle = env.db("queue.new")
    env.write(lambda txn: txn.put(b"k", b"v", db=env.db("queue.new")))
    assert env.read(lambda txn: txn.get(b"k", db=handle)) == b"v"


# ---------------------------------------------------------------- with the real core


class _ReopeningStorage:
    """LmdbStorage for the simulator: a crash closes the env and reopens it from disk."""

    def __init__(self, path: str, voters: tuple[int, ...]) -> None:
        self.path, self.voters = path, voters
        self.env = LmdbEnv(path, sync=False)  # process crash, not power loss: no fsync needed
        self.inner = LmdbStorage(self.env, initial_conf=ConfState(voters), verify_all=True)

    def crash_copy(self) -> _ReopeningStorage:
        self.env.close()
        return _ReopeningStorage(self.path, self.voters)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("seed", range(8))
def test_real_core_under_simulated_faults_never_trips_a_storage_check(
    tmp_path: Path, seed: int
) -> None:
    """The core's Ready stream (votes, commits, suffix overwrites, crash-restarts,
    compaction and snapshot installs) meets every invariant save() enforces, and every
    restart passes the full open-time scan."""
    from raft.simulation import SimParams, Simulation

    ids = (1, 2, 3)

    def factory(node_id: int) -> _ReopeningStorage:
        return _ReopeningStorage(str(tmp_path / str(node_id)), ids)

    sim = Simulation(SimParams(seed=seed, nodes=3), storage_factory=factory)
    sim.driver_options["compact_every"] = 12 if seed % 2 else 0  # half of them compact
    try:
        result = sim.run()
        logs = []
        for node in sim.nodes.values():
            reopened = node.storage.crash_copy()  # full verified scan of what is on disk
            node.storage = reopened
        first = max(node.storage.first_index() for node in sim.nodes.values())
        for node in sim.nodes.values():
            upto = min(result.commit_index, node.storage.last_index())
            logs.append(node.storage.entries(first, upto + 1) if upto >= first else [])
    finally:
        for node in sim.nodes.values():
            node.storage.env.close()
    assert result.proposals_acked > 0 and result.commit_index > 0
    shortest = min(len(x) for x in logs)
    assert logs[0][:shortest] == logs[1][:shortest] == logs[2][:shortest]


# ---------------------------------------------------------------- in-memory tail


def test_tail_cache_answers_exactly_what_lmdb_holds(store: Opened, monkeypatch) -> None:
    """Saves with overwrites and a small cache: every read equals a cold read from disk."""
    import random

    from raft import lmdb_storage

    monkeypatch.setattr(lmdb_storage, "TAIL_CACHE_ENTRIES", 40)
    monkeypatch.setattr(lmdb_storage, "TAIL_CACHE_BYTES", 6000)
    rng = random.Random(7)
    s = store.open(initial_conf=ConfState((1, 2, 3)))
    term = 1
    s.save(HardState(term=1, vote=1), [])
    for _ in range(120):
        last = s.last_index()
        if last > 5 and rng.random() < 0.2:  # overwrite a suffix in a new term
            term += 1
            start = rng.randint(max(1, last - 8), last)
        else:
            start = last + 1
        batch = ents(start, start + rng.randint(1, 12), term, size=rng.choice([10, 100, 900]))
        s.save(HardState(term=term, vote=1), batch)
        first, cached, total = s._tail
        assert len(cached) <= 40 and (total <= 6000 or len(cached) == 1)
        assert total == sum(e.size() for e in cached)
        assert first + len(cached) == s.last_index() + 1
    warm = s
    stored = warm.entries(1, warm.last_index() + 1)
    cold_lo = max(1, warm.last_index() - 60)
    checks = [
        (lo, hi, mb)
        for lo in range(cold_lo, warm.last_index() + 1, 3)
        for hi in (lo + 1, warm.last_index() + 1)
        for mb in (None, 0, 250, 5000)
    ]
    warm_answers = [warm.entries(lo, hi, mb) for lo, hi, mb in checks]
    warm_terms = [warm.term(i) for i in range(1, warm.last_index() + 1)]
    cold = store.open()  # a fresh open has an empty cache: everything comes from LMDB
    assert cold._tail[1] == ()
    assert cold.entries(1, cold.last_index() + 1) == stored
    assert [cold.entries(lo, hi, mb) for lo, hi, mb in checks] == warm_answers
    assert [cold.term(i) for i in range(1, cold.last_index() + 1)] == warm_terms
