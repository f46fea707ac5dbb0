"""A node's data directory: exclusive use, whose it is, and owner-only files.

Why this exists: LMDB lets several processes open one environment, so nothing stopped two
raftq processes from writing one Raft log, and a node accepted any node's data dir (one
copied from a peer, or the wrong `--data-dir`). Either one can make a node vote twice or
claim entries it never stored. So before LMDB is opened, `DataDir.open`:

- takes an exclusive, non-blocking `flock` on `<data_dir>/LOCK`, held for the life of the
  process (the kernel drops it when the process dies, so a crash leaves no stale lock),
  and writes the holder's pid into it so a refused second process can name it;
- reads `<data_dir>/IDENTITY` (JSON: cluster_id, node_id, incarnation, created_at) and
  refuses a dir of another cluster or node, naming both;
- makes the dir owner-only (0o700; LMDB files 0o600), tightening an existing one we own.

The identity is written (atomically: temp file, fsync, rename, fsync of the dir) by
`DataDir.save_identity`, called once the Raft log has accepted the node too, so a dir
that the node refuses is never stamped with the refused identity.

The incarnation is 16 random bytes minted whenever the node starts without its durable
Raft state (a fresh dir, or an IDENTITY left behind by a wiped `lmdb/`): it names "this
copy of the node's memory", which is what a node that lost its disk must not pretend to
still be. A dir written by an older raftq (LMDB data, no IDENTITY) keeps its data and
gets an IDENTITY, with one incarnation from then on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger("node.data_dir")

LOCK_FILE = "LOCK"
IDENTITY_FILE = "IDENTITY"
LMDB_SUBDIR = "lmdb"
LMDB_DATA_FILE = "data.mdb"  # its presence means the node's Raft state exists
DIR_MODE = 0o700
FILE_MODE = 0o600
IDENTITY_FORMAT = 1
#: `python -m node` exits with this code when it refuses its data dir (in use by another
#: process, another node's or cluster's, unreadable IDENTITY): restarting will not help
#: until an operator fixes the dir or the flags.
EXIT_DATA_DIR_REFUSED = 3

_INCARNATION = re.compile(r"[0-9a-f]{32}")
_IDENTITY_REPAIR = (
    "restore it from a backup of this dir; or, if the lmdb/ beside it is surely this node's, "
    "remove only IDENTITY and the node writes a new one (LMDB's own record of the node and "
    "cluster id is still checked). Do not wipe the dir: a node that forgets its Raft state "
    "can vote twice in one term"
)


class DataDirError(Exception):
    """The node must not use this data dir; the message says why and names the dir."""


class DataDirLocked(DataDirError):
    """Another process (or another DataDir of this one) holds the dir's LOCK."""

    def __init__(self, path: str, holder_pid: int | None) -> None:
        self.path = path
        self.holder_pid = holder_pid
        who = f"pid {holder_pid}" if holder_pid else "a process whose pid is not recorded yet"
        super().__init__(
            f"data dir {path} is in use by another raftq process ({who}); "
            "two processes on one data dir would corrupt the node's Raft log: stop that "
            "process or give this one its own --data-dir"
        )


