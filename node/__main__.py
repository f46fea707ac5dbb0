"""`python -m node ...`: run one raftq node (what `raftq node` and `raftq up` start)."""

from __future__ import annotations

import sys

from node.config import ConfigError, load_config
from node.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"raftq node: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.node_id, config.log_format, config.log_level)
    from node.server import main_with  # after logging is configured

    return main_with(config)


if __name__ == "__main__":
    sys.exit(main())
