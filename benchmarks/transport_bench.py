"""Times the Raft peer transport alone: APP messages/s from one `Transport` to another.

Why: the transport sits between every leader and its followers; this measures what it
can carry on loopback (framing, queueing, batched writes, decoding) without the driver,
the core or the disk. The sender is kept at most two batches ahead of its socket (its
queue length read from the public `Transport.stats()`), so its bounded queue sheds nothing.

    python -m benchmarks.transport_bench [--messages 200000 --payload-bytes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common.logging_setup import configure_logging
from raft.messages import Entry, Message, MessageType, encode_message
from raft.transport import Transport

BATCH = 512  # messages sent per loop turn


async def measure(n_msgs: int, payload_bytes: int) -> None:
    """Messages/s from one transport to another on loopback (APP, one entry); prints it."""
    done = asyncio.Event()
    received = 0

    def on_message(_msg: Message) -> None:
        nonlocal received
        received += 1
        if received == n_msgs:
            done.set()

    receiver = Transport(2, "bench", ("127.0.0.1", 0), {}, on_message)
    await receiver.start()
    sender = Transport(1, "bench", ("127.0.0.1", 0), {2: receiver.listen_addr}, lambda _m: None)
    await sender.start()
    receiver.update_peer(1, sender.listen_addr)
    try:
        msg = Message(
            type=MessageType.APP,
            to=2,
            frm=1,
            term=3,
            log_term=3,
            index=41,
            entries=(Entry(42, 3, data=b"x" * payload_bytes),),
            commit=40,
        )
        frame_bytes = len(encode_message(msg)) + 4
        while not sender.connected(2):
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        sent = 0
        while sent < n_msgs:
            for _ in range(min(BATCH, n_msgs - sent)):
                sender.send(msg)
            sent += BATCH
            while sender.stats()[2].queued > 2 * BATCH:
                await asyncio.sleep(0)
            await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - started
        st = sender.stats()[2]
        print(
            f"raft.transport bench: {n_msgs} APP msgs, {payload_bytes}-byte payload "
            f"({frame_bytes}-byte frame), {elapsed:.2f} s, {n_msgs / elapsed:,.0f} msgs/s, "
            f"{n_msgs * frame_bytes / elapsed / 1e6:.1f} MB/s, dropped={st.dropped}"
        )
    finally:
        await sender.stop()
        await receiver.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transport_bench")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--payload-bytes", type=int, default=100)
    args = parser.parse_args(argv)
    configure_logging("console", "warning", cache_logger_on_first_use=False)
    asyncio.run(measure(args.messages, args.payload_bytes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
