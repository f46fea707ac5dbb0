"""The queue state machine alone: CPU microseconds of apply per message, per replica.

Why: every replica applies every command, so on a 3-node cluster each message costs
three applies of CPU before any HTTP or Raft work. This figure bounds what the whole
cluster can do on a given number of cores (`ceiling_msgs_per_s`: cores / (3 x apply),
as if nothing else ran), which is how the speed targets were judged. fsync is off here:
it measures the Python and LMDB CPU work, not the disk. Commands are applied in groups,
one LMDB transaction per group, the way a loaded cluster's Readies carry them.
`txn_1ack_1send` counts per transaction (a receive of one message, then a transaction that
acks it and sends its body on), the shape of `raftq bench txn`.

    python -m benchmarks.apply_bench [--batches 200 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from cluster.message import new_dedup_id
from node.commands import encode_command
from node.state_machine import QueueStateMachine
from raft.lmdb_env import LmdbEnv
from raft.messages import Entry

REPLICAS = 3
# Commands per apply call: what `raftq bench` keeps in flight (64 requests or consumers
# in every workload), so one Ready under that load carries at most this many.
GROUP = 64


class _Applier:
    """Applies commands as the next log entries, with a moving stamp.

    `many` applies a group of commands in ONE call, as one Ready of a loaded cluster does
    (one LMDB transaction for all of them): with one transaction per command, the commit
    alone doubled the figure for 1-message sends.
    """

    def __init__(self, path: str) -> None:
        self.env = LmdbEnv(path, sync=False, map_size=1 << 30)  # no growth mid-run
        self.sm = QueueStateMachine(self.env)
        self.index = self.sm.applied_index()
        self.now_ms = 1_000_000
        self.apply_s = 0.0  # time inside the state machine's apply, nothing else
        self.timing = True  # off while a workload sets up what it consumes

    def __call__(self, op: str, **fields: Any) -> Any:
        return self.many([(op, fields)])[0]

    def many(self, commands: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        entries = []
        for op, fields in commands:
            self.index += 1
            self.now_ms += 1
            entries.append(Entry(self.index, 1, data=encode_command(op, self.now_ms, **fields)))
        started = time.perf_counter()
        results = self.sm.apply(entries)
        if self.timing:
            self.apply_s += time.perf_counter() - started
        for (op, _fields), result in zip(commands, results, strict=True):
            if isinstance(result, dict) and "error" in result:
                raise RuntimeError(f"{op} failed: {result['error']}")
        return results


def measure(batches: int, path: str, repeats: int = 3) -> dict[str, float]:
    """µs of apply per message for each workload shape (one queue each); the best run counts.

    The workloads take turns, one run each per round, so a slow spell of the machine
    (its speed varies by tens of percent from minute to minute) slows one run of every
    workload rather than all runs of one, and ratios between workloads stay meaningful.
    """
    apply = _Applier(path)
    body = b"x" * 100

    def sends(queue: str, make_id: Callable[[], str] | None) -> Callable[[], int]:
        apply("queue_put", name=queue, config={})

        def run() -> int:
            n = 0
            for _ in range(0, batches, GROUP):
                group = []
                for _ in range(GROUP):
                    msgs: list[dict[str, Any]] = [{"body": body} for _ in range(100)]
                    if make_id is not None:
                        for m in msgs:
                            m["dedup_id"] = make_id()
                    group.append(("send", {"queue": queue, "messages": msgs}))
                    n += len(msgs)
                apply.many(group)
            return n

        return run

    def receive_ack() -> int:  # takes what the send100 run of the same round added
        n = 0
        receive = ("receive", {"queue": "plain", "max": 10, "visibility_timeout_s": 30})
        for _ in range(0, batches * 10, GROUP):
            got = [r["messages"] for r in apply.many([receive] * GROUP)]
            apply.many(
                [("ack", {"queue": "plain", "receipts": [m["receipt"] for m in g]}) for g in got]
            )
            n += sum(len(g) for g in got)
        return n

    def send_one() -> int:
        one = ("send", {"queue": "plain", "messages": [{"body": body}]})
        n = 0
        for _ in range(0, batches * 10, GROUP):
            n += len(apply.many([one] * GROUP))
        return n

    def txn_1ack_1send() -> int:
        """Receive one message and move it with a 1-ack-1-send transaction; per transaction.

        The shape of `raftq bench txn`. The messages it consumes are sent untimed first.
        """
        txns = batches * 5 // GROUP * GROUP or GROUP
        apply.timing = False
        for _ in range(txns // 100 + 1):
            apply("send", queue="txn-in", messages=[{"body": body} for _ in range(100)])
        apply.timing = True
        receive = ("receive", {"queue": "txn-in", "max": 1, "visibility_timeout_s": 300})
        for _ in range(0, txns, GROUP):
            got = [r["messages"][0] for r in apply.many([receive] * GROUP)]
            apply.many(
                [
                    (
                        "txn",
                        {
                            "txn_id": f"bench-{m['id']}",
                            "ack": [{"queue": "txn-in", "receipt": m["receipt"]}],
                            "send": [{"queue": "txn-out", "messages": [{"body": m["body"]}]}],
                            "commit_offsets": [],
                        },
                    )
                    for m in got
                ]
            )
        return txns

    apply("queue_put", name="txn-in", config={})
    apply("queue_put", name="txn-out", config={})
    workloads: dict[str, Callable[[], int]] = {
        "send100": sends("plain", None),
        "send100dd": sends("ordered", new_dedup_id),
        "send100dd_random_ids": sends("random", lambda: uuid.uuid4().hex),
        "recv10_ack": receive_ack,
        "send1": send_one,
        "txn_1ack_1send": txn_1ack_1send,
    }
    best = dict.fromkeys(workloads, float("inf"))
    for _ in range(repeats):
        for name, run in workloads.items():
            # Only the apply counts: making dedup ids and encoding commands is the
            # client's and the leader's work, done once, not on every replica.
            started = apply.apply_s
            n = run()
            best[name] = min(best[name], (apply.apply_s - started) / n * 1e6)
    apply.env.close()
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.apply_bench")
    parser.add_argument("--batches", type=int, default=200, help="send batches of 100 per run")
    parser.add_argument(
        "--repeats", type=int, default=5, help="rounds; each workload's best run counts"
    )
    args = parser.parse_args(argv)
    if args.batches < 1 or args.repeats < 1:
        parser.error("--batches and --repeats must be positive")
    root = tempfile.mkdtemp(prefix="raftq-apply-bench-")
    try:
        us = measure(args.batches, os.path.join(root, "env"), args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cores = os.cpu_count() or 1
    shown = {k: max(0.1, round(v, 1)) for k, v in us.items()}
    result = {
        "apply_us_per_msg": shown,
        "replicas": REPLICAS,
        "cores": cores,
        "ceiling_msgs_per_s": {k: round(cores * 1e6 / (REPLICAS * v)) for k, v in shown.items()},
    }
    print(json.dumps(result, indent=2))  # CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