class IdentityMismatch(DataDirError):
    """The dir's IDENTITY names another cluster or node than this process was started as."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What `<data_dir>/IDENTITY` holds."""

    cluster_id: str
    node_id: int
    incarnation: str  # 32 hex digits, random
    created_at: str  # ISO 8601, UTC

    @classmethod
    def new(cls, cluster_id: str, node_id: int) -> Identity:
        return cls(
            cluster_id=cluster_id,
            node_id=node_id,
            incarnation=secrets.token_hex(16),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def to_json(self) -> bytes:
        return (json.dumps({"format": IDENTITY_FORMAT, **asdict(self)}, indent=1) + "\n").encode()


def parse_identity(path: str, raw: bytes) -> Identity:
    """Decode an IDENTITY file's bytes; DataDirError naming the file if it is not one."""
    try:
        doc: Any = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataDirError(f"{path} is not valid JSON ({exc}); {_IDENTITY_REPAIR}") from None
    if not isinstance(doc, dict):
        raise DataDirError(f"{path} is not a JSON object; {_IDENTITY_REPAIR}")
    problems = []
    if doc.get("format") != IDENTITY_FORMAT:
        problems.append(f"format {doc.get('format')!r} (this build reads {IDENTITY_FORMAT})")
    if type(doc.get("cluster_id")) is not str:
        problems.append("cluster_id is not a string")
    node_id = doc.get("node_id")
    if type(node_id) is not int or node_id <= 0:
        problems.append("node_id is not a positive integer")
    if type(doc.get("incarnation")) is not str or not _INCARNATION.fullmatch(doc["incarnation"]):
        problems.append("incarnation is not 32 hex digits")
    if type(doc.get("created_at")) is not str:
        problems.append("created_at is not a string")
    if problems:
        raise DataDirError(
            f"{path} is not a raftq identity ({'; '.join(problems)}); {_IDENTITY_REPAIR}"
        )
    return Identity(doc["cluster_id"], node_id, doc["incarnation"], doc["created_at"])


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in `path` durable (POSIX needs the dir fsynced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new one.

    Temp file in the same dir (created with `mode`), fsync, rename over `path`, fsync the
    dir: without the first fsync a crash can leave the new name on empty contents, without
    the last one the rename itself can be lost.
    """
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a crash mid-write; only the lock holder writes here
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


class DataDir:
    """Exclusive, identity-checked use of one node's data directory.

    Use: `open()` before opening LMDB (lock, identity check, modes), `save_identity()` once
    the Raft log accepted the node, `close()` when the node stopped (or let the process exit:
    the kernel releases the lock).
    """

    def __init__(self, path: str, *, cluster_id: str, node_id: int) -> None:
        self.path = os.path.abspath(path)
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.lock_path = os.path.join(self.path, LOCK_FILE)
        self.identity_path = os.path.join(self.path, IDENTITY_FILE)
        self.lmdb_path = os.path.join(self.path, LMDB_SUBDIR)
        self._lock_fd: int | None = None
        self._pid_written = False
        self._identity: Identity | None = None
        self._stored: Identity | None = None  # what IDENTITY held at open()
        self._new_reason = ""  # why a new incarnation was minted ("" = kept the stored one)

    @property
    def identity(self) -> Identity:
        """This node's identity (valid after `open()`; on disk after `save_identity()`)."""
        if self._identity is None:
            raise RuntimeError("DataDir.open() first")
        return self._identity

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def open(self) -> Identity:
        """Lock the dir and check whose it is; raises DataDirError (and holds nothing) if
        the node must not use it. Changes nothing in a dir it refuses (a LOCK file aside,
        created if it was missing)."""
        try:
            self._create_dir()
            self._lock()
            try:
                identity = self._check_identity()
                self._tighten_modes()
                self._write_pid()
            except BaseException:
                self.close()
                raise
        except DataDirError:
            raise
        except OSError as exc:
            raise DataDirError(f"cannot use data dir {self.path}: {exc}") from exc
        self._identity = identity
        return identity

    def save_identity(self) -> None:
        """Write IDENTITY if it is new or was missing; logs what happened and why."""
        identity = self.identity
        if identity == self._stored:
            log.info("node.data_dir_opened", path=self.path, incarnation=identity.incarnation)
            return
        try:
            write_atomically(self.identity_path, identity.to_json())
        except OSError as exc:
            raise DataDirError(f"cannot write {self.identity_path}: {exc}") from exc
        fields: dict[str, Any] = {
            "path": self.path,
            "cluster_id": identity.cluster_id,
            "node_id": identity.node_id,
            "incarnation": identity.incarnation,
        }
        if self._new_reason:
            if self._stored is not None:
                fields["previous_incarnation"] = self._stored.incarnation
            # A fresh dir is routine; a dir that kept IDENTITY but lost its state is not.
            level = log.info if self._stored is None else log.warning
            level("node.new_incarnation", reason=self._new_reason, **fields)
        else:
            log.warning(
                "node.data_dir_adopted",
                detail="LMDB data without an IDENTITY (an older raftq made this dir): "
                "IDENTITY written, the data kept",
                **fields,
            )
        self._stored = identity

    def close(self) -> None:
        """Release the lock (clearing the recorded pid first, so nobody is named wrongly)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            if self._pid_written:  # a refused open leaves the file as it found it
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                self._pid_written = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> DataDir:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ steps of open()

    def _create_dir(self) -> None:
        if os.path.isdir(self.path):
            return
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(self.path, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(self.path):
                raise DataDirError(f"data dir {self.path} exists and is not a directory") from None
            return  # another process made it meanwhile; the lock decides who uses it
        os.chmod(self.path, DIR_MODE)  # mkdir's mode went through the umask
        fsync_dir(parent)

    def _lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirLocked(self.path, self._holder_pid()) from None
            raise
        self._lock_fd = fd

    def _holder_pid(self) -> int | None:
        try:
            with open(self.lock_path, "rb") as fh:
                text = fh.read(32).decode("ascii", "replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _write_pid(self) -> None:
        fd = self._lock_fd
        assert fd is not None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._pid_written = True

    def _check_identity(self) -> Identity:
        try:
            with open(self.identity_path, "rb") as fh:
                raw = fh.read(1 << 16)
        except FileNotFoundError:
            stored = None
        else:
            stored = parse_identity(self.identity_path, raw)
        self._stored = stored
        if stored is not None and (stored.cluster_id, stored.node_id) != (
            self.cluster_id,
            self.node_id,
        ):
            raise IdentityMismatch(
                f"data dir {self.path} belongs to node {stored.node_id} of cluster "
                f"{stored.cluster_id!r} (its {IDENTITY_FILE}), but this is node {self.node_id} "
                f"of cluster {self.cluster_id!r}: check --data-dir, --id and --cluster-id; "
                "a node must only ever run on its own data dir"
            )
        has_state = os.path.exists(os.path.join(self.lmdb_path, LMDB_DATA_FILE))
        if not has_state:
            self._new_reason = (
                "fresh data dir"
                if stored is None
                else "IDENTITY present but no LMDB data: this node's Raft state is gone"
            )
            return Identity.new(self.cluster_id, self.node_id)
        if stored is None:  # an older raftq's dir: adopt it, same incarnation from now on
            return Identity.new(self.cluster_id, self.node_id)
        return stored

    def _tighten_modes(self) -> None:
        """Owner-only: the dir 0o700, `lmdb/` 0o700, LMDB's files 0o600 (ours to change)."""
        targets = [(self.path, DIR_MODE), (self.lmdb_path, DIR_MODE)]
        if os.path.isdir(self.lmdb_path):
            for name in sorted(os.listdir(self.lmdb_path)):
                targets.append((os.path.join(self.lmdb_path, name), FILE_MODE))
        targets.append((self.identity_path, FILE_MODE))
        me = os.geteuid()
        for path, wanted in targets:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if not mode & 0o077:
                continue
            if st.st_uid != me:
                log.warning(
                    "node.data_dir_not_private",
                    path=path,
                    mode=oct(mode),
                    detail="not owned by this user, so left as is; make it owner-only",
                )
                continue
            new_mode = mode & wanted
            os.chmod(path, new_mode)
            log.warning(
                "node.data_dir_tightened", path=path, old_mode=oct(mode), new_mode=oct(new_mode)
            )
