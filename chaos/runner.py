"""The chaos cluster: N raftq nodes wired through the fault proxy, observed continuously.

Why a LocalCluster subclass: process handling (start, kill -9, SIGTERM, PIDs, logs) is the
launcher's job; this class only changes how each node is wired. Node *i* gets its own
`--peers` string in which every other node *j* is reached through the proxy `peer-i-j`
(Raft links are one-way, so disabling that proxy cuts exactly i→j), and clients reach node
*j* through `client-j`. Per-node environment (failpoints) and extra flags (a tiny LMDB map)
are applied at the next start of that node.

`Monitor` is the observer the checker trusts for P6/P7: it polls every node's `/v1/cluster`
directly (not through the proxy) for (term, role, leader) and samples `/v1/admin/log`,
keeping every committed (index, term, crc) ever seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from chaos import proxy
from cluster.launcher import LocalCluster, free_ports

if TYPE_CHECKING:  # toxiproxy-python is optional: imported when a run starts its proxy
    from chaos.proxy_client import ToxiproxyClient

log = structlog.get_logger("chaos.runner")

TICK_MS = 50
ELECTION_TICKS = 10
ELECTION_TIMEOUT_S = TICK_MS * ELECTION_TICKS / 1000.0


class ProxyStartError(RuntimeError):
    """The fault proxy process did not come up."""


def peer_proxy(src: int, dst: int) -> str:
    return f"peer-{src}-{dst}"


def client_proxy(node: int) -> str:
    return f"client-{node}"


class ChaosCluster(LocalCluster):
    """LocalCluster whose peer and client traffic flows through one proxy per directed link."""

    def __init__(
        self,
        nodes: int,
        workdir: Path,
        toxiproxy_url: str | None = None,
        proxy_seed: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        # Every port this cluster will listen on (nodes, one proxy per directed peer link, one
        # per client link, the proxy's control port) comes from ONE free_ports call: they are
        # bound together, so distinct. A proxy asking for port 0 later could otherwise be
        # handed a node's port after free_ports released it (seen: a node failing to bind).
        n_links = nodes * (nodes - 1) + nodes
        ports = free_ports(2 * nodes + n_links + 1)
        self._proxy_ports = list(ports[2 * nodes :])
        super().__init__(
            nodes=nodes,
            data_dir=workdir / "data",
            http_port=ports[:nodes],
            raft_port=ports[nodes : 2 * nodes],
            log_dir=workdir / "logs",
            extra_args=(
                "--log-format",
                "json",
                "--tick-ms",
                str(TICK_MS),
                "--election-ticks",
                str(ELECTION_TICKS),
                *extra_args,
            ),
            stop_grace_s=8.0,
        )
        self.workdir = workdir
        self.proxy_seed = proxy_seed
        self._external_proxy = toxiproxy_url is not None
        self.toxiproxy_url = toxiproxy_url
        self._proxy_proc: subprocess.Popen[bytes] | None = None
        self.toxi: ToxiproxyClient | None = None
        self.peer_listen: dict[tuple[int, int], str] = {}
        self.client_listen: dict[int, str] = {}
        self.node_env: dict[int, dict[str, str]] = {}
        self.node_args: dict[int, list[str]] = {}
        self.paused: set[int] = set()

    # --- wiring --------------------------------------------------------------------------

    def peers_for(self, node_id: int) -> str:
        """`--peers` for one node: itself at its real raft address, the others via proxies."""
        items = []
        for s in self.specs.values():
            addr = s.raft_addr if s.id == node_id else self.peer_listen[(node_id, s.id)]
            items.append(f"{s.id}={s.url}@{addr}")
        return ",".join(items)

    def command(self, node_id: int) -> list[str]:
        argv = super().command(node_id)
        argv[argv.index("--peers") + 1] = self.peers_for(node_id)
        argv += self.node_args.get(node_id, [])
        env = self.node_env.get(node_id)
        if env:  # `env` execs the node: the PID we track stays the node's own
            return ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *argv]
        return argv

    @property
    def client_urls(self) -> dict[int, str]:
        return {i: f"http://{addr}" for i, addr in self.client_listen.items()}

    @property
    def real_urls(self) -> dict[str, int]:
        return {s.url: s.id for s in self.specs.values()}

    # --- proxy ---------------------------------------------------------------------------

    async def start_proxy(self) -> None:
        # Here, not at the top: `raftq chaos --list` and `chaos proxy` work without the
        # chaos extra, and the CLI checks for it before a run (chaos.optional.TOXIPROXY).
        from chaos.proxy_client import ToxiproxyClient

        if self.toxiproxy_url is None:
            port = self._proxy_ports.pop()
            self.toxiproxy_url = f"http://127.0.0.1:{port}"
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / "proxy.log", "ab") as fh:
                self._proxy_proc = subprocess.Popen(
                    proxy.process_command(port, self.proxy_seed),
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self.toxi = ToxiproxyClient(self.toxiproxy_url)
        deadline = time.monotonic() + 15.0
        while True:
            if self._proxy_proc is not None and self._proxy_proc.poll() is not None:
                raise ProxyStartError(f"fault proxy exited; see {self.log_dir / 'proxy.log'}")
            try:
                await self.toxi.version()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise ProxyStartError("fault proxy did not answer in 15 s") from None
                await asyncio.sleep(0.1)
        if self._external_proxy:
            await self.toxi.reset()
        for i in self.ids:
            for j in self.ids:
                if i != j:
                    p = await self.toxi.create_proxy(
                        peer_proxy(i, j), self.specs[j].raft_addr, listen=self._proxy_listen()
                    )
                    self.peer_listen[(i, j)] = p.listen
            p = await self.toxi.create_proxy(
                client_proxy(i),
                f"127.0.0.1:{self.specs[i].http_port}",
                listen=self._proxy_listen(),
            )
            self.client_listen[i] = p.listen

    def _proxy_listen(self) -> str:
        """A pre-reserved port for the next proxy; port 0 once they are used up (restarts)."""
        return f"127.0.0.1:{self._proxy_ports.pop() if self._proxy_ports else 0}"

    def stop_proxy(self) -> None:
        if self._proxy_proc is not None and self._proxy_proc.poll() is None:
            self._proxy_proc.send_signal(signal.SIGTERM)
            try:
                self._proxy_proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proxy_proc.kill()
                self._proxy_proc.wait()

    async def delete_proxies(self) -> None:
        """On an external Toxiproxy: remove what we created (ours dies with its process)."""
        if self.toxi is None or not self._external_proxy:
            return
        names = [peer_proxy(i, j) for (i, j) in self.peer_listen] + [
            client_proxy(i) for i in self.client_listen
        ]
        for name in names:
            with contextlib.suppress(Exception):
                await self.toxi.delete_proxy(name)

    # --- async process control (the launcher blocks: run it off the loop) ----------------

    async def astart_node(self, node_id: int) -> None:
        self.paused.discard(node_id)
        await asyncio.to_thread(self.start_node, node_id)

    async def akill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        if sig == signal.SIGKILL:
            self.paused.discard(node_id)
        await asyncio.to_thread(self.kill, node_id, sig)

    async def astop(self, node_id: int) -> None:
        self.paused.discard(node_id)
        await asyncio.to_thread(self.stop, node_id)

    def pid(self, node_id: int) -> int | None:
        return self.pids.get(node_id)

    def shutdown(self) -> None:
        for i in list(self.paused):
            pid = self.pid(i)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        self.paused.clear()
        self.stop_all(grace_s=5.0)
        self.stop_proxy()


# ------------------------------------------------------------------------------- monitor


@dataclass
class NodeEvent:
    time: float
    node: int
    term: int
    role: str
    leader: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 3),
            "node": self.node,
            "term": self.term,
            "role": self.role,
            "leader": self.leader,
        }


@dataclass
class Observations:
    """What the monitor saw; the checker's input for P6-P9."""

    events: list[NodeEvent] = field(default_factory=list)
    leaders_by_term: dict[int, set[int]] = field(default_factory=dict)
    committed: dict[int, tuple[int, int, int, float]] = field(default_factory=dict)
    log_violations: list[dict[str, Any]] = field(default_factory=list)
    elected_from_logs: list[dict[str, Any]] = field(default_factory=list)
    final_logs: dict[int, list[list[int]]] = field(default_factory=dict)
    final_states: dict[int, dict[str, Any]] = field(default_factory=dict)
    convergence_error: str | None = None
    log_samples: int = 0


