"""A small driver for QueueStateMachine tests: numbered entries, one command per call."""

from __future__ import annotations

from typing import Any

from node.commands import encode_command
from node.state_machine import QueueStateMachine
from raft.lmdb_env import LmdbEnv
from raft.messages import Entry


class Harness:
    def __init__(self, path: str) -> None:
        self.path = path
        self.env = LmdbEnv(path, sync=False)
        self.sm = QueueStateMachine(self.env)
        self.index = self.sm.applied_index()
        self.now_ms = 1_000_000

    def entry(self, op: str, ts_ms: int | None = None, **fields: Any) -> Entry:
        self.index += 1
        ts = self.now_ms if ts_ms is None else ts_ms
        return Entry(self.index, 1, data=encode_command(op, ts, **fields))

    def run(self, op: str, ts_ms: int | None = None, **fields: Any) -> Any:
        return self.sm.apply([self.entry(op, ts_ms, **fields)])[0]

    def ok(self, op: str, ts_ms: int | None = None, **fields: Any) -> Any:
        result = self.run(op, ts_ms, **fields)
        assert "error" not in result, result
        return result

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)

    def create(self, name: str, **config: Any) -> dict[str, Any]:
        return self.ok("queue_put", name=name, config=config)

    def send(self, queue: str, *bodies: bytes, **extra: Any) -> list[dict[str, Any]]:
        msgs = [{"body": b, **extra} for b in bodies]
        return self.ok("send", queue=queue, messages=msgs)["messages"]

    def receive(self, queue: str, max_n: int = 10, **extra: Any) -> list[dict[str, Any]]:
        return self.ok("receive", queue=queue, max=max_n, **extra)["messages"]

    def info(self, name: str) -> dict[str, Any]:
        info = self.sm.queue_info(name, self.now_ms)
        assert info is not None
        return info

    def reopen(self) -> None:
        self.env.close()
        self.env = LmdbEnv(self.path, sync=False)
        self.sm = QueueStateMachine(self.env)

    def close(self) -> None:
        self.env.close()
