"""Property-based fuzzing of every decoder that reads bytes from outside the node, and of
every HTTP endpoint's body. CI runs a bounded number of examples; set RAFTQ_FUZZ_EXAMPLES
(e.g. 20000) for a long run on demand."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz_settings(ci_examples: int) -> settings:
    """`ci_examples` in CI, or RAFTQ_FUZZ_EXAMPLES when set (a long run on demand)."""
    examples = int(os.environ.get("RAFTQ_FUZZ_EXAMPLES", "0") or 0) or ci_examples
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
