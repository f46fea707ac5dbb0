"""Load leveling: the queue absorbs a burst, workers drain it at a steady pace.

A flash sale sends 10,000 orders in a few seconds, but the downstream system (a payment
provider, a database) can only take a few hundred a second. Producers put the burst on a
queue at whatever speed it arrives; 4 workers take it off at the rate the downstream
allows (a shared rate limiter). The queue depth jumps up and then falls in a straight
line; nothing is dropped and the downstream never sees more than its rate.

Workers receive in batches and acknowledge a batch in one request: one Raft write per
batch instead of one per message, which is what makes a steady high rate cheap.

Run it against a local cluster:

    raftq up                      # in another terminal (or set RAFTQ_SERVERS)
    python examples/load_leveling.py
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import structlog

from cluster import Client, Queue


class RateLimiter:
    """At most `rate_per_s` calls of `wait()` per second, spread evenly, across threads."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval_s = 1.0 / rate_per_s
        self._next_at = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(self._next_at, now)
            self._next_at = slot + self.interval_s
        time.sleep(max(0.0, slot - now))


def worker(
    q: Queue, limiter: RateLimiter, done: list[int], stop: threading.Event, batch: int = 25
) -> None:
    """Take up to `batch` orders, handle each at the limiter's pace, ack them together."""
    while not stop.is_set():
        msgs = q.receive(max=batch, wait_s=1)
        for msg in msgs:
            limiter.wait()
            done.append(msg.data["order"])  # the call to the downstream system
        if msgs:
            q.acknowledge_many(msgs)


@dataclass
class LevelingResult:
    done_by_worker: dict[str, list[int]]  # worker name -> orders it handled
    depth_samples: list[tuple[float, int]]  # (seconds since the burst, queue depth)
    elapsed_s: float


def main(
    servers: str | None = None,
    queue_name: str = "flash-sale",
    messages: int = 10_000,
    workers: int = 4,
    rate_per_s: float = 500.0,
    batch: int = 25,
    report_every_s: float = 1.0,
    deadline_s: float = 300.0,
) -> LevelingResult:
    """Burst `messages` orders onto the queue while `workers` drain it at `rate_per_s`."""
    with Client(servers) as client:
        q = client.queue(queue_name)
        q.create()
        q.purge()
        limiter = RateLimiter(rate_per_s)
        stop = threading.Event()
        done_by_worker: dict[str, list[int]] = {f"worker-{i}": [] for i in range(workers)}
        threads = [
            threading.Thread(target=worker, args=(q, limiter, done, stop, batch), name=name)
            for name, done in done_by_worker.items()
        ]
        for t in threads:
            t.start()

        started = time.monotonic()
        q.send_many(({"order": n} for n in range(messages)), batch_size=500)  # the burst
        print(f"burst of {messages} orders queued in {time.monotonic() - started:.1f}s")

        samples: list[tuple[float, int]] = []
        try:
            while time.monotonic() - started < deadline_s:
                info = q.info()
                elapsed_s = time.monotonic() - started
                samples.append((elapsed_s, info["depth"]))
                handled = sum(len(d) for d in done_by_worker.values())
                print(
                    f"{elapsed_s:6.1f}s  depth {info['depth']:6d}  in flight "
                    f"{info['in_flight']:4d}  handled {handled}"
                )
                if info["depth"] == info["in_flight"] == info["delayed"] == 0:
                    break
                time.sleep(report_every_s)
        finally:
            stop.set()
            for t in threads:
                t.join()
        elapsed_s = time.monotonic() - started
        handled = sum(len(d) for d in done_by_worker.values())
        print(
            f"drained {handled} orders in {elapsed_s:.1f}s ({handled / elapsed_s:.0f}/s, "
            f"limit {rate_per_s:.0f}/s); per worker: "
            + ", ".join(f"{name} {len(d)}" for name, d in done_by_worker.items())
        )
        return LevelingResult(done_by_worker, samples, elapsed_s)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    main()
