"""`LocalCluster`: N real `python -m node` processes on this machine, for `raftq up` and tests.

Node *i* (1-based id) gets HTTP port `http_port + i - 1` and Raft port `raft_port + i - 1`
(or the i-th entry when lists of ports are given, e.g. from `free_ports`), its binary
client port (`raftq://`, docs/API.md "Binary protocol") from `binary_port` likewise, or
by default the node's own default, its HTTP port + 200, its data in
`data_dir/node-i` and its stdout/stderr in `log_dir/node-i.log` (appended across restarts).
Given `tls=ClusterTls(...)` (certificate files; tests make them with trustme), every node
serves https:// and raftqs:// and speaks mutual TLS to its peers.

It never leaves processes behind: `stop_all()` runs on `__exit__`, at interpreter exit, and
(Linux, when started from the main thread) the kernel SIGTERMs the nodes if this process
dies without cleaning up.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from common.tokens import new_token

log = structlog.get_logger("raftq.launcher")

_PR_SET_PDEATHSIG = 1
#: Loopback polling must never go through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: Every node process started by any LocalCluster and not yet reaped: the atexit hook
#: stops them even if their LocalCluster was dropped without stop_all().
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _stop_leftovers(grace_s: float = 3.0) -> None:
    """atexit: SIGTERM every node still running, SIGKILL after `grace_s`."""
    with _LIVE_LOCK:
        procs = [p for p in _LIVE if p.poll() is None]
        _LIVE.clear()
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


atexit.register(_stop_leftovers)


PEER_SECRET_FILE = "peer-secret"
ADMIN_TOKEN_FILE = "admin-token"


def ensure_secret_file(
    path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)
) -> None:
    """Create `path` holding `make()` (a random peer secret by default), owner-only,
    unless it exists."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made meanwhile by another start
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(make() + "\n")


def read_token_file(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct TCP ports free on `host` right now (bound together, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM when the parent thread dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _ports(value: int | Sequence[int], n: int, what: str) -> list[int]:
    if isinstance(value, int):
        return [value + i for i in range(n)]
    ports = list(value)
    if len(ports) != n:
        raise ValueError(f"{what}: {len(ports)} ports given for {n} nodes")
    return ports


class ClusterStartError(RuntimeError):
    """The nodes could not form a cluster (all exited, or no leader in time)."""


def last_critical_event(log_path: Path, tail_bytes: int = 1 << 16) -> str | None:
    """The first `critical` structlog event of a node's last run, as "event: error".

    Why: a node that stops on a failed safety check or a storage failure says why in its
    log; whoever watches the cluster (`raftq up`) should print that, not only an exit code.
    The first critical line after the node last started names the cause; the ones after
    it (driver failed, node failed) only follow from it.
    """
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - tail_bytes))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    found: str | None = None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("event") in ("node.starting", "raft.node_started"):
            found = None  # a new run: what came before is history
        elif record.get("level") == "critical" and found is None:
            detail = record.get("error") or record.get("reason") or ""
            found = f"{record.get('event')}: {detail}" if detail else str(record.get("event"))
    return found


@dataclass(frozen=True, slots=True)
class NodeTls:
    """One node's certificate files: `cert`/`key` serve its client ports (HTTP, binary),
    `peer_cert`/`peer_key` its peer port (naming it `raftq-node-<id>`, raft/peer_tls.py)."""

    cert: Path
    key: Path
    peer_cert: Path
    peer_key: Path


@dataclass(frozen=True, slots=True)
class ClusterTls:
    """A TLS cluster's files: `ca` signs every node's certificates (client ports and
    peers); with `client_ca` the client ports require a client certificate from it, and
    `client_cert`/`client_key` are what the launcher itself presents when it polls."""

    ca: Path
    nodes: Mapping[int, NodeTls]
    client_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def node_args(self, node_id: int) -> list[str]:
        """The TLS flags of `raftq node` for node `node_id`."""
        files = self.nodes.get(node_id)
        if files is None:
            raise ValueError(f"no certificates for node {node_id} in this ClusterTls")
        args = [
            *("--tls-cert", str(files.cert), "--tls-key", str(files.key)),
            *("--tls-ca", str(self.ca)),
            *("--peer-cert", str(files.peer_cert), "--peer-key", str(files.peer_key)),
            *("--peer-ca", str(self.ca)),
        ]
        if self.client_ca is not None:
            args += ["--tls-client-ca", str(self.client_ca)]
        return args

    def ssl_context(self) -> ssl.SSLContext:
        """How the launcher (and a test) talks to the nodes' client ports."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if self.client_cert is not None and self.client_key is not None:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Where one node listens and keeps its files."""

    id: int
    host: str
    http_port: int
    raft_port: int
    data_dir: Path
    log_path: Path
    #: The binary client port; None: the node's default (HTTP port + 200), no flag passed.
    binary_port: int | None = None
    #: The client ports serve TLS (https://, raftqs://).
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.http_port}"

    @property
    def binary_url(self) -> str:
        """`raftq://host:port` (`raftqs://` over TLS): where the client reaches this node
        over the binary protocol."""
        port = self.binary_port if self.binary_port is not None else self.http_port + 200
        return f"{'raftqs' if self.tls else 'raftq'}://{self.host}:{port}"

    @property
    def raft_addr(self) -> str:
        return f"{self.host}:{self.raft_port}"


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """The leader as `wait_for_leader` found it."""

    id: int
    url: str
    term: int


