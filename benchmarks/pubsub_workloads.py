"""The pub/sub workloads of `raftq bench`: topic appends, topic fetches and exchange fan-out.

Why these three: issue 19 asks for publish records/s batched 100 per request, fetch
records/s from one partition (served from the leader's applied state, no Raft entry per
read) and a fan-out figure (one publish to an exchange bound to 10 queues). Each runs on
the same raw-HTTP `Bench` as the queue workloads (benchmarks/queue_workloads.py), so the
figures compare with `send100`.
"""

from __future__ import annotations

from benchmarks.queue_workloads import Bench, Result

TOPIC = "bench-topic"
RECORD = {"value": "x" * 100}
FANOUT_QUEUES = 10
FETCH_MAX = 1000


async def _put(bench: Bench, path: str, body: dict[str, object]) -> None:
    status, data = await bench.http.request("PUT", path, body)
    if status >= 300:
        raise RuntimeError(f"PUT {path}: {status} {data}")


async def publish100(bench: Bench, concurrency: int) -> Result:
    """Append 100 records per request to one partition, `concurrency` requests in flight."""
    await _put(bench, f"/v1/topics/{TOPIC}", {"partitions": 1})
    body = {"records": [dict(RECORD, partition=0) for _ in range(100)]}

    async def op(_i: int) -> int:
        data = await bench.post(f"/v1/topics/{TOPIC}/records", body)
        return len(data["records"])

    return await bench.run_loop(
        "publish100", concurrency, op, f"100 records/request, {concurrency} in flight"
    )


async def fetch(bench: Bench, readers: int, prefill: int) -> Result:
    """`readers` consumers each read partition 0 from offset 0, up to FETCH_MAX records per
    request, starting over once they reached the end: records returned per second (after
    `prefill` records are appended, 1,000 per request, untimed)."""
    name = "bench-fetch"
    await _put(bench, f"/v1/topics/{name}", {"partitions": 1})
    batch = {"records": [dict(RECORD, partition=0) for _ in range(1000)]}
    for _ in range(max(1, prefill // 1000)):
        await bench.post(f"/v1/topics/{name}/records", batch)
    offsets = [0] * readers

    async def op(i: int) -> int:
        reader = i % readers
        path = f"/v1/topics/{name}/partitions/0/records?offset={offsets[reader]}&max={FETCH_MAX}"
        status, data = await bench.http.request("GET", path, None)
        if status >= 300:
            raise RuntimeError(f"fetch: {status} {data}")
        end = data["next_offset"] >= data["high_watermark"]
        offsets[reader] = 0 if end else data["next_offset"]  # at the end: from the start
        return len(data["records"])

    return await bench.run_loop(
        "fetch", readers, op, f"up to {FETCH_MAX} records/request, {readers} readers"
    )


async def fanout10(bench: Bench, concurrency: int) -> Result:
    """Publish 100 messages per request to a fanout exchange bound to 10 queues: messages
    published per second (each lands in all 10 queues, in the same Raft entry)."""
    exchange = "bench-fanout"
    await _put(bench, f"/v1/exchanges/{exchange}", {"type": "fanout"})
    for i in range(FANOUT_QUEUES):
        queue = f"bench-fanout-{i}"
        await bench.put_queue(queue)
        await bench.post(f"/v1/exchanges/{exchange}/bindings", {"queue": queue})
    body = {"messages": [{"body": "x" * 100} for _ in range(100)]}

    async def op(_i: int) -> int:
        data = await bench.post(f"/v1/exchanges/{exchange}/publish", body)
        return len(data["messages"])

    return await bench.run_loop(
        "fanout10",
        concurrency,
        op,
        f"100 msgs/request to {FANOUT_QUEUES} queues ({FANOUT_QUEUES}x copies), "
        f"{concurrency} in flight",
    )
