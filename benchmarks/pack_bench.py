"""Times msgpack packing: a fresh `msgpack.packb` per call against `raft.messages.pack`.

Why: the log, the peer messages and the queue state machine all pack through one kept
Packer (`raft.messages.packer` says why); this prints what that saves per call.

    python -m benchmarks.pack_bench
"""

from __future__ import annotations

import sys
import timeit

import msgpack

from raft.messages import pack


def main() -> int:
    """Print µs per call of packb and of a kept Packer for a 100-byte log entry."""
    obj = [7, 0, b"x" * 100]
    n = 200_000
    fresh = timeit.timeit(lambda: msgpack.packb(obj, use_bin_type=True), number=n) / n
    kept = timeit.timeit(lambda: pack(obj), number=n) / n
    sys.stdout.write(f"packb {fresh * 1e6:.2f} us, kept Packer {kept * 1e6:.2f} us\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
