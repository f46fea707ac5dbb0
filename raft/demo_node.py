"""A runnable Raft node with the KV test state machine and a tiny control interface.

Why: the integration test and the Raft benchmark need real processes (kill -9, restart)
that exercise the whole consensus stack without the queue broker on top. The control
interface is a loopback TCP line of 4-byte length-prefixed msgpack frames, pipelined:
a request is ``[req_id, op, arg]`` and its answer ``[req_id, ok, value]``, answered in
completion order. Proposals are answered from future callbacks (no task per request) and
answers are flushed once per event-loop turn, so many in-flight requests cost few syscalls.

Ops: ``ping``; ``propose`` data -> result; ``propose_many`` [data...] -> [[ok, value]...];
``read_index`` -> index; ``status`` -> dict; ``log`` [lo, hi] -> [[index, term, crc32]...];
``kv_summary`` -> dict; ``kv_keys`` -> [key...]; ``get`` key -> value; ``transfer`` to.
Errors are ``{"error": code, "message": str, "leader_id": int|None, "leader_addr": ...}``
with code one of not_leader, dropped, stopped, overloaded, bad_request, timeout, internal.

    python -m raft.demo_node --id 1 --raft 127.0.0.1:7001 \\
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \\
        --data-dir /tmp/n1 --control 127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import msgpack
import structlog

from raft.driver import NodeStopped, Overloaded, RaftNode
from raft.errors import LeadershipLost, NotLeader, ProposalDropped, RaftError
from raft.framing import FrameDecoder, FrameError, frame
from raft.kv_state_machine import KvStateMachine
from raft.lmdb_env import LmdbEnv
from raft.lmdb_storage import LmdbStorage
from raft.messages import ConfState, pack

log = structlog.get_logger("raft.demo_node")

MAX_CONTROL_FRAME_BYTES = 64 * 1024 * 1024
Address = tuple[str, int]


def parse_addr(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_peers(text: str) -> dict[int, Address]:
    peers: dict[int, Address] = {}
    for part in text.split(","):
        node_id, sep, addr = part.partition("=")
        if not sep or not node_id.isdigit() or int(node_id) <= 0:
            raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT, got {part!r}")
        peers[int(node_id)] = parse_addr(addr)
    return peers


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
    """Loopback control interface of a demo node (see the module docstring)."""

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


class ControlError(RaftError):
    """A control request failed; `value` is the node's error object."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value
        self.code = value.get("error", "internal") if isinstance(value, dict) else "internal"
        super().__init__(f"{self.code}: {value}")


