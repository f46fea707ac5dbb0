"""`python -m benchmarks.ab`: two node configurations side by side, the same workloads in turns.

Why: this machine's speed drifts by tens of percent within minutes, so a lever (an event
loop, a codec, a flag) is judged only against its baseline in the same run. Both local
clusters run at once (the idle one costs little); each round runs every workload on A
and then on B (B first in odd rounds), and the table gives B/A per round and its median.

    python -m benchmarks.ab --a-label fsync --b-label no-fsync --b-arg=--unsafe-no-fsync \\
        send1 send100 --rounds 3 --duration 5

A lever with no node flag can be measured through a temporary environment variable that
the node reads (`--a-env KEY=VALUE`, `--b-env ...`): that is how the experiment switches
were settled (docs/DESIGN.md, "Settled switches").

Options other than the ones below are `raftq bench`'s (concurrency, prefill, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from dataclasses import dataclass, field

from benchmarks import queue_bench
from benchmarks.queue_workloads import Result
from cluster.launcher import LocalCluster
from common.progress import Bar


@dataclass
class Side:
    """One configuration: its label, node environment and extra node arguments."""

    label: str
    env: dict[str, str] = field(default_factory=dict)
    node_args: tuple[str, ...] = ()
    cluster: LocalCluster | None = None


def _env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"benchmarks.ab: expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--a-label", default="A")
    p.add_argument("--b-label", default="B")
    p.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--a-arg", action="append", default=[], help="an extra node argument for A")
    p.add_argument("--b-arg", action="append", default=[], help="an extra node argument for B")
    return p


def start(side: Side, nodes: int, data_dir: str) -> LocalCluster:
    cluster = LocalCluster.on_free_ports(
        nodes, data_dir, ("--log-level", "warning", *side.node_args)
    )
    for node_id in cluster.ids:
        cluster.start_node(node_id, env=side.env)
    cluster.wait_for_leader(timeout_s=30)
    return cluster


def ratios(rows: list[tuple[int, str, Result, Result]]) -> dict[str, list[float]]:
    """Per workload, B/A msgs/s of each round."""
    out: dict[str, list[float]] = {}
    for _round, name, a, b in rows:
        out.setdefault(name, []).append(b.rate / a.rate if a.rate else float("nan"))
    return out


def print_report(a: Side, b: Side, rows: list[tuple[int, str, Result, Result]]) -> None:
    print(f"A = {a.label} {a.env or ''} {' '.join(a.node_args)}".rstrip())
    print(f"B = {b.label} {b.env or ''} {' '.join(b.node_args)}".rstrip())
    header = f"{'round':<6}{'workload':<14}{'A msgs/s':>12}{'B msgs/s':>12}{'B/A':>7}"
    header += f"{'A p50 ms':>10}{'B p50 ms':>10}{'A us/op':>9}{'B us/op':>9}"
    print(header)
    for rnd, name, ra, rb in rows:
        print(
            f"{rnd:<6}{name:<14}{ra.rate:>12,.0f}{rb.rate:>12,.0f}{rb.rate / ra.rate:>7.2f}"
            f"{_p50(ra):>10.2f}{_p50(rb):>10.2f}{_leader_us(ra):>9,.0f}{_leader_us(rb):>9,.0f}"
        )
    for name, values in ratios(rows).items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name}: B/A per round {shown}; median {statistics.median(values):.2f}")


def _p50(r: Result) -> float:
    lat = sorted(r.latencies_ms) or [0.0]
    return lat[len(lat) // 2]


def _leader_us(r: Result) -> float:
    """The leader's CPU per request (or op) in microseconds, when it was measured."""
    if not r.cpu or not r.ops:
        return float("nan")
    return r.cpu.get("leader", 0.0) * r.seconds / r.ops * 1e6


def main(argv: list[str] | None = None) -> int:
    own, rest = parser().parse_known_args(argv)
    bench_args = queue_bench.parser().parse_args(rest)
    workloads = bench_args.workloads or list(queue_bench.DEFAULT_SET)
    unknown = [w for w in workloads if w not in queue_bench.WORKLOADS or w == "snapshot"]
    if unknown or bench_args.servers:
        raise SystemExit(
            f"benchmarks.ab: own clusters only, workloads from {queue_bench.WORKLOADS}"
        )
    if own.a_label == own.b_label:
        raise SystemExit("benchmarks.ab: --a-label and --b-label must differ")
    a = Side(own.a_label, _env(own.a_env), tuple(own.a_arg))
    b = Side(own.b_label, _env(own.b_env), tuple(own.b_arg))
    queue_bench.logs_to_stderr()
    rows: list[tuple[int, str, Result, Result]] = []
    with tempfile.TemporaryDirectory(prefix="raftq-ab-") as tmp:
        try:
            a.cluster = start(a, bench_args.nodes, f"{tmp}/a")
            b.cluster = start(b, bench_args.nodes, f"{tmp}/b")
            rounds = bench_args.rounds
            with Bar(rounds * len(workloads) * 2, bench_args.progress) as bar:
                for rnd in range(rounds):
                    for name in workloads:
                        one = argparse.Namespace(**{**vars(bench_args), "workloads": [name]})
                        one.rounds, one.progress = 1, False  # one bar: this one
                        got: dict[str, Result] = {}
                        for side in (a, b) if rnd % 2 == 0 else (b, a):
                            assert side.cluster is not None
                            bar.step(f"round {rnd + 1}/{rounds} {name} on {side.label}")
                            results = asyncio.run(
                                queue_bench.run(one, side.cluster.urls, side.cluster)
                            )
                            got[side.label] = results[0]
                            bar.advance()
                        rows.append((rnd + 1, name, got[a.label], got[b.label]))
        finally:
            for side in (a, b):
                if side.cluster is not None:
                    side.cluster.stop_all()
    print_report(a, b, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
