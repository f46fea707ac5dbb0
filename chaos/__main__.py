"""`python -m chaos <command>`: the chaos tools' command line (one subcommand per tool).

Why a dispatcher: the fault proxy, the nemesis runner and the checker are separate tools that
share one entry point; each registers a subcommand with its own options and handler.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
from collections.abc import Callable, Sequence

import structlog

from chaos.cli_run import add_run_command
from chaos.proxy import ProxyError, is_loopback, parse_address
from chaos.proxy_api import serve
from common.logging_setup import configure_logging

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


# Other chaos tools add their subcommand here: a function taking the subparsers object.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_proxy_command, add_run_command]


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
