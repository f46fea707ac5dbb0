"""The runnable examples in examples/, driven with small numbers against a real 3-node
cluster: each pattern must produce the outcome its docstring promises.

The tests share one cluster (`cluster3`, module scope) to keep the file fast; each example
uses its own queue names, so they do not see each other's messages."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from cluster import Client, LocalCluster

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """Import examples/NAME.py (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"raftq_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def queue_info(cluster: LocalCluster, name: str) -> dict:
    with Client(cluster.urls) as client:
        return client.queue(name).info()


def test_background_tasks_redelivers_the_job_of_a_crashed_worker(cluster3: LocalCluster) -> None:
    cluster = cluster3
    example = load_example("background_tasks")
    lost, done = example.main(
        cluster.servers, queue_name="thumbnails", jobs=12, workers=3, visibility_timeout_s=2
    )
    assert sorted(done) == list(range(12)), "a job was never processed"
    assert done[lost] == [2], "the crashed worker's job must come back with receive_count 2"
    assert all(counts[0] == 1 for image_id, counts in done.items() if image_id != lost)
    info = queue_info(cluster, "thumbnails")
    assert info["depth"] == info["in_flight"] == 0
    assert info["acked_total"] == sum(len(c) for c in done.values())


def test_background_tasks_runs_as_a_script(cluster3: LocalCluster) -> None:
    """`python examples/background_tasks.py` finds the cluster through RAFTQ_SERVERS."""
    cluster = cluster3
    env = {**os.environ, "RAFTQ_SERVERS": cluster.servers}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "background_tasks.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "processed 20/20 images" in proc.stdout
    assert "receive_count [2]" in proc.stdout
    assert queue_info(cluster, "images")["acked_total"] == 20


def test_retry_dead_letter_after_three_receives_then_redrive(cluster3: LocalCluster) -> None:
    cluster = cluster3
    example = load_example("retry_dead_letter")
    result = example.main(
        cluster.servers, queue_name="payments", orders=6, poison_order=3, retry_base_delay_s=0.1
    )
    assert result.attempts[3] == [1, 2, 3], "the poison message must be tried exactly 3 times"
    assert all(result.attempts[n] == [1] for n in (0, 1, 2, 4, 5))
    assert [m.data["order_id"] for m in result.dead_lettered] == [3]
    assert result.redriven == 1
    assert result.attempts_after_redrive == {3: [1]}, "redriven with receive_count reset"
    source, dlq = queue_info(cluster, "payments"), queue_info(cluster, "payments-dlq")
    assert source["dead_lettered_total"] == 1
    assert source["acked_total"] == 6
    assert source["depth"] == source["in_flight"] == source["delayed"] == 0
    assert dlq["depth"] == dlq["in_flight"] == 0


def test_load_leveling_drains_every_message_exactly_once(cluster3: LocalCluster) -> None:
    cluster = cluster3
    example = load_example("load_leveling")
    total, rate_per_s = 200, 400.0
    result = example.main(
        cluster.servers,
        queue_name="burst",
        messages=total,
        workers=4,
        rate_per_s=rate_per_s,
        batch=10,
        report_every_s=0.1,
    )
    handled = [n for done in result.done_by_worker.values() for n in done]
    assert sorted(handled) == list(range(total)), "every message handled exactly once"
    assert len(result.done_by_worker) == 4
    assert all(result.done_by_worker.values()), "each of the 4 workers took a share"
    depths = [depth for _, depth in result.depth_samples]
    assert depths[0] > 0 and depths[-1] == 0
    # the limiter spaces handled messages 1/rate apart: a lower bound, not a speed test
    assert result.elapsed_s >= (total - 1) / rate_per_s
    info = queue_info(cluster, "burst")
    assert info["acked_total"] == total and info["depth"] == info["in_flight"] == 0


def test_video_pipeline_one_completion_per_resolution_despite_a_stalled_worker(
    cluster3: LocalCluster,
) -> None:
    cluster = cluster3
    example = load_example("video_pipeline")
    result = example.main(servers=cluster.servers, videos=3, workers=3, visibility_timeout_s=2)
    videos = list(result.videos)
    assert len(videos) == 3
    assert all(v.status == "ready" for v in result.videos.values())
    assert Counter(result.marked_ready) == Counter(videos), "each video marked ready once"
    expected = Counter((v, r) for v in videos for r in example.RESOLUTIONS)
    assert Counter(result.completions_seen) == expected
    assert result.completions_sent == sum(expected.values()), "one committed completion each"
    stalled = sorted(c for v, r, c in result.transcode_runs if (v, r) == (videos[0], "1080p"))
    assert stalled == [1, 2], "the stalled job ran twice but completed once"
    for name in ("transcode", "transcode-done"):
        info = queue_info(cluster, name)
        assert info["depth"] == info["in_flight"] == 0, info


def test_signup_fanout_gives_every_service_its_own_copy(cluster3: LocalCluster) -> None:
    example = load_example("signup_fanout")
    result = example.main(cluster3.servers, exchange_name="ex-signups", prefix="ex-signup-")
    assert result.routed_to == [["ex-signup-analytics", "ex-signup-crm", "ex-signup-email"]] * 3
    assert result.seen == {s: ["alice", "bob", "carol"] for s in example.SERVICES}
    for service in example.SERVICES:
        info = queue_info(cluster3, f"ex-signup-{service}")
        assert info["acked_total"] == 3 and info["depth"] == info["in_flight"] == 0


def test_order_topic_routes_each_event_by_pattern(cluster3: LocalCluster) -> None:
    example = load_example("order_topic")
    got = example.main(cluster3.servers, exchange_name="ex-orders", prefix="ex-orders-")
    assert got == {
        "payment": [("order.created.eu", 1), ("order.created.us", 2)],
        "inventory": [("order.created.eu", 1), ("order.created.us", 2), ("order.cancelled.us", 2)],
        "shipping": [("order.paid.eu", 1)],
        "email": [
            ("order.created.eu", 1),
            ("order.created.us", 2),
            ("order.paid.eu", 1),
            ("order.cancelled.us", 2),
        ],
        "unrouted": [("refund.requested", 1)],
    }
    with Client(cluster3.urls) as client:
        info = client.exchange("ex-orders").info()
    assert info["published_total"] == 5 and info["unroutable_total"] == 1
    assert info["routed_total"] == 11  # 2 + 3 + 1 + 4 copies, and 1 to the alternate


def test_rpc_answers_each_request_once_and_leaves_no_reply_queue(cluster3: LocalCluster) -> None:
    example = load_example("rpc")
    answers = example.main(cluster3.servers, queue_name="ex-prices")
    assert answers == [
        {"item": "apple", "total": 2.0},
        {"item": "melon", "total": 6.0},
        {"item": "kiwi", "error": "unknown item"},
    ]
    info = queue_info(cluster3, "ex-prices")
    assert info["acked_total"] == 3 and info["depth"] == info["in_flight"] == 0
    with Client(cluster3.urls) as client:
        assert not [q for q in client.queues() if q["name"].startswith("rpc.reply.")]
