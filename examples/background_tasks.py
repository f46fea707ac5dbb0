"""Background task processing with acknowledgements (at-least-once).

A web request should not wait for an image to be resized: the API enqueues a job and
answers at once, and background workers do the work. Each worker receives a job, does it,
and only then acknowledges it. A received job is leased to one worker for the queue's
visibility timeout; if the worker dies before its ack, the lease runs out and the job is
delivered again (with `receive_count` 2) to another worker. Nothing is lost, but a job may
run twice, so real handlers must be idempotent (here: writing the same thumbnail again is
harmless).

Run it against a local cluster:

    raftq up                      # in another terminal (or set RAFTQ_SERVERS)
    python examples/background_tasks.py
"""

from __future__ import annotations

import logging
import threading
import time

import structlog

from cluster import Client, Queue


def process_image(image_id: int) -> str:
    """Stand-in for real work (resize, watermark, upload): takes a little time."""
    time.sleep(0.02)
    return f"thumbnails/{image_id}.jpg"


def enqueue_jobs(q: Queue, image_ids: range) -> None:
    """The producer: what an upload endpoint does instead of processing inline."""
    for image_id in image_ids:
        q.send({"image_id": image_id})


def crashing_worker(q: Queue) -> int:
    """Receives one job and dies before acknowledging it; returns the image id it held.

    The cluster cannot tell this from a killed process: it only sees a lease that is
    never acked, and redelivers the job when the lease expires.
    """
    msg = q.receive(wait_s=5)
    if msg is None:
        raise RuntimeError(f"no job arrived on {q.name!r}")
    return msg.data["image_id"]  # ...and the worker is gone: no acknowledge()


def worker(q: Queue, done: dict[int, list[int]], stop: threading.Event) -> None:
    """Receive, process, acknowledge, until `stop` is set.

    `done` maps image id -> the receive_count of each delivery this worker completed.
    """
    while not stop.is_set():
        msg = q.receive(wait_s=1)
        if msg is None:
            continue
        image_id = msg.data["image_id"]
        process_image(image_id)
        q.acknowledge(msg)  # only now is the job gone from the queue
        done.setdefault(image_id, []).append(msg.receive_count)


def main(
    servers: str | None = None,
    queue_name: str = "images",
    jobs: int = 20,
    workers: int = 3,
    visibility_timeout_s: int = 2,
    deadline_s: float = 60.0,
) -> tuple[int, dict[int, list[int]]]:
    """Enqueue `jobs` jobs, crash one worker, let `workers` workers finish everything.

    Returns the image id the crashed worker held and, per image id, the receive_count of
    every completed delivery.
    """
    with Client(servers) as client:
        q = client.queue(queue_name)
        q.create(visibility_timeout_s=visibility_timeout_s)
        q.purge()  # start the demo from an empty queue
        enqueue_jobs(q, range(jobs))
        print(f"enqueued {jobs} image jobs on {queue_name!r}")

        lost = crashing_worker(q)
        print(f"a worker took image {lost} and crashed before acknowledging it")

        done: dict[int, list[int]] = {}
        stop = threading.Event()
        threads = [
            threading.Thread(target=worker, args=(q, done, stop), name=f"worker-{i}")
            for i in range(workers)
        ]
        for t in threads:
            t.start()
        give_up = time.monotonic() + deadline_s
        try:
            while len(done) < jobs and time.monotonic() < give_up:
                time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join()

        print(f"processed {len(done)}/{jobs} images with {workers} workers")
        print(f"image {lost} was redelivered: receive_count {done.get(lost)}")
        info = q.info()
        print(f"queue now: {info['depth']} waiting, {info['in_flight']} in flight")
        return lost, done


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    main()
