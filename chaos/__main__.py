"""`python -m chaos <command>`: the chaos tools' command line (`proxy`, `run`).

`proxy` serves the Toxiproxy-compatible fault proxy; `run` runs one scenario, the whole
matrix, or lists the scenarios, and prints one table row per run. Why a table and an exit
code: CI and operators need one glance (and one bit) per run; the details live in
chaos-results/<scenario>-<seed>/.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from chaos import scenarios
from chaos.optional import MATPLOTLIB, TOXIPROXY
from chaos.proxy import ProxyError, is_loopback, parse_address
from chaos.proxy_api import serve
from chaos.proxy_url import add_toxiproxy_url_argument
from common.logging_setup import configure_logging
from common.progress import Bar

log = structlog.get_logger("chaos")


async def _run_proxy(host: str, port: int, seed: int | None, allow_remote: bool) -> None:
    """Serve the control API until SIGTERM/SIGINT, then close every proxy and connection."""
    rng = random.Random(seed)
    runner, _registry, real_port = await serve(host, port, rng, allow_remote=allow_remote)
    log.info("chaos.proxy_api.listening", host=host, port=real_port, seed=seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("chaos.proxy_api.stopping")
        await runner.cleanup()
        current = asyncio.current_task()
        leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if leftover:  # every proxy task must have ended with its connection or proxy
            log.warning("chaos.leftover_tasks", tasks=[t.get_name() for t in leftover])
        log.info("chaos.proxy_api.stopped")


def _cmd_proxy(args: argparse.Namespace) -> int:
    try:
        host, port = parse_address(args.listen, "--listen")
    except ProxyError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if not args.allow_remote and not is_loopback(host):
        print(
            f"error: --listen {args.listen} is not loopback (add --allow-remote)", file=sys.stderr
        )
        return 2
    configure_logging(args.log_format, args.log_level)
    try:
        asyncio.run(_run_proxy(host, port, args.seed, args.allow_remote))
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_proxy_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "proxy", help="run the Toxiproxy-compatible fault proxy (control API + TCP proxies)"
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8474", help="control API address (default %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for toxicity draws, jitter and slicing"
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow non-loopback addresses for the API and proxy listeners",
    )
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    parser.add_argument("--log-level", default="info")
    parser.set_defaults(handler=_cmd_proxy)


# ---------------------------------------------------------------- run


TABLE_HEADER = (
    "scenario",
    "seed",
    "nodes",
    "ok/fail/info",
    "lost",
    "dup",
    "unexp",
    "recov",
    "violations",
    "max unavail s",
)


def list_text() -> str:
    lines = []
    for s in scenarios.SCENARIOS.values():
        num = f"{s.number:>2}" if s.number is not None else " -"
        lines.append(f"{num}  {s.name:<22} {s.nodes}n {s.workload:<8} {s.description}")
    return "\n".join(lines)


def table_row(summary: dict[str, Any]) -> tuple[str, ...]:
    r = summary["result"]
    ops = r["ops"]
    return (
        summary["scenario"],
        str(summary["seed"]),
        str(summary["nodes"]),
        f"{ops['ok']}/{ops['fail']}/{ops['info']}",
        str(r["lost"]),
        str(r["duplicated"]),
        str(r["unexpected"]),
        str(r["recovered"]),
        ",".join(r["violations"]) or "none",
        str(r["properties"]["P9"]["max_unavailability_s"]),
    )


def render_table(rows: list[tuple[str, ...]]) -> str:
    all_rows = [TABLE_HEADER, *rows]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(TABLE_HEADER))]
    out = []
    for k, row in enumerate(all_rows):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def preflight() -> bool:
    """Check the chaos extra before any run, one line per missing package on stderr.

    Why before: a matrix run takes minutes; toxiproxy-python is needed to run at all (False),
    matplotlib only for timeline.png, which the runs then skip (the verdicts do not use it).
    """
    problem = TOXIPROXY.missing()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return False
    problem = MATPLOTLIB.missing()
    if problem is not None:
        print(f"warning: {problem}; runs go on without it, verdicts unchanged", file=sys.stderr)
    return True


def _cmd_run(args: argparse.Namespace) -> int:
    if args.list:
        print(list_text())
        return 0
    configure_logging("console", args.log_level)
    if args.all:
        names = list(scenarios.MATRIX)
    elif args.scenario:
        names = [args.scenario]
    else:
        print("error: give --scenario NAME, --all or --list", file=sys.stderr)
        return 2
    if not preflight():
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1, 1 << 31)
    for name in names:
        try:
            scenarios.get(name)
        except KeyError:
            print(f"error: unknown scenario {name!r}; see --list", file=sys.stderr)
            return 2
    with Bar(len(names), args.progress) as bar:
        rows, failed = _run_scenarios(args, names, seed, bar)
    print(render_table(rows))
    return 1 if failed else 0


def _run_scenarios(
    args: argparse.Namespace, names: list[str], seed: int, bar: Bar
) -> tuple[list[tuple[str, ...]], bool]:
    from chaos.scenario_run import run_scenario  # imports aiohttp and the cluster launcher

    rows: list[tuple[str, ...]] = []
    failed = False
    for name in names:
        bar.step(f"{name} (seed {seed}, {args.duration:g} s faulty)")
        try:
            summary = asyncio.run(
                run_scenario(
                    name,
                    seed,
                    args.duration,
                    nodes=args.nodes,
                    out_root=Path(args.out),
                    toxiproxy_url=args.toxiproxy_url,
                )
            )
        except Exception as exc:  # a run that could not complete is a failure, not a crash
            print(f"error: scenario {name} seed {seed} did not complete: {exc!r}", file=sys.stderr)
            failed = True
            rows.append(
                (
                    name,
                    str(seed),
                    str(args.nodes or "-"),
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    f"run error: {exc.__class__.__name__}",
                    "-",
                )
            )
            bar.advance()
            continue
        rows.append(table_row(summary))
        failed = failed or not summary["result"]["valid"]
        print(f"results: {summary['results_dir']}", file=sys.stderr)
        bar.advance()
    return rows, failed


def _add_run_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run chaos scenarios and check the history")
    parser.add_argument("--scenario", help="scenario name or number (see --list)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: random)")
    parser.add_argument("--duration", type=float, default=60.0, help="faulty phase, seconds")
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=None)
    parser.add_argument("--all", action="store_true", help="run scenarios 1-13 in turn")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("--out", default="chaos-results", help="results root directory")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal)",
    )
    add_toxiproxy_url_argument(parser)
    parser.set_defaults(handler=_cmd_run)


# Each subcommand: a function taking the subparsers object.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_proxy_command,
    _add_run_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")  # `raftq chaos --scenario X` means `run`
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
