"""`raftq topic|publish|subscribe|group` against a real 3-node cluster (in-process CLI)."""

from __future__ import annotations

import json

import pytest

from cluster.cli import EXIT_OK, EXIT_USAGE
from cluster.launcher import LocalCluster
from tests.cluster.test_cli import run

pytestmark = pytest.mark.integration


def test_topic_publish_subscribe_and_group_show(cluster3: LocalCluster) -> None:
    args = ["--servers", cluster3.servers, "--timeout", "15"]
    code, out, _ = run(*args, "topic", "create", "cli-events", "--partitions", "2", "--json")
    assert code == EXIT_OK and json.loads(out)["partitions"] == 2
    code, out, _ = run(*args, "publish", "cli-events", "a", "b", "--record-key", "k1")
    assert code == EXIT_OK
    placed = [tuple(map(int, line.split())) for line in out.splitlines()]
    assert len(placed) == 2 and placed[0][0] == placed[1][0]  # one key, one partition
    code, out, _ = run(*args, "publish", "cli-events", "--json", stdin="c\n\nd\n")
    assert code == EXIT_OK and len(json.loads(out)["records"]) == 2
    code, out, _ = run(*args, "topic", "list")
    assert code == EXIT_OK and "cli-events" in out
    code, out, _ = run(*args, "topic", "show", "cli-events", "--json")
    stats = json.loads(out)["partition_stats"]
    assert code == EXIT_OK and sum(p["high_watermark"] for p in stats) == 4
    code, out, _ = run(*args, "subscribe", "cli-events", "--group", "cli-g", "--max", "4")
    assert code == EXIT_OK
    values = sorted(line.split()[3] for line in out.splitlines())
    assert values == ["a", "b", "c", "d"]
    code, out, _ = run(*args, "group", "show", "cli-g", "--json")
    info = json.loads(out)
    assert code == EXIT_OK and info["topic"] == "cli-events" and info["members"] == []
    assert sum(o["lag"] for o in info["offsets"]) == 0  # committed after printing
    code, out, _ = run(*args, "group", "show", "cli-g")
    assert code == EXIT_OK and "LAG" in out
    code, _, err = run(*args, "topic", "show")
    assert code == EXIT_USAGE and "needs a topic NAME" in err
