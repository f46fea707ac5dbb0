"""Retries with backoff, and a dead-letter queue after 3 failed deliveries.

A payment worker calls an external gateway. A failure is usually transient, so the
message is retried later (`q.consume` nacks a failed message with an exponential delay).
But a *poison* message, one the handler can never process, would be retried forever. The
queue is therefore created with `max_receives=3` and a `dead_letter_queue`: the delivery
that would be the 4th moves the message to the DLQ instead. Engineers inspect the DLQ,
fix the cause, and `redrive` the messages back to the source queue, where they are
processed like new ones.

Run it against a local cluster:

    raftq up                      # in another terminal (or set RAFTQ_SERVERS)
    python examples/retry_dead_letter.py
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from cluster import Client, ConsumerStats, Message, Queue


class PaymentError(Exception):
    """The gateway refused the payment."""


def make_payment_handler(
    supported_currencies: set[str], attempts: dict[int, list[int]]
) -> Callable[[Message], None]:
    """The worker's handler: charge an order; raise to have it retried.

    `attempts` records order id -> receive_count of every delivery, to show the retries.
    """

    def charge(msg: Message) -> None:
        order = msg.data
        attempts.setdefault(order["order_id"], []).append(msg.receive_count)
        if order["currency"] not in supported_currencies:
            raise PaymentError(f"order {order['order_id']}: currency {order['currency']}")
        time.sleep(0.01)  # the gateway call

    return charge


def run_until_drained(
    q: Queue,
    handler: Callable[[Message], None],
    *,
    concurrency: int = 2,
    retry_base_delay_s: float = 0.5,
    deadline_s: float = 60.0,
) -> ConsumerStats:
    """Consume `q` until nothing is waiting, in flight or delayed for retry."""
    stop = threading.Event()

    def watch() -> None:
        give_up = time.monotonic() + deadline_s
        while not stop.is_set() and time.monotonic() < give_up:
            info = q.info()
            if info["depth"] == info["in_flight"] == info["delayed"] == 0:
                break
            time.sleep(0.2)
        stop.set()

    watcher = threading.Thread(target=watch, name="drain-watch")
    watcher.start()
    try:
        return q.consume(
            handler,
            concurrency=concurrency,
            retry_base_delay_s=retry_base_delay_s,  # nack delays: base, 2*base, 4*base...
            stop_event=stop,
        )
    finally:
        stop.set()
        watcher.join()


@dataclass
class DemoResult:
    attempts: dict[int, list[int]]  # order id -> receive counts before the redrive
    dead_lettered: list[Message]  # what the DLQ held
    redriven: int
    attempts_after_redrive: dict[int, list[int]] = field(default_factory=dict)


def main(
    servers: str | None = None,
    queue_name: str = "payments",
    orders: int = 10,
    poison_order: int = 7,
    retry_base_delay_s: float = 0.5,
) -> DemoResult:
    """Send `orders` orders, one in an unsupported currency; dead-letter it, fix, redrive."""
    with Client(servers) as client:
        dlq = client.queue(f"{queue_name}-dlq")
        dlq.create()  # the dead-letter queue must exist first
        q = client.queue(queue_name)
        q.create(max_receives=3, dead_letter_queue=dlq.name, visibility_timeout_s=10)
        q.purge()
        dlq.purge()

        q.send_many(
            {"order_id": n, "amount": 10 + n, "currency": "XTS" if n == poison_order else "USD"}
            for n in range(orders)
        )
        supported = {"USD", "EUR"}
        attempts: dict[int, list[int]] = {}
        stats = run_until_drained(
            q, make_payment_handler(supported, attempts), retry_base_delay_s=retry_base_delay_s
        )
        print(f"first run: {stats.succeeded} paid, {stats.failed} failed deliveries")
        print(f"order {poison_order} was delivered with receive_count {attempts[poison_order]}")

        # Inspect the DLQ. Receiving leases the messages (and counts as one more delivery);
        # hand them back with retry() so that redrive can move them.
        dead = dlq.receive(max=10, wait_s=1)
        for m in dead:
            print(f"DLQ: {m.data} after {m.receive_count - 1} failed deliveries")
        dlq.retry_many(dead)

        supported.add("XTS")  # the fix: the gateway integration now supports XTS
        redriven = dlq.redrive()["redriven"]
        print(f"redrove {redriven} message(s) back to {q.name!r}")

        after: dict[int, list[int]] = {}
        stats = run_until_drained(
            q, make_payment_handler(supported, after), retry_base_delay_s=retry_base_delay_s
        )
        print(
            f"after the fix: {stats.succeeded} paid, {stats.failed} failed; DLQ depth "
            f"{dlq.info()['depth']}"
        )
        return DemoResult(attempts, dead, redriven, after)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    main()