class LocalCluster:
    """Starts, kills, restarts and stops a local N-node raftq cluster."""

    def __init__(
        self,
        nodes: int = 3,
        data_dir: str | os.PathLike[str] = "./data",
        http_port: int | Sequence[int] = 7001,
        raft_port: int | Sequence[int] = 7101,
        host: str = "127.0.0.1",
        binary_port: int | Sequence[int] | None = None,
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
        log_dir: str | os.PathLike[str] | None = None,
        stop_grace_s: float = 10.0,
        peer_secret: bool = True,
        auth: bool = False,
        tls: ClusterTls | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        # A TLS cluster: every node's client ports and peer port (ClusterTls); the launcher
        # polls the nodes over https with the cluster's CA (and client certificate).
        self.tls = tls
        self._opener = (
            _DIRECT
            if tls is None
            else urllib.request.build_opener(
                urllib.request.ProxyHandler({}),
                urllib.request.HTTPSHandler(context=tls.ssl_context()),
            )
        )
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir is not None else self.data_dir
        self.host = host
        self.extra_args = tuple(extra_args)
        # One random secret for the cluster's peers, in a 0600 file of its data dir, made
        # on first start (`peer_secret=False`: an unauthenticated peer port, for tests).
        self.secret_path: Path | None = self.data_dir / PEER_SECRET_FILE if peer_secret else None
        # Client auth: off (`--auth off`, loopback only) unless asked for; then a random
        # admin token in a 0600 file beside the secret, the nodes' bootstrap admin.
        self.auth = auth
        self.admin_token_path: Path | None = self.data_dir / ADMIN_TOKEN_FILE if auth else None
        self.python = python
        self.stop_grace_s = stop_grace_s
        http_ports = _ports(http_port, nodes, "http_port")
        raft_ports = _ports(raft_port, nodes, "raft_port")
        binary_ports = (
            _ports(binary_port, nodes, "binary_port") if binary_port is not None else None
        )
        self.specs: dict[int, NodeSpec] = {
            i + 1: NodeSpec(
                id=i + 1,
                host=host,
                http_port=http_ports[i],
                raft_port=raft_ports[i],
                data_dir=self.data_dir / f"node-{i + 1}",
                log_path=self.log_dir / f"node-{i + 1}.log",
                binary_port=binary_ports[i] if binary_ports is not None else None,
                tls=tls is not None,
            )
            for i in range(nodes)
        }
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        # Nodes added after the cluster was bootstrapped: node id -> the URL they join by.
        self._joins: dict[int, str] = {}
        self._founders = tuple(self.specs)

    def __repr__(self) -> str:
        return f"LocalCluster(nodes={len(self.specs)}, data_dir={str(self.data_dir)!r}, running={sorted(self.running())})"

    # --- addresses -----------------------------------------------------------------------

    @classmethod
    def on_free_ports(
        cls,
        nodes: int,
        data_dir: str | os.PathLike[str],
        extra_args: Sequence[str] = (),
        **options: Any,
    ) -> LocalCluster:
        """A cluster of `nodes` on free loopback HTTP, Raft and binary ports (tests,
        benchmarks); the binary ports are chosen too, not HTTP + 200 (which may be taken).
        `options`: the other constructor arguments (e.g. `tls`, `peer_secret`)."""
        ports = free_ports(3 * nodes)
        return cls(
            nodes=nodes,
            data_dir=data_dir,
            http_port=ports[:nodes],
            raft_port=ports[nodes : 2 * nodes],
            binary_port=ports[2 * nodes :],
            extra_args=extra_args,
            **options,
        )

    @property
    def ids(self) -> list[int]:
        return sorted(self.specs)

    @property
    def urls(self) -> list[str]:
        """HTTP base URL of every node, in id order."""
        return [self.specs[i].url for i in self.ids]

    @property
    def servers(self) -> str:
        """The HTTP URLs comma-joined, as `--servers`/`RAFTQ_SERVERS` expect."""
        return ",".join(self.urls)

    @property
    def binary_urls(self) -> list[str]:
        """`raftq://` URL of every node's binary port, in id order."""
        return [self.specs[i].binary_url for i in self.ids]

    @property
    def binary_servers(self) -> str:
        """The `raftq://` URLs comma-joined: what a client should use (the binary protocol)."""
        return ",".join(self.binary_urls)

    def binary_url(self, node_id: int) -> str:
        return self._spec(node_id).binary_url

    @property
    def pids(self) -> dict[int, int]:
        """PID of every running node by id."""
        return {i: p.pid for i, p in self._procs.items() if p.poll() is None}

    def url(self, node_id: int) -> str:
        return self._spec(node_id).url

    def running(self) -> list[int]:
        return sorted(i for i, p in self._procs.items() if p.poll() is None)

    def peers_arg(self) -> str:
        """The `--peers` value: every founding member as `id=http_url@raft_addr` (nodes
        added later join through the log, not through `--peers`)."""
        return ",".join(
            f"{s.id}={s.url}@{s.raft_addr}" for s in self.specs.values() if s.id in self._founders
        )

    def add_node(
        self,
        http_port: int,
        raft_port: int,
        join_via: int | None = None,
        binary_port: int | None = None,
    ) -> int:
        """Register a new node (the next id) that joins the running cluster through node
        `join_via` (default: the lowest running id) with `--join`; start it with
        `start_node`. Returns its id."""
        node_id = max(self.specs) + 1
        via = join_via if join_via is not None else min(self.running() or self.ids)
        self.specs[node_id] = NodeSpec(
            id=node_id,
            host=self.host,
            http_port=http_port,
            raft_port=raft_port,
            data_dir=self.data_dir / f"node-{node_id}",
            log_path=self.log_dir / f"node-{node_id}.log",
            binary_port=binary_port,
            tls=self.tls is not None,
        )
        self._joins[node_id] = self.url(via)
        return node_id

    def forget_node(self, node_id: int) -> None:
        """Drop a stopped node from this launcher (after removing it from the cluster)."""
        self.stop(node_id)
        self._procs.pop(node_id, None)
        self.specs.pop(self._spec(node_id).id)
        self._joins.pop(node_id, None)

    def command(self, node_id: int) -> list[str]:
        """The argv that runs node `node_id`."""
        s = self._spec(node_id)
        return [
            self.python,
            "-P",  # not the caller's cwd first on sys.path: a stray node.py there must not win
            "-m",
            "node",
            "--id",
            str(s.id),
            "--http",
            f"{s.host}:{s.http_port}",
            "--raft",
            s.raft_addr,
            *(("--binary", f"{s.host}:{s.binary_port}") if s.binary_port is not None else ()),
            *(
                ("--join", self._joins[node_id])
                if node_id in self._joins
                else ("--peers", self.peers_arg())
            ),
            "--data-dir",
            str(s.data_dir),
            *(("--secret-file", str(self.secret_path)) if self.secret_path is not None else ()),
            *(
                ("--admin-token-file", str(self.admin_token_path))
                if self.admin_token_path is not None
                else ("--auth", "off")
            ),
            *(self.tls.node_args(node_id) if self.tls is not None else ()),
            *self.extra_args,
        ]

    def _spec(self, node_id: int) -> NodeSpec:
        try:
            return self.specs[node_id]
        except KeyError:
            raise ValueError(f"no node {node_id} (ids are {self.ids})") from None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """Start every node that is not running."""
        for i in self.ids:
            self.start_node(i)
        return self

    def start_node(self, node_id: int, env: dict[str, str] | None = None) -> int:
        """Start one node (no-op if running); returns its PID. `env` adds environment
        variables for this start only (e.g. RAFTQ_FAILPOINT)."""
        proc = self._procs.get(node_id)
        if proc is not None and proc.poll() is None:
            return proc.pid
        s = self._spec(node_id)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        s.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.secret_path is not None:
            ensure_secret_file(self.secret_path)
        _ = self.admin_token  # made before the first node reads it
        main_thread = threading.current_thread() is threading.main_thread()
        with open(s.log_path, "ab") as log_file:
            proc = subprocess.Popen(
                self.command(node_id),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if main_thread and sys.platform == "linux" else None,
                env={**os.environ, **env} if env else None,
            )
        self._procs[node_id] = proc
        with _LIVE_LOCK:
            _LIVE.difference_update([p for p in _LIVE if p.poll() is not None])
            _LIVE.add(proc)
        log.info("launcher.node_started", node_id=node_id, pid=proc.pid, url=s.url)
        return proc.pid

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to node `node_id` (default SIGKILL: a crash); waits if it kills."""
        self._spec(node_id)
        proc = self._procs.get(node_id)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait()
        log.info("launcher.node_signalled", node_id=node_id, signal=int(sig))

    def stop(self, node_id: int, grace_s: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; returns the exit code (None if never run)."""
        self._spec(node_id)
        proc = self._procs.get(node_id)
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a SIGSTOPped node must see the SIGTERM
                proc.terminate()
            try:
                proc.wait(timeout=self.stop_grace_s if grace_s is None else grace_s)
            except subprocess.TimeoutExpired:
                log.warning("launcher.node_kill_after_grace", node_id=node_id, pid=proc.pid)
                proc.kill()
                proc.wait()
        log.info("launcher.node_stopped", node_id=node_id, returncode=proc.returncode)
        return proc.returncode

    def restart(self, node_id: int) -> int:
        """Stop (gracefully) and start node `node_id` on the same data dir; returns the PID."""
        self.stop(node_id)
        return self.start_node(node_id)

    def stop_all(self, grace_s: float | None = None) -> None:
        """SIGTERM every node at once, then SIGKILL whatever outlives the grace period."""
        live = [p for p in self._procs.values() if p.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        deadline = time.monotonic() + (self.stop_grace_s if grace_s is None else grace_s)
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if live:
            log.info("launcher.stopped_all", nodes=len(live))

    def returncodes(self) -> dict[int, int | None]:
        """Exit code of every node started so far (None while running)."""
        return {i: p.poll() for i, p in self._procs.items()}

    def exit_reason(self, node_id: int) -> str | None:
        """Why node `node_id` stopped, from its log: its last critical event, if any."""
        return last_critical_event(self.specs[node_id].log_path)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # --- observation ---------------------------------------------------------------------

    @property
    def admin_token(self) -> str | None:
        """The cluster's bootstrap admin token (None without auth)."""
        if self.admin_token_path is None:
            return None
        ensure_secret_file(self.admin_token_path, lambda: new_token("admin"))
        return read_token_file(self.admin_token_path)

    def cluster_view(self, node_id: int, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """Node `node_id`'s `GET /v1/cluster`, or None if it does not answer."""
        request = urllib.request.Request(self.url(node_id) + "/v1/cluster")
        token = self.admin_token
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with self._opener.open(request, timeout=timeout_s) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def leader(self) -> LeaderInfo | None:
        """The node that claims leadership in the highest term, if any does now."""
        best: LeaderInfo | None = None
        for i in self.running():
            view = self.cluster_view(i)
            if not view:
                continue
            leader = view.get("leader") or {}
            if leader.get("id") == view.get("node_id") == i:
                term = int(view.get("term") or 0)
                if best is None or term > best.term:
                    best = LeaderInfo(id=i, url=self.url(i), term=term)
        return best

    def wait_for_leader(self, timeout_s: float = 30.0, poll_s: float = 0.1) -> LeaderInfo:
        """Poll `/v1/cluster` until a node says it leads.

        Raises ClusterStartError (naming the node logs) when every node has exited or no
        leader appears within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.leader()
            if found is not None:
                return found
            dead = {i: rc for i, rc in self.returncodes().items() if rc is not None}
            # Why each exited node stopped (a refused data dir, a failed check), from its log.
            why = "".join(
                f"; node {i}: {reason}" for i in sorted(dead) if (reason := self.exit_reason(i))
            )
            if dead and len(dead) == len(self._procs):
                logs = ", ".join(str(self.specs[i].log_path) for i in sorted(dead))
                raise ClusterStartError(f"every node exited (codes {dead}){why}; see {logs}")
            if time.monotonic() >= deadline:
                logs = ", ".join(str(self.specs[i].log_path) for i in self.ids)
                raise ClusterStartError(
                    f"no leader within {timeout_s:g}s (exited nodes: {dead or 'none'}{why}; "
                    f"logs: {logs})"
                )
            time.sleep(poll_s)

    def wait_ready(self, node_id: int, timeout_s: float = 30.0) -> None:
        """Wait until node `node_id` answers `GET /v1/ready` with 200."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with self._opener.open(self.url(node_id) + "/v1/ready", timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"node {node_id} not ready within {timeout_s:g}s")
            time.sleep(0.1)


__all__ = [
    "ClusterStartError",
    "ClusterTls",
    "LeaderInfo",
    "LocalCluster",
    "NodeSpec",
    "NodeTls",
    "free_ports",
]
