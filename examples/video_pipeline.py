"""A video-transcoding pipeline with exactly-once transcode steps.

    upload ──> "transcode" queue: one job per resolution (480p, 720p, 1080p)
                 └─> transcode workers, in parallel
                       └─> "transcode-done" queue: one completion per (video, resolution)
                             └─> status tracker: video is "ready" once all 3 are done

The upload endpoint answers at once; the slow work happens in the workers. Each transcode
step is exactly-once: `consume_exactly_once` acks the job AND sends its completion in one
transaction, all or nothing. If a worker stalls past its lease (a GC pause, a stuck
encoder), the job is given to another worker; when the stalled one wakes up, its commit
carries a stale receipt and is refused, so the job still produces exactly one completion.
The demo makes the first 1080p job of the first video stall like that.

Run it against a local cluster:

    raftq up                      # in another terminal (or set RAFTQ_SERVERS)
    python examples/video_pipeline.py
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from cluster import AsyncClient, Message, OutgoingMessage
from cluster.transactions import consume_exactly_once

RESOLUTIONS = ("480p", "720p", "1080p")
JOBS = "transcode"
COMPLETIONS = "transcode-done"


@dataclass
class Video:
    """A row of the videos table the tracker maintains."""

    status: str = "processing"
    renditions: dict[str, str] = field(default_factory=dict)


@dataclass
class PipelineResult:
    videos: dict[str, Video]
    transcode_runs: list[tuple[str, str, int]]  # (video, resolution, receive_count) per run
    completions_seen: list[tuple[str, str]]  # every completion the tracker received
    marked_ready: list[str]  # every time the tracker set a video to "ready"
    completions_sent: int  # the completion queue's sent_total: commits that went through


async def upload_video(client: AsyncClient, video_id: str) -> None:
    """The upload endpoint: (store the file, then) queue one transcode job per resolution.

    The dedup ids make a retried upload request harmless: the jobs are enqueued once.
    """
    await client.queue(JOBS).send_many(
        OutgoingMessage({"video_id": video_id, "resolution": r}, dedup_id=f"{video_id}-{r}")
        for r in RESOLUTIONS
    )


async def transcode_worker(
    client: AsyncClient,
    runs: list[tuple[str, str, int]],
    stop: asyncio.Event,
    stall: tuple[str, str] | None = None,
    stall_s: float = 0.0,
) -> None:
    """Transcode jobs until `stop`; each job's ack + completion commit as one transaction.

    The job `stall` stalls for `stall_s` on its first delivery (to show a zombie worker).
    """

    async def transcode(msg: Message) -> dict[str, Any]:
        job = msg.data
        runs.append((job["video_id"], job["resolution"], msg.receive_count))
        if (job["video_id"], job["resolution"]) == stall and msg.receive_count == 1:
            await asyncio.sleep(stall_s)  # longer than the lease: the job goes elsewhere
        else:
            await asyncio.sleep(0.05)  # ffmpeg would run here
        url = f"cdn/{job['video_id']}/{job['resolution']}.mp4"
        return {"video_id": job["video_id"], "resolution": job["resolution"], "url": url}

    # extend_leases=False plays a frozen worker: a stalled process cannot extend its lease
    await consume_exactly_once(
        client.queue(JOBS),
        transcode,
        output=COMPLETIONS,
        poll_wait_s=1,
        stop_event=stop,
        handle_signals=False,
        extend_leases=stall is None,
    )


async def status_tracker(
    client: AsyncClient,
    videos: dict[str, Video],
    seen: list[tuple[str, str]],
    marked_ready: list[str],
    stop: asyncio.Event,
) -> None:
    """Record each completion; mark a video "ready" when all its resolutions are done."""
    completions = client.queue(COMPLETIONS)
    while not stop.is_set():
        msgs = await completions.receive(max=10, wait_s=1)
        for msg in msgs:
            done = msg.data
            seen.append((done["video_id"], done["resolution"]))
            video = videos[done["video_id"]]
            video.renditions[done["resolution"]] = done["url"]
            if video.status != "ready" and set(video.renditions) == set(RESOLUTIONS):
                video.status = "ready"
                marked_ready.append(done["video_id"])
        await completions.acknowledge_many(msgs)


async def run_pipeline(
    servers: str | None = None,
    videos: int = 3,
    workers: int = 3,
    visibility_timeout_s: int = 2,
    deadline_s: float = 60.0,
) -> PipelineResult:
    """Upload `videos` videos and run the pipeline until every one is ready."""
    async with AsyncClient(servers) as client:
        await client.queue(JOBS).create(visibility_timeout_s=visibility_timeout_s)
        await client.queue(COMPLETIONS).create()
        for name in (JOBS, COMPLETIONS):
            await client.queue(name).purge()
        sent_before = (await client.queue(COMPLETIONS).info())["sent_total"]

        table = {f"video-{uuid.uuid4().hex[:8]}": Video() for _ in range(videos)}
        first = next(iter(table))
        runs: list[tuple[str, str, int]] = []
        seen: list[tuple[str, str]] = []
        marked_ready: list[str] = []
        stop_workers, stop_tracker = asyncio.Event(), asyncio.Event()
        stall_s = visibility_timeout_s + 1.0
        tasks = [
            asyncio.create_task(
                transcode_worker(client, runs, stop_workers, (first, "1080p"), stall_s)
            )
            for _ in range(workers)
        ]
        tracker = asyncio.create_task(
            status_tracker(client, table, seen, marked_ready, stop_tracker)
        )

        for video_id in table:
            await upload_video(client, video_id)
        print(f"uploaded {videos} videos: {len(table) * len(RESOLUTIONS)} transcode jobs queued")
        try:
            async with asyncio.timeout(deadline_s):
                while any(v.status != "ready" for v in table.values()):
                    for task in (*tasks, tracker):
                        if task.done():
                            task.result()  # a stage died: raise its error now
                    await asyncio.sleep(0.1)
        finally:
            stop_workers.set()
            stop_tracker.set()
            # waits for the stalled worker too, whose commit is refused
            outcomes = await asyncio.gather(*tasks, tracker, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

        sent = (await client.queue(COMPLETIONS).info())["sent_total"] - sent_before
        stalled = [r for r in runs if r[:2] == (first, "1080p")]
        print(
            f"{first} 1080p stalled past its lease and ran {len(stalled)} times "
            f"(receive counts {[r[2] for r in stalled]})"
        )
        print(
            f"{len(runs)} transcode runs, {sent} completions committed, "
            f"{len(runs) - sent} refused as stale"
        )
        for video_id, video in table.items():
            print(f"{video_id}: {video.status} ({', '.join(video.renditions)})")
        return PipelineResult(table, runs, seen, marked_ready, sent)


def main(**options: Any) -> PipelineResult:
    """Run the demo (see `run_pipeline` for the options)."""
    return asyncio.run(run_pipeline(**options))


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    main()
