"""Raft benchmark: committed proposals/s and commit latency on 3 real demo node processes.

Why a command and not a test: speed depends on the machine and what else runs on it, so
it is measured on demand and reported with its context (cores, load average), never
asserted. Both figures are end to end through the control interface: a proposal counts
once the leader applied it after a majority fsync (fsync is on unless --no-fsync).

    python -m benchmarks.raft_bench [--proposers 256 --size 100 --duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from benchmarks import storage_bench
from benchmarks.demo.control_client import ControlClient
from benchmarks.demo.launcher import DemoCluster
from benchmarks.demo.node import configure_logging


async def _throughput(
    client: ControlClient, proposers: int, payload: bytes, duration_s: float
) -> tuple[int, float]:
    """`proposers` concurrent loops, each with one proposal in flight; (committed, seconds)."""
    committed = 0
    deadline = time.perf_counter() + duration_s

    async def proposer() -> None:
        nonlocal committed
        while time.perf_counter() < deadline:
            await client.propose_batched(payload)
            committed += 1

    started = time.perf_counter()
    await asyncio.gather(*(proposer() for _ in range(proposers)))
    return committed, time.perf_counter() - started


async def _latency(client: ControlClient, payload: bytes, duration_s: float) -> list[float]:
    """One proposer, one proposal at a time: commit latencies in ms."""
    samples: list[float] = []
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline and len(samples) < 100_000:
        t0 = time.perf_counter()
        await client.request("propose", payload)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


def _pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def _disk_context(path: str | None) -> float:
    """Single-entry fsynced LMDB saves/s on this disk right now (the latency floor)."""
    result = storage_bench.measure(batch_sizes=(1,), duration_s=1.0, path=path)[0]
    return round(result.saves_per_s, 1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    disk_saves_per_s = _disk_context(args.dir)
    root = tempfile.mkdtemp(prefix="raftq-bench-", dir=args.dir)
    cluster = DemoCluster(
        root,
        3,
        fsync=not args.no_fsync,
        log_level="warning",
    )
    clients: dict[int, ControlClient] = {}
    try:
        cluster.start()
        clients = {i: await cluster.connect(i) for i in (1, 2, 3)}
        leader = await cluster.wait_leader(clients)
        payload = b"B" + os.urandom(max(0, args.size - 1))
        lead = clients[leader]
        for _ in range(200):  # warm up connections and code paths
            await lead.propose_batched(payload)
        n, elapsed = await _throughput(lead, args.proposers, payload, args.duration)
        lat = sorted(await _latency(lead, payload, args.latency_duration))
        status = await lead.request("status")
        return {
            "fsync": not args.no_fsync,
            "proposal_bytes": args.size,
            "proposers": args.proposers,
            "throughput_proposals_per_s": round(n / elapsed, 1),
            "throughput_committed": n,
            "throughput_seconds": round(elapsed, 2),
            "single_proposer_samples": len(lat),
            "single_p50_ms": round(statistics.median(lat), 3),
            "single_p99_ms": round(_pct(lat, 0.99), 3),
            "single_max_ms": round(lat[-1], 3),
            "leader_persists": status["driver"]["persists"],
            "leader_proposals": status["driver"]["proposals"],
            "leader_entries_per_persist": round(
                status["driver"]["proposals"] / max(1, status["driver"]["persists"]), 1
            ),
            "leader_max_persist_ms": status["max_persist_ms"],
            "disk_fsynced_saves_per_s_before": disk_saves_per_s,
            "cpus": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        for c in clients.values():
            await c.close()
        cluster.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raft_bench")
    parser.add_argument("--proposers", type=int, default=256)
    parser.add_argument("--size", type=int, default=100, help="proposal bytes")
    parser.add_argument("--duration", type=float, default=10.0, help="throughput phase, s")
    parser.add_argument("--latency-duration", type=float, default=5.0, help="latency phase, s")
    parser.add_argument("--no-fsync", action="store_true", help="comparison only")
    parser.add_argument("--dir", default=None, help="where the node data dirs go")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs")
    args = parser.parse_args(argv)
    if args.proposers < 1 or args.size < 1 or args.duration <= 0:
        parser.error("--proposers, --size and --duration must be positive")
    configure_logging("warning")
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))  # CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
