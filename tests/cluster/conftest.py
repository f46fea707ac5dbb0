"""A fake raftq cluster for client and CLI tests: real aiohttp servers on 127.0.0.1.

The fake speaks the API.md contract with an in-memory queue model and scripted roles, so
tests can make a node a follower (307 to the leader), answer 503 no_leader with
Retry-After, drop the connection after applying a send, or answer a definite 4xx. It runs
on its own event loop in a thread, so both async tests and the blocking Client/CLI
(which block the calling thread) can talk to it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from cluster.launcher import free_ports


@dataclass
class FakeMessage:
    id: str
    seq: int
    wire: dict[str, Any]
    visible_at: float = 0.0
    receive_count: int = 0
    receipt: str | None = None
    lease_until: float = 0.0
    enqueued_at: float = field(default_factory=time.time)


@dataclass
class FakeQueue:
    name: str
    config: dict[str, Any]
    messages: dict[str, FakeMessage] = field(default_factory=dict)
    acked: int = 0

    def expire_leases(self, now: float) -> None:
        for m in self.messages.values():
            if m.receipt is not None and m.lease_until <= now:
                m.receipt = None
                m.visible_at = now

    def visible(self, now: float) -> list[FakeMessage]:
        self.expire_leases(now)
        ready = [m for m in self.messages.values() if m.receipt is None and m.visible_at <= now]
        return sorted(ready, key=lambda m: m.seq)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        self.expire_leases(now)
        in_flight = sum(1 for m in self.messages.values() if m.receipt is not None)
        delayed = sum(1 for m in self.messages.values() if m.receipt is None and m.visible_at > now)
        return {
            "name": self.name,
            "depth": len(self.messages) - in_flight - delayed,
            "in_flight": in_flight,
            "delayed": delayed,
            "acked_total": self.acked,
        }


NODE_ID = web.AppKey("node_id", int)


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}, **extra}, status=status)


class FakeCluster:
    """N fake nodes sharing one queue model. Mutate `leader_id`, `modes`, `scripted` freely."""

    def __init__(self, n: int = 3) -> None:
        self.ports = free_ports(n)
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.leader_id: int | None = 1
        self.term = 1
        #: node id -> "normal" | "no_leader" (503 to everything) | "down" (not listening)
        #: | "hang" (accepts requests, answers none until the mode changes: a paused process)
        self.modes: dict[int, str] = dict.fromkeys(range(1, n + 1), "normal")
        #: Retry-After seconds sent with 503 no_leader
        self.retry_after_s = "0.2"
        #: queue requests answered by the leader after applying, with the connection dropped
        self.drop_after_apply = 0
        #: (status, code) to answer the next queue request with, instead of serving it
        self.scripted: list[tuple[int, str]] = []
        #: also hide the leader in /v1/cluster answers (forces the 307 path)
        self.hide_leader = False
        #: node id -> fields replacing that node's /v1/cluster answer (e.g. a stale leader)
        self.cluster_overrides: dict[int, dict[str, Any]] = {}
        self.queues: dict[str, FakeQueue] = {}
        self.dedup: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[int, str, str, Any]] = []  # (node, method, path, body)
        self.cluster_probes: list[int] = []  # node ids asked GET /v1/cluster, in order
        self.nacks: list[tuple[str, float]] = []
        self.extends: list[tuple[str, float]] = []
        self.extend_requests = 0
        self._seq = itertools.count(1)
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._runners: dict[int, web.AppRunner] = {}
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeCluster:
        self._thread.start()
        for node_id in self.modes:
            self.call(self._start_node(node_id))
        return self

    def close(self) -> None:
        self._closing = True  # releases hung handlers, so the runners can stop
        for node_id in list(self._runners):
            self.call(self._stop_node(node_id))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start_node(self, node_id: int) -> None:
        app = web.Application()
        app[NODE_ID] = node_id
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/cluster", self._cluster)
        app.router.add_route("*", "/v1/queues", self._queue_api)
        app.router.add_route("*", "/v1/queues/{name}", self._queue_api)
        app.router.add_route("*", "/v1/queues/{name}/{action}", self._queue_api)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.ports[node_id - 1]).start()
        self._runners[node_id] = runner

    async def _stop_node(self, node_id: int) -> None:
        runner = self._runners.pop(node_id, None)
        if runner is not None:
            await runner.cleanup()

    def take_down(self, node_id: int) -> None:
        """Close node `node_id`'s port (connection refused from now on)."""
        self.call(self._stop_node(node_id))
        self.modes[node_id] = "down"

    def url(self, node_id: int) -> str:
        return self.urls[node_id - 1]

    def count(self, path_suffix: str, node: int | None = None) -> int:
        return sum(
            1
            for n, _, p, _ in self.requests
            if p.endswith(path_suffix) and (node is None or n == node)
        )

    # --- handlers ------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node_id": request.app[NODE_ID]})

    async def _hang_while_paused(self, node_id: int) -> None:
        while self.modes[node_id] == "hang" and not self._closing:
            await asyncio.sleep(0.02)

    async def _cluster(self, request: web.Request) -> web.Response:
        node_id = request.app[NODE_ID]
        self.cluster_probes.append(node_id)
        await self._hang_while_paused(node_id)
        leader = None
        if (
            self.leader_id is not None
            and self.modes[node_id] != "no_leader"
            and not self.hide_leader
        ):
            leader = {"id": self.leader_id, "url": self.url(self.leader_id)}
        nodes = [
            {
                "id": i,
                "url": self.url(i),
                "role": "leader" if i == self.leader_id else "follower",
                "match_index": 10,
                "voter": True,
            }
            for i in self.modes
        ]
        return web.json_response(
            {
                "cluster_id": "fake",
                "node_id": node_id,
                "leader": leader,
                "term": self.term,
                "commit_index": 10 + node_id,
                "applied_index": 9 + node_id,
                "nodes": nodes,
                **self.cluster_overrides.get(node_id, {}),
            }
        )

    async def _queue_api(self, request: web.Request) -> web.StreamResponse:
        node_id = request.app[NODE_ID]
        body = await request.json() if request.can_read_body else None
        self.requests.append((node_id, request.method, request.path, body))
        await self._hang_while_paused(node_id)
        if self.leader_id is None or self.modes[node_id] == "no_leader":
            return web.json_response(
                {"error": {"code": "no_leader", "message": "election in progress"}},
                status=503,
                headers={"Retry-After": self.retry_after_s},
            )
        if node_id != self.leader_id:
            leader_url = self.url(self.leader_id)
            resp = _error(
                307,
                "not_leader",
                "not the leader",
                leader_id=self.leader_id,
                leader_url=leader_url,
            )
            resp.headers["Location"] = leader_url + request.path_qs
            return resp
        if self.scripted:
            status, code = self.scripted.pop(0)
            return _error(status, code, f"scripted {code}", item=0)
        resp = await self._serve(request, body)
        if self.drop_after_apply > 0 and request.method == "POST":
            self.drop_after_apply -= 1
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise ConnectionResetError("dropped after apply (test)")
        return resp

    async def _serve(self, request: web.Request, body: Any) -> web.Response:
        name = request.match_info.get("name")
        action = request.match_info.get("action")
        if name is None:
            return web.json_response({"queues": [q.stats() for q in self.queues.values()]})
        if request.method == "PUT" and action is None:
            if not isinstance(body, dict) or any(
                k == "visibility_timeout_s" and not isinstance(v, int | float)
                for k, v in body.items()
            ):
                return _error(400, "bad_request", "visibility_timeout_s must be a number")
            created = name not in self.queues
            config = {"visibility_timeout_s": 30, "fifo": False, **body}
            if created:
                self.queues[name] = FakeQueue(name, config)
            else:
                self.queues[name].config.update(body)
            return web.json_response(
                {"name": name, **self.queues[name].config}, status=201 if created else 200
            )
        q = self.queues.get(name)
        if q is None:
            return _error(404, "not_found", f"queue {name!r} does not exist")
        now = time.monotonic()
        if action is None and request.method == "GET":
            return web.json_response({**q.config, **q.stats()})
        if action is None and request.method == "DELETE":
            del self.queues[name]
            return web.json_response({"deleted": name})
        if action == "purge":
            n = len(q.messages)
            q.messages.clear()
            return web.json_response({"purged": n})
        if action == "redrive":
            return web.json_response({"redriven": 0})
        if action == "messages":
            results = []
            for wire in body["messages"]:
                if "body" not in wire and "body_b64" not in wire:
                    return _error(400, "bad_request", "message needs body or body_b64")
                key = (name, wire.get("dedup_id") or uuid.uuid4().hex)
                if key in self.dedup:
                    results.append({"id": self.dedup[key], "seq": 0, "duplicate": True})
                    continue
                seq = next(self._seq)
                msg = FakeMessage(
                    id=f"m{seq}", seq=seq, wire=wire, visible_at=now + (wire.get("delay_s") or 0)
                )
                q.messages[msg.id] = msg
                self.dedup[key] = msg.id
                results.append({"id": msg.id, "seq": seq, "duplicate": False})
            if request.query.get("ack") == "none":
                return web.json_response({"accepted": len(results)}, status=202)
            return web.json_response({"messages": results})
        if action == "receive":
            until = now + float(body.get("wait_s") or 0)
            vt = body.get("visibility_timeout_s") or q.config["visibility_timeout_s"]
            while True:
                ready = q.visible(time.monotonic())[: int(body.get("max") or 1)]
                if ready or time.monotonic() >= until:
                    break
                await asyncio.sleep(0.02)
            out = []
            for m in ready:
                m.receive_count += 1
                m.receipt = uuid.uuid4().hex
                m.lease_until = time.monotonic() + vt
                item = {
                    "id": m.id,
                    "receipt": m.receipt,
                    "receive_count": m.receive_count,
                    "enqueued_at": m.enqueued_at,
                    "attributes": m.wire.get("attributes", {}),
                    "group_id": m.wire.get("group_id"),
                }
                if "body_b64" in m.wire:
                    item["body_b64"] = m.wire["body_b64"]
                else:
                    item["body"] = m.wire["body"]
                out.append(item)
                if body.get("auto_ack"):
                    del q.messages[m.id]
            return web.json_response({"messages": out})
        by_receipt = {m.receipt: m for m in q.messages.values() if m.receipt is not None}
        q.expire_leases(now)
        receipts = body.get("receipts") or []
        stale = [r for r in receipts if r not in by_receipt or by_receipt[r].receipt != r]
        live = [by_receipt[r] for r in receipts if r not in stale]
        if action == "ack":
            for m in live:
                del q.messages[m.id]
                q.acked += 1
            return web.json_response({"acked": len(live), "stale": stale})
        if action == "nack":
            delay_s = float(body.get("delay_s") or 0)
            for m in live:
                m.receipt = None
                m.visible_at = now + delay_s
                self.nacks.append((m.id, delay_s))
            return web.json_response({"nacked": len(live), "stale": stale})
        if action == "extend":
            self.extend_requests += 1
            vt = float(body["visibility_timeout_s"])
            for m in live:
                m.lease_until = now + vt
                self.extends.append((m.id, vt))
            return web.json_response({"extended": len(live), "stale": stale})
        return _error(404, "not_found", f"no route {request.method} {request.path}")


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    """Three fake nodes; node 1 leads."""
    cluster = FakeCluster(3).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def dead_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_ports(1)[0]}"