class ControlClient:
    """Pipelined async client of the control interface (tests and benchmark)."""

    def __init__(self, addr: Address) -> None:
        self.addr = addr
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._futs: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 1
        self._read_task: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._batch: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._batch_scheduled = False

    async def connect(self, timeout_s: float = 5.0) -> ControlClient:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(*self.addr, limit=1 << 20), timeout_s
        )
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(BaseException):
                await self._read_task
        self._fail_all(ConnectionError("control connection closed"))

    async def __aenter__(self) -> ControlClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail_all(self, exc: BaseException) -> None:
        for fut in self._futs.values():
            if not fut.done():
                fut.set_exception(exc)
        self._futs.clear()

    async def _read_loop(self) -> None:
        assert self._reader is not None
        decoder = FrameDecoder(MAX_CONTROL_FRAME_BYTES)
        try:
            while True:
                chunk = await self._reader.read(1 << 20)
                if not chunk:
                    break
                for body in decoder.feed(chunk):
                    req_id, ok, value = msgpack.unpackb(body, raw=False)
                    fut = self._futs.pop(req_id, None)
                    if fut is None or fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(ControlError(value))
        except (ConnectionError, OSError):
            pass
        self._fail_all(ConnectionError("control connection lost"))

    def request_nowait(self, op: str, arg: Any = None) -> asyncio.Future[Any]:
        if self._writer is None or self._writer.is_closing():
            raise ConnectionError("control connection is closed")
        req_id = self._next_id
        self._next_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futs[req_id] = fut
        self._out.append(frame(pack([req_id, op, arg])))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(self._out))
        self._out.clear()

    async def request(self, op: str, arg: Any = None, timeout_s: float | None = 10.0) -> Any:
        fut = self.request_nowait(op, arg)
        if timeout_s is None:
            return await fut
        return await asyncio.wait_for(fut, timeout_s)

    def propose_batched(self, data: bytes) -> asyncio.Future[Any]:
        """Coalesce every proposal made in this loop turn into one propose_many request."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((data, fut))
        if not self._batch_scheduled:
            self._batch_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_batch)
        return fut

    def _send_batch(self) -> None:
        self._batch_scheduled = False
        batch, self._batch = self._batch, []
        if not batch:
            return
        try:
            many = self.request_nowait("propose_many", [d for d, _ in batch])
        except ConnectionError as exc:
            for _d, f in batch:
                if not f.done():
                    f.set_exception(exc)
            return

        def done(m: asyncio.Future[Any]) -> None:
            exc = m.exception()
            for i, (_d, f) in enumerate(batch):
                if f.done():
                    continue
                if exc is not None:
                    f.set_exception(exc)
                    continue
                ok, value = m.result()[i]
                if ok:
                    f.set_result(value)
                else:
                    f.set_exception(ControlError(value))

        many.add_done_callback(done)


# ---------------------------------------------------------------- local process cluster


def free_loopback_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class DemoCluster:
    """N demo_node processes on loopback (tests and benchmark); stop() kills them by PID."""

    def __init__(
        self,
        root: str,
        size: int = 3,
        *,
        fsync: bool = True,
        tick_ms: int = 50,
        election_ticks: int = 10,
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.extra_args = tuple(extra_args)
        self.size = size
        ports = free_loopback_ports(2 * size)
        self.raft_addrs = {i + 1: ("127.0.0.1", ports[i]) for i in range(size)}
        self.control_addrs = {i + 1: ("127.0.0.1", ports[size + i]) for i in range(size)}
        self.fsync = fsync
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.log_level = log_level
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def command(self, node_id: int) -> list[str]:
        peers = ",".join(f"{i}={h}:{p}" for i, (h, p) in sorted(self.raft_addrs.items()))
        host, port = self.raft_addrs[node_id]
        chost, cport = self.control_addrs[node_id]
        cmd = [
            sys.executable,
            "-m",
            "raft.demo_node",
            "--id",
            str(node_id),
            "--raft",
            f"{host}:{port}",
            "--peers",
            peers,
            "--data-dir",
            os.path.join(self.root, f"n{node_id}"),
            "--control",
            f"{chost}:{cport}",
            "--tick-ms",
            str(self.tick_ms),
            "--election-ticks",
            str(self.election_ticks),
            "--log-level",
            self.log_level,
        ]
        if not self.fsync:
            cmd.append("--no-fsync")
        cmd.extend(self.extra_args)
        return cmd

    def start_node(self, node_id: int, env: dict[str, str] | None = None) -> None:
        """Start one node; `env` adds variables (e.g. RAFTQ_FAILPOINT) to its environment."""
        os.makedirs(self.root, exist_ok=True)
        proc_env = {**os.environ, **(env or {})}
        with open(os.path.join(self.root, f"n{node_id}.log"), "ab") as log_file:
            self.procs[node_id] = subprocess.Popen(
                self.command(node_id), stdout=log_file, stderr=log_file, env=proc_env
            )

    async def wait_exit(self, node_id: int, timeout_s: float) -> int:
        """Wait (without blocking the loop) for a node to exit on its own; its exit code."""
        proc = self.procs[node_id]
        async with asyncio.timeout(timeout_s):
            while proc.poll() is None:
                await asyncio.sleep(0.02)
        del self.procs[node_id]
        return proc.returncode

    def start(self) -> None:
        for node_id in self.raft_addrs:
            self.start_node(node_id)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(node_id, None)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait(10)

    def stop(self) -> None:
        for node_id in list(self.procs):
            self.kill(node_id)

    async def connect(self, node_id: int, timeout_s: float = 15.0) -> ControlClient:
        """Connect to a node's control port, retrying while the process starts."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    return await ControlClient(self.control_addrs[node_id]).connect()
                except OSError:
                    proc = self.procs.get(node_id)
                    if proc is not None and proc.poll() is not None:
                        raise RuntimeError(
                            f"node {node_id} exited with {proc.returncode}; see {self.root}"
                        ) from None
                    await asyncio.sleep(0.05)

    async def wait_leader(
        self, clients: dict[int, ControlClient], timeout_s: float = 15.0, poll_s: float = 0.02
    ) -> int:
        """Wait until one of `clients` is leader and every one of them agrees; its id."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    sts = await asyncio.gather(
                        *(c.request("status", timeout_s=2.0) for c in clients.values())
                    )
                except (ControlError, ConnectionError, TimeoutError):
                    sts = []
                leaders = [s["id"] for s in sts if s["role"] == "leader"]
                if len(leaders) == 1 and all(s["leader_id"] == leaders[0] for s in sts):
                    return leaders[0]
                await asyncio.sleep(poll_s)


# ---------------------------------------------------------------- process entry point


def configure_logging(level: str) -> None:
    """JSON lines on stderr, filtered at `level` before any formatting work."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


