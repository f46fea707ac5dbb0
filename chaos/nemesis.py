"""The nemesis: faults injected into a ChaosCluster, each recorded as a time window.

Why windows: the report shades them on the timeline and the checker measures liveness (P9)
from each heal. Every random choice comes from the run's seeded `random.Random`, so a
scenario and seed reproduce the same schedule (the timing of the system's reactions varies).

Network faults act on the fault proxy: a partition disables the directed peer proxies
between groups (Raft is one-way per link, so `peer-i-j` carries exactly i→j); link faults add
toxics on peer or client proxies. Process faults signal the node processes. Storage faults
restart a node with a tiny LMDB map (`--max-map-bytes`) or an armed failpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from chaos.chaos_cluster import ChaosCluster, client_proxy, peer_proxy
from chaos.monitor import Monitor
from cluster.discovery import REDIRECT_HEADERS

if TYPE_CHECKING:  # toxiproxy-python is optional: imported when a run starts its proxy
    from chaos.proxy_client import ToxiproxyClient

log = structlog.get_logger("chaos.nemesis")

DISK_FULL_SLACK_BYTES = 256 << 10


@dataclass
class FaultWindow:
    name: str
    start: float
    end: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": round(self.start, 3),
            "end": None if self.end is None else round(self.end, 3),
            "detail": self.detail,
        }


class Nemesis:
    """Fault operations on one cluster; `heal_all()` undoes every kind of fault."""

    def __init__(
        self,
        cluster: ChaosCluster,
        monitor: Monitor,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self.cluster = cluster
        self.monitor = monitor
        self.rng = rng
        self.clock = clock
        self.duration_s = 60.0  # the faulty phase's length: schedules scale fault lengths
        self.windows: list[FaultWindow] = []
        self._open: list[FaultWindow] = []
        self.cut: set[tuple[int, int]] = set()
        self.toxics: set[tuple[str, str]] = set()
        self.down: set[int] = set()
        self.modified: set[int] = set()  # nodes started with a failpoint or a small map

    # --- bookkeeping ---------------------------------------------------------------------

    def begin(self, name: str, **detail: Any) -> FaultWindow:
        w = FaultWindow(name, self.clock(), detail=detail)
        self.windows.append(w)
        self._open.append(w)
        log.info("nemesis.begin", fault=name, **detail)
        return w

    def end(self, w: FaultWindow | None = None) -> None:
        """Close one window (or all open ones)."""
        now = self.clock()
        for x in [w] if w is not None else list(self._open):
            if x in self._open:
                x.end = now
                self._open.remove(x)
                log.info("nemesis.end", fault=x.name)

    @property
    def ids(self) -> list[int]:
        return self.cluster.ids

    async def leader(self, wait_s: float = 5.0) -> int | None:
        """The monitor's current leader, waiting up to `wait_s` for one to appear."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            lead = self.monitor.leader()
            if lead is not None or loop.time() >= deadline:
                return lead
            await asyncio.sleep(0.1)

    async def leader_or_random(self) -> int:
        lead = await self.leader()
        return lead if lead is not None else self.rng.choice(self.ids)

    # --- network -------------------------------------------------------------------------

    @property
    def toxi(self) -> ToxiproxyClient:
        assert self.cluster.toxi is not None
        return self.cluster.toxi

    async def cut_links(self, links: Iterable[tuple[int, int]]) -> None:
        for src, dst in links:
            if (src, dst) not in self.cut:
                await self.toxi.disable(peer_proxy(src, dst))
                self.cut.add((src, dst))

    async def partition(self, groups: list[set[int]], name: str = "partition") -> FaultWindow:
        """Cut every link (both directions) between nodes of different groups."""
        where = {n: gi for gi, g in enumerate(groups) for n in g}
        links = [(a, b) for a in self.ids for b in self.ids if a != b and where[a] != where[b]]
        w = self.begin(name, groups=[sorted(g) for g in groups])
        await self.cut_links(links)
        return w

    async def isolate(self, node: int, name: str = "isolate") -> FaultWindow:
        return await self.partition([{node}, set(self.ids) - {node}], name)

    async def one_way_deaf(self, node: int) -> FaultWindow:
        """`node` can send to everyone but hears no one."""
        w = self.begin("one-way", node=node, note="node sends, cannot receive")
        await self.cut_links([(j, node) for j in self.ids if j != node])
        return w

    async def bridge(self) -> FaultWindow:
        """Two halves cut from each other; one bridge node sees both (leader-agnostic)."""
        nodes = self.ids[:]
        self.rng.shuffle(nodes)
        bridge_node, rest = nodes[0], nodes[1:]
        half = len(rest) // 2
        a, b = set(rest[:half]), set(rest[half:])
        w = self.begin("bridge", bridge=bridge_node, a=sorted(a), b=sorted(b))
        await self.cut_links([(x, y) for x in a for y in b] + [(y, x) for x in a for y in b])
        return w

    async def ring(self) -> FaultWindow:
        """Majorities ring: each node hears only its two ring neighbours (5 nodes)."""
        nodes = self.ids[:]
        self.rng.shuffle(nodes)
        n = len(nodes)
        keep = set()
        for k, x in enumerate(nodes):
            for y in (nodes[(k - 1) % n], nodes[(k + 1) % n]):
                keep.add((x, y))
        w = self.begin("ring", order=nodes)
        await self.cut_links(
            [(a, b) for a in nodes for b in nodes if a != b and (a, b) not in keep]
        )
        return w

    async def random_halves(self) -> FaultWindow:
        nodes = self.ids[:]
        self.rng.shuffle(nodes)
        k = self.rng.randint(1, len(nodes) // 2)
        return await self.partition([set(nodes[:k]), set(nodes[k:])], "random-halves")

    async def heal_network(self) -> None:
        """Re-enable every proxy and remove every toxic (Toxiproxy's /reset)."""
        await self.toxi.reset()
        self.cut.clear()
        self.toxics.clear()

    # --- link toxics ---------------------------------------------------------------------

    async def toxic(
        self,
        proxy: str,
        type_: str,
        attributes: dict[str, int],
        stream: str = "upstream",
        toxicity: float = 1.0,
    ) -> None:
        name = f"{type_}_{stream}"
        if (proxy, name) in self.toxics:
            await self.toxi.remove_toxic(proxy, name)
        await self.toxi.add_toxic(
            proxy, type_, stream=stream, toxicity=toxicity, attributes=attributes
        )
        self.toxics.add((proxy, name))

    def peer_links(self) -> list[tuple[int, int]]:
        return [(a, b) for a in self.ids for b in self.ids if a != b]

    async def latency(self, links: list[tuple[int, int]], lo_ms: int, hi_ms: int) -> FaultWindow:
        w = self.begin("latency", links=links, range_ms=[lo_ms, hi_ms])
        for a, b in links:
            ms = self.rng.randint(lo_ms, hi_ms)
            await self.toxic(peer_proxy(a, b), "latency", {"latency": ms, "jitter": ms // 3})
        return w

    async def slicer(self, links: list[tuple[int, int]]) -> FaultWindow:
        w = self.begin("slicer", links=links)
        for a, b in links:
            await self.toxic(
                peer_proxy(a, b),
                "slicer",
                {"average_size": 64, "size_variation": 32, "delay": 2000},
            )
        return w

    async def resets(self, toxicity: float, clients: bool = True) -> FaultWindow:
        """reset_peer on every peer link (and client link) for a fraction of connections."""
        w = self.begin("reset-peer", toxicity=toxicity, clients=clients)
        for a, b in self.peer_links():
            await self.toxic(
                peer_proxy(a, b),
                "reset_peer",
                {"timeout": self.rng.randint(50, 500)},
                toxicity=toxicity,
            )
        if clients:
            for i in self.ids:
                await self.toxic(
                    client_proxy(i),
                    "reset_peer",
                    {"timeout": self.rng.randint(50, 500)},
                    toxicity=toxicity,
                )
        return w

    async def limit_data(self, kbytes: int, clients: bool = True) -> FaultWindow:
        """Close connections after a few KB: transports must reconnect and resend."""
        w = self.begin("limit-data", kbytes=kbytes, clients=clients)
        for a, b in self.peer_links():
            await self.toxic(peer_proxy(a, b), "limit_data", {"bytes": kbytes * 1024})
        if clients:
            for i in self.ids:
                await self.toxic(client_proxy(i), "limit_data", {"bytes": kbytes * 1024})
        return w

    async def clear_toxics(self) -> None:
        for proxy, name in list(self.toxics):
            with contextlib.suppress(Exception):
                await self.toxi.remove_toxic(proxy, name)
        self.toxics.clear()

    # --- processes -----------------------------------------------------------------------

    async def kill(self, node: int, name: str = "kill-9") -> FaultWindow:
        w = self.begin(name, node=node)
        await self.cluster.akill(node)
        self.down.add(node)
        return w

    async def kill_all(self) -> FaultWindow:
        w = self.begin("kill-all", nodes=self.ids)
        await asyncio.gather(*(self.cluster.akill(i) for i in self.ids))
        self.down.update(self.ids)
        return w

    async def restart(
        self, node: int, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> None:
        """Start a stopped node (optionally with a failpoint env or extra flags)."""
        if env or args:
            self.modified.add(node)
        self.cluster.node_env[node] = dict(env or {})
        self.cluster.node_args[node] = list(args or [])
        await self.cluster.astart_node(node)
        self.down.discard(node)

    async def pause(self, node: int) -> FaultWindow:
        w = self.begin("sigstop", node=node)
        pid = self.cluster.pid(node)
        if pid:
            self.cluster.paused.add(node)
            os.kill(pid, signal.SIGSTOP)
        return w

    async def resume(self, node: int) -> None:
        pid = self.cluster.pid(node)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.cluster.paused.discard(node)

    async def graceful_restart(self, node: int) -> FaultWindow:
        w = self.begin("sigterm-restart", node=node)
        await self.cluster.astop(node)
        await self.restart(node)
        return w

    # --- storage -------------------------------------------------------------------------

    def data_bytes(self, node: int) -> int:
        path = self.cluster.specs[node].data_dir
        total = 0
        for root, _dirs, files in os.walk(path):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(root, f))
        return total

    async def disk_full(self, node: int) -> FaultWindow:
        """Restart `node` with an LMDB map barely larger than its data: writes soon fail."""
        lead_before = self.monitor.leader()
        w = self.begin("disk-full", node=node, leader=lead_before == node)
        await self.cluster.akill(node)
        limit = self.data_bytes(node) + DISK_FULL_SLACK_BYTES
        w.detail["max_map_bytes"] = limit
        await self.restart(node, args=["--max-map-bytes", str(limit)])
        if lead_before == node:
            # It lost leadership by restarting: hand it back, so the full disk is the leader's.
            await self.transfer_leader(node)
        return w

    async def transfer_leader(self, to: int, timeout_s: float = 5.0) -> bool:
        """Ask the current leader to transfer to `to` (best effort, bounded)."""
        import aiohttp  # local: only this nemesis op talks HTTP

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
            while loop.time() < deadline:
                lead = self.monitor.leader()
                if lead == to:
                    return True
                if lead is not None:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        async with session.post(
                            self.cluster.url(lead) + "/v1/cluster/transfer-leader",
                            json={"to": to},
                            headers=REDIRECT_HEADERS,
                        ) as resp:
                            await resp.read()
                await asyncio.sleep(0.3)
        return self.monitor.leader() == to

    # --- membership / snapshots ------------------------------------------------------------

    async def _leader_call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One admin call at the current leader (follows no redirects): (status, JSON)."""
        import aiohttp  # local: only these nemesis ops talk HTTP

        lead = await self.leader_or_random()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session,
            session.request(
                method,
                self.cluster.url(lead) + path,
                json=body,
                headers=REDIRECT_HEADERS,
                allow_redirects=False,
            ) as resp,
        ):
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
            return resp.status, data

    async def members(self) -> dict[str, Any] | None:
        """The configuration as the current leader (or any node) answers it."""
        with contextlib.suppress(Exception):
            status, data = await self._leader_call("GET", "/v1/cluster/members")
            if status == 200 and isinstance(data, dict):
                return data
        return None

    async def add_member(self, node: int) -> int:
        """Ask the leader to add `node` back (a learner, promoted once caught up); the
        HTTP status (retried through elections until a definite answer)."""
        spec = self.cluster.specs[node]
        body = {"id": node, "url": spec.url, "raft_addr": spec.raft_addr, "voter": True}
        return await self._member_change("POST", "/v1/cluster/members", body)

    async def remove_member(self, node: int) -> int:
        """Ask the leader to remove `node` (the leader itself too); the HTTP status."""
        return await self._member_change("DELETE", f"/v1/cluster/members/{node}", None)

    async def _member_change(self, method: str, path: str, body: Any) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        status = 0
        while loop.time() < deadline:
            with contextlib.suppress(Exception):
                status, _data = await self._leader_call(method, path, body)
                if status in (200, 404):  # 404 on a retried removal: it is done
                    return status
            await asyncio.sleep(0.5)  # no leader, a change in progress, a timeout: again
        return status

    async def wait_member(
        self, node: int, not_incarnation: str | None = None, timeout_s: float = 60.0
    ) -> bool:
        """Wait until `node` is a voter again (under another incarnation than
        `not_incarnation`, when given); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            conf = await self.members()
            mine = next((m for m in (conf or {}).get("members", []) if m["id"] == node), None)
            if (
                mine is not None
                and mine["voter"]
                and mine["incarnation"]
                and mine["incarnation"] != not_incarnation
            ):
                return True
            await asyncio.sleep(0.5)
        return False

    async def incarnation(self, node: int) -> str | None:
        conf = await self.members()
        mine = next((m for m in (conf or {}).get("members", []) if m["id"] == node), None)
        return mine["incarnation"] if mine else None

    async def wipe(self, node: int, name: str = "amnesia") -> FaultWindow:
        """kill -9 `node`, delete its data dir, start it again with the same command line:
        the disk is lost, the node comes back as a new incarnation."""
        w = self.begin(name, node=node)
        await self.cluster.akill(node)
        self.down.add(node)
        await asyncio.to_thread(shutil.rmtree, self.cluster.specs[node].data_dir, True)
        await self.restart(node)
        return w

    async def lagging_follower(self, node: int, hold_s: float) -> FaultWindow:
        """Cut a follower off for `hold_s` while writes go on, then heal: it must catch up
        (by log replication, or by a snapshot install once the leader compacted its log)."""
        w = await self.isolate(node, "lagging-follower")
        await asyncio.sleep(hold_s)
        await self.heal_network()
        self.end(w)
        return w

    # --- heal ----------------------------------------------------------------------------

    async def heal_all(self) -> None:
        """Undo every fault: network, paused and dead nodes, small maps and failpoints."""
        await self.heal_network()
        for i in list(self.cluster.paused):
            await self.resume(i)
        for i in self.ids:
            if i in self.modified:
                # Back to normal settings: restart without the failpoint or small map.
                self.cluster.node_env.pop(i, None)
                self.cluster.node_args.pop(i, None)
                self.modified.discard(i)
                if i in self.cluster.running():
                    await self.cluster.astop(i)
            if i not in self.cluster.running():
                await self.restart(i)
        self.down.clear()
        self.end()
