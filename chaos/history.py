"""The operation history of a chaos run: one JSONL record per invoke and per completion.

Why Jepsen's shape (`invoke` then `ok|fail|info` with the same op_id): the checker must know
which operations might have taken effect (`info`: indeterminate) apart from the acknowledged
(`ok`) and the definitely-not-applied (`fail`), and when each happened relative to faults.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
COMPLETIONS = (OK, FAIL, INFO)


@dataclass(slots=True)
class Op:
    """One record: `time` is seconds since the run started (monotonic clock)."""

    process: str
    op_id: int
    f: str
    value: Any
    type: str
    time: float
    node: int | None = None
    error: str | None = None
    meta: dict[str, Any] | None = None  # op details (queue, message id, seq, stale receipts)

    def to_json(self) -> dict[str, Any]:
        out = {
            "process": self.process,
            "op_id": self.op_id,
            "f": self.f,
            "value": self.value,
            "type": self.type,
            "time": round(self.time, 6),
            "node": self.node,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.meta is not None:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Op:
        return cls(
            process=str(data["process"]),
            op_id=int(data["op_id"]),
            f=str(data["f"]),
            value=data.get("value"),
            type=str(data["type"]),
            time=float(data["time"]),
            node=data.get("node"),
            error=data.get("error"),
            meta=data.get("meta"),
        )


@dataclass
class History:
    """Append-only list of records, shared by every workload process of one run."""

    started: float = field(default_factory=time.monotonic)
    records: list[Op] = field(default_factory=list)
    _next_id: int = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    def invoke(self, process: str, f: str, value: Any, node: int | None = None) -> Op:
        self._next_id += 1
        op = Op(process, self._next_id, f, value, INVOKE, self.now(), node)
        self.records.append(op)
        return op

    def complete(
        self,
        invoked: Op,
        type_: str,
        value: Any = None,
        node: int | None = None,
        error: str | None = None,
    ) -> Op:
        if type_ not in COMPLETIONS:
            raise ValueError(f"completion type must be one of {COMPLETIONS}, got {type_!r}")
        op = Op(
            invoked.process,
            invoked.op_id,
            invoked.f,
            invoked.value if value is None else value,
            type_,
            self.now(),
            invoked.node if node is None else node,
            error,
        )
        self.records.append(op)
        return op

    def write_jsonl(self, path: Path) -> None:
        with path.open("w") as fh:
            for op in self.records:
                fh.write(json.dumps(op.to_json(), separators=(",", ":")) + "\n")


def read_jsonl(path: Path) -> list[Op]:
    with path.open() as fh:
        return [Op.from_json(json.loads(line)) for line in fh if line.strip()]


def pairs(records: Iterable[Op]) -> Iterator[tuple[Op, Op | None]]:
    """(invoke, completion or None if the op never completed), in invoke order."""
    open_ops: dict[int, Op] = {}
    done: dict[int, Op] = {}
    order: list[int] = []
    for op in records:
        if op.type == INVOKE:
            open_ops[op.op_id] = op
            order.append(op.op_id)
        else:
            done[op.op_id] = op
    for op_id in order:
        yield open_ops[op_id], done.get(op_id)