async def run_node(args: argparse.Namespace) -> int:
    peers: dict[int, Address] = args.peers
    if args.id not in peers:
        peers[args.id] = args.raft
    env = LmdbEnv(args.data_dir, sync=not args.no_fsync)
    storage = LmdbStorage(
        env,
        initial_conf=ConfState(tuple(sorted(peers))),
        cluster_id=args.cluster_id,
        node_id=args.id,
    )
    sm = KvStateMachine(env)
    node = RaftNode(
        args.id,
        peers,
        storage,
        sm,
        cluster_id=args.cluster_id,
        shared_txn=True,  # the KV state lives in the log's LMDB env
        tick_ms=args.tick_ms,
        election_ticks=args.election_ticks,
        listen=args.raft,
        max_inflight_readies=args.max_inflight_readies,
        storage_thread=args.storage_thread,
    )
    await node.start()
    control = ControlServer(node, sm, storage)
    bound = await control.start(args.control)
    log.info("demo_node.ready", node_id=args.id, control=f"{bound[0]}:{bound[1]}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = loop.create_task(stop.wait())
    closed = loop.create_task(node.wait_closed())
    await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
    failed = node.failure is not None
    closed.cancel()
    waiter.cancel()
    await control.stop()
    await node.stop(transfer=not failed)
    storage.close()
    env.close()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raft.demo_node")
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--raft", type=parse_addr, required=True, help="peer listen HOST:PORT")
    parser.add_argument("--peers", type=parse_peers, required=True, help="ID=HOST:PORT,...")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--control", type=parse_addr, required=True, help="control HOST:PORT")
    parser.add_argument("--cluster-id", default="raftq-demo")
    parser.add_argument("--tick-ms", type=int, default=50)
    parser.add_argument("--election-ticks", type=int, default=10)
    parser.add_argument("--no-fsync", action="store_true", help="benchmark comparison only")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--max-inflight-readies", type=int, default=4)
    parser.add_argument(
        "--storage-thread", action="store_true", help="persist/apply on a thread, not inline"
    )
    parser.add_argument("--gil-switch-ms", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.control[0] not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the control interface binds loopback only")
    configure_logging(args.log_level)
    # The storage thread does Python work between fsyncs; with the default 5 ms GIL switch
    # interval every socket call of the event loop could wait that long to get the GIL back.
    sys.setswitchinterval(args.gil_switch_ms / 1000.0)
    return asyncio.run(run_node(args))


if __name__ == "__main__":
    raise SystemExit(main())
