"""`python -m node ...`: run one raftq node (what `raftq node` and `raftq up` start).

Exit codes: 0 stopped by SIGTERM/SIGINT; 1 the Raft driver failed (storage error, safety
check); 2 bad configuration; 3 (`EXIT_DATA_DIR_REFUSED`) the data dir must not be used by
this node: locked by another process, another node's or cluster's, unreadable IDENTITY.
"""

from __future__ import annotations

import os
import sys

import structlog

from node.config import ConfigError, load_config
from node.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"raftq node: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.node_id, config.log_format, config.log_level)
    # The first line of every run: `raftq up` reads a node's log for why its last run
    # stopped, and a run may stop (a refused data dir) before Raft ever starts.
    structlog.get_logger("node").info("node.starting", pid=os.getpid())
    from node.data_dir import EXIT_DATA_DIR_REFUSED, DataDirError
    from node.server import main_with  # after logging is configured

    try:
        return main_with(config)
    except DataDirError as exc:  # already logged as node.data_dir_refused
        print(f"raftq node: {exc}", file=sys.stderr, flush=True)
        return EXIT_DATA_DIR_REFUSED


if __name__ == "__main__":
    sys.exit(main())