class Monitor:
    """Polls every node directly for role/term and committed log entries."""

    def __init__(
        self,
        cluster: ChaosCluster,
        clock: Any,
        poll_s: float = 0.1,
        log_every_s: float = 1.0,
    ) -> None:
        self.cluster = cluster
        self.clock = clock  # () -> seconds since run start
        self.poll_s = poll_s
        self.log_every_s = log_every_s
        self.obs = Observations()
        self._last: dict[int, tuple[int, str, int | None]] = {}
        self._views: dict[int, tuple[float, int, str, int | None]] = {}
        self._log_hi: dict[int, int] = {}
        self._pids: dict[int, int | None] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def leader(self) -> int | None:
        """The node that most recently claimed leadership at the highest term seen fresh."""
        now = self.clock()
        best: tuple[int, int] | None = None
        alive = set(self.cluster.running()) - self.cluster.paused
        for node, (t, term, role, _leader) in self._views.items():
            fresh = role == "leader" and now - t < 1.0 and node in alive
            if fresh and (best is None or term > best[0]):
                best = (term, node)
        return best[1] if best else None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=20),
            timeout=aiohttp.ClientTimeout(total=1.0),
        )
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_roles()), loop.create_task(self._poll_logs())]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _get(self, node: int, path: str, timeout_s: float = 1.0) -> Any:
        assert self._session is not None
        try:
            async with self._session.get(
                self.cluster.url(node) + path, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                if resp.status != 200:
                    return None
                return await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None

    async def _poll_roles(self) -> None:
        while not self._stop.is_set():
            nodes = [i for i in self.cluster.running() if i not in self.cluster.paused]
            views = await asyncio.gather(*(self._get(i, "/v1/cluster", 0.5) for i in nodes))
            for node, view in zip(nodes, views, strict=True):
                if view:
                    self.record_view(node, view)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll_s)

    def record_view(self, node: int, view: dict[str, Any]) -> None:
        term = int(view.get("term") or 0)
        role = str(view.get("role") or "?")
        leader = (view.get("leader") or {}).get("id")
        now = self.clock()
        self._views[node] = (now, term, role, leader)
        if role == "leader":
            self.obs.leaders_by_term.setdefault(term, set()).add(node)
        key = (term, role, leader)
        if self._last.get(node) != key:
            self._last[node] = key
            self.obs.events.append(NodeEvent(now, node, term, role, leader))

    async def _poll_logs(self) -> None:
        rounds = 0
        while not self._stop.is_set():
            rounds += 1
            full = rounds % 10 == 0
            await self.sample_logs(full=full)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.log_every_s)

    async def sample_logs(self, full: bool = False) -> dict[int, list[list[int]]]:
        """Fetch committed entries from every live node and check them against the record."""
        nodes = [i for i in self.cluster.running() if i not in self.cluster.paused]
        starts = {}
        for i in nodes:
            pid = self.cluster.pid(i)
            restarted = self._pids.get(i) != pid
            self._pids[i] = pid
            hi = self._log_hi.get(i, 0)
            starts[i] = 1 if (full or restarted) else max(1, hi - 64)
        got = await asyncio.gather(
            *(self._fetch_log(i, starts[i]) for i in nodes), return_exceptions=True
        )
        out = {}
        for node, entries in zip(nodes, got, strict=True):
            if isinstance(entries, BaseException) or entries is None:
                continue
            out[node] = entries
            self.record_entries(node, entries)
        self.obs.log_samples += 1
        return out

    async def _fetch_log(self, node: int, start: int) -> list[list[int]] | None:
        entries: list[list[int]] = []
        lo = start
        while True:
            data = await self._get(node, f"/v1/admin/log?from={lo}&max=10000", 3.0)
            if not data:
                return entries or None
            chunk = data.get("entries") or []
            entries.extend(chunk)
            if len(chunk) < 10000:
                return entries
            lo = chunk[-1][0] + 1

    def record_entries(self, node: int, entries: list[list[int]]) -> None:
        committed = self.obs.committed
        now = self.clock()
        for index, term, crc in entries:
            seen = committed.get(index)
            if seen is None:
                committed[index] = (term, crc, node, now)
            elif (seen[0], seen[1]) != (term, crc):
                self.obs.log_violations.append(
                    {
                        "index": index,
                        "first": {
                            "term": seen[0],
                            "crc": seen[1],
                            "node": seen[2],
                            "time": seen[3],
                        },
                        "now": {"term": term, "crc": crc, "node": node, "time": round(now, 3)},
                    }
                )
        if entries:
            self._log_hi[node] = max(self._log_hi.get(node, 0), entries[-1][0])

    async def converge(self, timeout_s: float = 30.0) -> None:
        """P8: wait until every node has applied the same index, then compare state hashes.

        Hash and index are read in two calls, so a pair is trusted only when the index read
        before and after agree; a mismatch is recorded only if it persists to the deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_problem = "no answers"
        nodes = self.cluster.ids
        while loop.time() < deadline:
            states = await asyncio.gather(*(self._get(i, "/v1/admin/state", 2.0) for i in nodes))
            again = await asyncio.gather(*(self._get(i, "/v1/admin/state", 2.0) for i in nodes))
            ok = all(states) and all(again)
            if ok:
                idx = {s["applied_index"] for s in states} | {s["applied_index"] for s in again}
                hashes = {s["state_hash"] for s in states} | {s["state_hash"] for s in again}
                if len(idx) == 1 and len(hashes) == 1:
                    self.obs.final_states = dict(zip(nodes, again, strict=True))
                    self.obs.convergence_error = None
                    return
                if len(idx) == 1:
                    last_problem = f"state hashes differ at applied_index {idx.pop()}"
                    self.obs.final_states = dict(zip(nodes, again, strict=True))
                else:
                    last_problem = f"applied_index differ: {sorted(idx)}"
            else:
                last_problem = "a node did not answer /v1/admin/state"
            await asyncio.sleep(0.5)
        self.obs.convergence_error = last_problem

    async def final_logs(self, attempts: int = 10) -> None:
        """Full committed logs of every node (retried: a node may briefly fail to answer)."""
        logs: dict[int, list[list[int]]] = {}
        for _ in range(attempts):
            got = await self.sample_logs(full=True)
            logs.update(got)
            last = {i: entries[-1][0] if entries else 0 for i, entries in logs.items()}
            if all(i in logs for i in self.cluster.ids) and len(set(last.values())) == 1:
                break
            await asyncio.sleep(0.3)
        self.obs.final_logs = logs


def parse_node_logs(log_dir: Path, node_ids: Sequence[int]) -> list[dict[str, Any]]:
    """`raft.elected` events (node, term, timestamp) from the nodes' JSON log lines (P6)."""
    out: list[dict[str, Any]] = []
    for i in node_ids:
        path = log_dir / f"node-{i}.log"
        if not path.exists():
            continue
        with path.open(errors="replace") as fh:
            for line in fh:
                if '"raft.elected"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") == "raft.elected":
                    out.append(
                        {
                            "node": int(rec.get("node_id") or i),
                            "term": int(rec.get("term") or 0),
                            "timestamp": rec.get("timestamp"),
                        }
                    )
    return out


def node_log_lines(log_dir: Path, node: int, needle: str, limit: int = 20) -> list[str]:
    """The last `limit` lines of a node's log containing `needle` (for bug reports)."""
    path = log_dir / f"node-{node}.log"
    if not path.exists():
        return []
    with path.open(errors="replace") as fh:
        lines = [line.rstrip() for line in fh if needle in line]
    return lines[-limit:]
