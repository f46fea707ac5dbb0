"""The monitor: what every node says about itself during a chaos run, as the checker sees it.

Why a separate observer: the checker trusts it for P6/P7/P8. It polls every node's
`/v1/cluster` directly (not through the proxy) for (term, role, leader), samples
`/v1/admin/log`, keeping every committed (index, term, crc) ever seen, and at the end
waits for the nodes to converge on one applied index and state hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from chaos.chaos_cluster import ChaosCluster


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
    final_logs: dict[int, list[list[int]]] = field(default_factory=dict)
    final_states: dict[int, dict[str, Any]] = field(default_factory=dict)
    convergence_error: str | None = None
    log_samples: int = 0


class Monitor:
    """Polls every node directly for role/term and committed log entries."""

    def __init__(
        self,
        cluster: ChaosCluster,
        clock: Callable[[], float],
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
