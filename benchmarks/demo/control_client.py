"""Pipelined async client of the demo control wire (`benchmarks.demo.protocol`).

Many requests ride one connection; requests made in one event-loop turn go out in one
write, and `propose_batched` coalesces a turn's proposals into one ``propose_many``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgpack

from benchmarks.demo.protocol import MAX_CONTROL_FRAME_BYTES, Address
from raft.errors import RaftError
from raft.framing import FrameDecoder, frame
from raft.messages import pack


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
