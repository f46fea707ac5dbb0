"""The node side of the demo control wire (`benchmarks.demo.protocol`), on a `RaftNode`.

Proposals are answered from future callbacks (no task per request) and answers are
flushed once per event-loop turn, so many in-flight requests cost few syscalls.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import msgpack
import structlog

from benchmarks.demo.kv_state_machine import KvStateMachine
from benchmarks.demo.protocol import MAX_CONTROL_FRAME_BYTES, Address
from raft.driver import NodeStopped, Overloaded, RaftNode
from raft.errors import LeadershipLost, NotLeader, ProposalDropped, RaftError
from raft.framing import FrameDecoder, FrameError, frame
from raft.lmdb_storage import LmdbStorage
from raft.messages import pack

log = structlog.get_logger("benchmarks.demo.control_server")


def error_value(exc: BaseException) -> dict[str, Any]:
    """Map an exception to the control protocol's error object."""
    if isinstance(exc, NotLeader):
        return {
            "error": "not_leader",
            "message": str(exc),
            "leader_id": exc.leader_id,
            "leader_addr": exc.leader_addr,
        }
    if isinstance(exc, ProposalDropped):
        return {"error": "dropped", "message": str(exc)}
    if isinstance(exc, LeadershipLost):
        return {"error": "leadership_lost", "message": str(exc)}
    if isinstance(exc, NodeStopped):
        return {"error": "stopped", "message": str(exc)}
    if isinstance(exc, Overloaded):
        return {"error": "overloaded", "message": str(exc)}
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return {"error": "bad_request", "message": str(exc)}
    if isinstance(exc, TimeoutError):
        return {"error": "timeout", "message": "timed out"}
    return {"error": "internal", "message": repr(exc)}


class _Connection:
    """One control connection: decode pipelined requests, batch answers per loop turn."""

    def __init__(self, server: ControlServer, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.writer = writer
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.closed = False

    def answer(self, req_id: int, ok: bool, value: Any) -> None:
        if self.closed:
            return
        self.out.append(frame(pack([req_id, ok, value])))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and not self.closed:
            self.writer.write(b"".join(self.out))
        self.out.clear()


class ControlServer:
    """Loopback control interface of a demo node (the wire: `benchmarks.demo.protocol`)."""

    def __init__(self, node: RaftNode, sm: KvStateMachine, storage: LmdbStorage) -> None:
        self.node = node
        self.sm = sm
        self.storage = storage
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self, listen: Address) -> Address:
        self._server = await asyncio.start_server(
            self._serve, listen[0], listen[1], reuse_address=True, limit=1 << 20
        )
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, writer)
        self._conns.add(writer)
        decoder = FrameDecoder(MAX_CONTROL_FRAME_BYTES)
        try:
            while True:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    return
                try:
                    bodies = decoder.feed(chunk)
                except FrameError as exc:
                    log.warning("control.bad_frame", reason=exc.reason)
                    return
                for body in bodies:
                    self._dispatch(conn, body)
                if writer.transport.get_write_buffer_size() > 8 << 20:
                    await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            conn.closed = True
            self._conns.discard(writer)
            writer.close()

    def _dispatch(self, conn: _Connection, body: bytes) -> None:
        try:
            req = msgpack.unpackb(body, raw=False)
            req_id, op, arg = req
            if type(req_id) is not int:
                raise ValueError("req_id must be an int")
        except Exception as exc:
            conn.answer(-1, False, {"error": "bad_request", "message": f"bad request: {exc}"})
            return
        try:
            if op == "propose":
                if type(arg) is not bytes:
                    raise ValueError("propose takes bytes")
                fut = self.node.propose_nowait(arg)
                fut.add_done_callback(_answer_from(conn, req_id))
            elif op == "propose_many":
                self._propose_many(conn, req_id, arg)
            elif op == "read_index":
                self._spawn(conn, req_id, self.node.read_index(timeout_s=5.0))
            elif op == "transfer":
                self._spawn(conn, req_id, self.node.transfer_leader(int(arg)))
            elif op == "ping":
                conn.answer(req_id, True, self.node.node_id)
            elif op == "status":
                st = self.node.status()
                doc = {**asdict(st), "role": st.role.label, **self.node.diagnostics()}
                doc["progress"] = {str(p): list(v) for p, v in st.progress.items()}
                conn.answer(req_id, True, doc)
            elif op == "log":
                conn.answer(req_id, True, self._log_dump(arg))
            elif op == "kv_summary":
                conn.answer(req_id, True, self.sm.summary())
            elif op == "kv_keys":
                conn.answer(req_id, True, self.sm.keys())
            elif op == "get":
                conn.answer(req_id, True, self.sm.get(bytes(arg)))
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            conn.answer(req_id, False, error_value(exc))

    def _propose_many(self, conn: _Connection, req_id: int, datas: Any) -> None:
        if type(datas) is not list or not all(type(d) is bytes for d in datas) or not datas:
            raise ValueError("propose_many takes a non-empty list of bytes")
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Any]] = []
        for d in datas:
            try:
                futs.append(self.node.propose_nowait(d))
            except RaftError as exc:  # e.g. Overloaded part-way: answer per item
                failed: asyncio.Future[Any] = loop.create_future()
                failed.set_exception(exc)
                futs.append(failed)
        remaining = len(futs)

        def one_done(_f: asyncio.Future[Any]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                out = []
                for f in futs:
                    exc = f.exception()
                    out.append([True, f.result()] if exc is None else [False, error_value(exc)])
                conn.answer(req_id, True, out)

        for f in futs:
            f.add_done_callback(one_done)

    def _spawn(self, conn: _Connection, req_id: int, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(_answer_from(conn, req_id))

    def _log_dump(self, arg: Any) -> list[list[int]]:
        lo, hi = arg if arg is not None else (None, None)
        first = self.storage.first_index()
        last = self.storage.last_index()
        lo = first if lo is None else max(int(lo), first)
        hi = last + 1 if hi is None else min(int(hi), last + 1)
        if lo >= hi:
            return []
        return [[e.index, e.term, zlib.crc32(e.data)] for e in self.storage.entries(lo, hi)]


def _answer_from(conn: _Connection, req_id: int) -> Callable[[asyncio.Future[Any]], None]:
    def done(fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            conn.answer(req_id, False, {"error": "stopped", "message": "cancelled"})
            return
        exc = fut.exception()
        if exc is None:
            conn.answer(req_id, True, fut.result())
        else:
            conn.answer(req_id, False, error_value(exc))

    return done
