"""DataDir on real files in this process: the lock, the identity check, atomic writes, modes.

The same checks against real node processes are in test_data_dir_process.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from node.data_dir import (
    DataDir,
    DataDirError,
    DataDirLocked,
    IdentityMismatch,
    write_atomically,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `root`: (mtime_ns, mode, contents)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.stat()
        data = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(root))] = (st.st_mtime_ns, stat.S_IMODE(st.st_mode), data)
    return out


def _opened(path: Path, node_id: int = 1, cluster_id: str = "raftq") -> DataDir:
    d = DataDir(str(path), cluster_id=cluster_id, node_id=node_id)
    d.open()
    d.save_identity()
    return d


def test_fresh_dir_is_created_owner_only_with_a_new_incarnation(tmp_path: Path) -> None:
    path = tmp_path / "parent" / "node-1"
    d = DataDir(str(path), cluster_id="c1", node_id=1)
    with capture_logs() as logs:
        identity = d.open()
        assert not (path / "IDENTITY").exists()  # written once the Raft log accepted it
        d.save_identity()
    try:
        assert _mode(path) == 0o700
        assert _mode(path / "LOCK") == 0o600 and _mode(path / "IDENTITY") == 0o600
        assert (path / "LOCK").read_text().strip() == str(os.getpid())
        doc = json.loads((path / "IDENTITY").read_text())
        assert doc == {
            "format": 1,
            "cluster_id": "c1",
            "node_id": 1,
            "incarnation": identity.incarnation,
            "created_at": identity.created_at,
        }
        assert len(identity.incarnation) == 32 and int(identity.incarnation, 16) >= 0
        events = [e for e in logs if e["event"] == "node.new_incarnation"]
        assert len(events) == 1 and events[0]["reason"] == "fresh data dir"
        assert events[0]["incarnation"] == identity.incarnation
    finally:
        d.close()
    assert (path / "LOCK").read_text() == ""  # no pid named once released


def test_reopen_keeps_the_incarnation_while_lmdb_data_exists(tmp_path: Path) -> None:
    d = _opened(tmp_path)
    first = d.identity.incarnation
    d.close()
    (tmp_path / "lmdb").mkdir()
    (tmp_path / "lmdb" / "data.mdb").write_bytes(b"x")
    with capture_logs() as logs:
        d2 = _opened(tmp_path)
    d2.close()
    assert d2.identity.incarnation == first
    assert not [e for e in logs if e["event"] == "node.new_incarnation"]


def test_a_second_datadir_on_a_locked_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = _opened(tmp_path)
    before = _snapshot(tmp_path)
    other = DataDir(str(tmp_path), cluster_id="raftq", node_id=1)
    with pytest.raises(DataDirLocked) as err:
        other.open()
    assert err.value.holder_pid == os.getpid()
    assert str(tmp_path) in str(err.value) and f"pid {os.getpid()}" in str(err.value)
    assert not other.locked
    assert _snapshot(tmp_path) == before
    holder.close()
    other.open()  # free again once the holder let go
    other.close()


def test_the_lock_is_a_real_flock(tmp_path: Path) -> None:
    """Another open file description (as another process has) cannot take it meanwhile."""
    d = _opened(tmp_path)
    fd = os.open(tmp_path / "LOCK", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        d.close()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("node_id", "cluster_id", "needles"),
    [
        (2, "raftq", ["belongs to node 1 of cluster 'raftq'", "this is node 2 of cluster 'raftq'"]),
        (1, "other", ["belongs to node 1 of cluster 'raftq'", "this is node 1 of cluster 'other'"]),
    ],
)
def test_another_nodes_or_clusters_dir_is_refused_and_left_unchanged(
    tmp_path: Path, node_id: int, cluster_id: str, needles: list[str]
) -> None:
    _opened(tmp_path).close()
    (tmp_path / "lmdb").mkdir(mode=0o700)
    (tmp_path / "lmdb" / "data.mdb").write_bytes(b"node 1's log")
    os.chmod(tmp_path, 0o755)  # would be tightened if the dir were accepted
    before = _snapshot(tmp_path)
    d = DataDir(str(tmp_path), cluster_id=cluster_id, node_id=node_id)
    with pytest.raises(IdentityMismatch) as err:
        d.open()
    for needle in needles:
        assert needle in str(err.value)
    assert str(tmp_path) in str(err.value)
    assert not d.locked
    assert _snapshot(tmp_path) == before and _mode(tmp_path) == 0o755
    _opened(tmp_path).close()  # the lock was released: its own node still opens it


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (b'{"format": 1, "cluster_id": "raftq", "node_id": 1}', "incarnation is not 32 hex"),
        (
            b'{"format": 9, "cluster_id": "raftq", "node_id": "1", "incarnation": "'
            + b"0" * 32
            + b'", "created_at": "x"}',
            "format 9",
        ),
    ],
)
def test_a_bad_identity_file_is_a_clear_error(tmp_path: Path, content: bytes, needle: str) -> None:
    (tmp_path / "IDENTITY").write_bytes(content)
    d = DataDir(str(tmp_path), cluster_id="raftq", node_id=1)
    with pytest.raises(DataDirError) as err:
        d.open()
    message = str(err.value)
    assert needle in message and str(tmp_path / "IDENTITY") in message
    assert "remove only IDENTITY" in message  # says what to do
    assert not d.locked and (tmp_path / "IDENTITY").read_bytes() == content


def test_an_old_dir_with_lmdb_data_and_no_identity_is_adopted(tmp_path: Path) -> None:
    lmdb_dir = tmp_path / "lmdb"
    lmdb_dir.mkdir(parents=True)
    (lmdb_dir / "data.mdb").write_bytes(b"old data")
    (lmdb_dir / "lock.mdb").write_bytes(b"")
    for p in (tmp_path, lmdb_dir):
        os.chmod(p, 0o755)
    for p in lmdb_dir.iterdir():
        os.chmod(p, 0o644)
    with capture_logs() as logs:
        d = _opened(tmp_path, node_id=3)
    d.close()
    events = {e["event"]: e for e in logs}
    assert "node.data_dir_adopted" in events and "node.new_incarnation" not in events
    assert json.loads((tmp_path / "IDENTITY").read_text())["node_id"] == 3
    assert (lmdb_dir / "data.mdb").read_bytes() == b"old data"
    assert _mode(tmp_path) == _mode(lmdb_dir) == 0o700  # tightened, and said so
    assert _mode(lmdb_dir / "data.mdb") == _mode(lmdb_dir / "lock.mdb") == 0o600
    tightened = {e["path"] for e in logs if e["event"] == "node.data_dir_tightened"}
    assert tightened == {str(tmp_path), str(lmdb_dir), *(str(p) for p in lmdb_dir.iterdir())}
    again = _opened(tmp_path, node_id=3)
    again.close()
    assert again.identity == d.identity


def test_identity_without_lmdb_data_gets_a_new_incarnation(tmp_path: Path) -> None:
    """The node's Raft state is gone (lmdb/ wiped): it is not the same incarnation."""
    first = _opened(tmp_path)
    first.close()
    with capture_logs() as logs:
        second = _opened(tmp_path)
    second.close()
    assert second.identity.incarnation != first.identity.incarnation
    (event,) = [e for e in logs if e["event"] == "node.new_incarnation"]
    assert event["previous_incarnation"] == first.identity.incarnation
    assert event["log_level"] == "warning" and "state is gone" in event["reason"]


def test_a_file_where_the_dir_should_be_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node-1"
    path.write_text("not a dir")
    with pytest.raises(DataDirError, match="node-1"):
        DataDir(str(path), cluster_id="raftq", node_id=1).open()


def test_write_atomically_replaces_whole_and_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "IDENTITY"
    target.write_bytes(b"old")
    (tmp_path / "IDENTITY.tmp").write_bytes(b"left by a crash")
    write_atomically(str(target), b"new contents")
    assert target.read_bytes() == b"new contents" and _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IDENTITY"]


def test_write_atomically_keeps_the_old_file_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "IDENTITY"
    target.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_atomically(str(target), b"new")
    assert target.read_bytes() == b"old"
