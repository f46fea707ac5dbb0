"""E-commerce order processing routed by event name (a topic exchange).

Every order event is published once to the `orders` exchange with a routing key such as
`order.created.eu`. Each service binds its queue with the patterns it needs (`*` is one
word, `#` zero or more):

    payment    order.created.#       charge the card
    inventory  order.created.#       reserve stock
               order.cancelled.#     release it again
    shipping   order.paid.#          ship once paid
    email      order.#               tell the customer about everything

An event nobody binds (`refund.requested`) goes to the exchange's alternate queue
`orders-unrouted`, where nothing is lost and an operator can look.

Run it against a local cluster:

    raftq up                      # in another terminal (or set RAFTQ_SERVERS)
    python examples/order_topic.py
"""

from __future__ import annotations

import logging

import structlog

from cluster import Client, PublishMessage

BINDINGS = {
    "payment": ["order.created.#"],
    "inventory": ["order.created.#", "order.cancelled.#"],
    "shipping": ["order.paid.#"],
    "email": ["order.#"],
}
EVENTS = [
    ("order.created.eu", 1),
    ("order.created.us", 2),
    ("order.paid.eu", 1),
    ("order.cancelled.us", 2),
    ("refund.requested", 1),
]


def main(
    servers: str | None = None, *, exchange_name: str = "orders", prefix: str = "orders-"
) -> dict[str, list[tuple[str, int]]]:
    """Publish EVENTS; answers what each service queue (and the unrouted one) received,
    as (event, order id) pairs."""
    unrouted = prefix + "unrouted"
    with Client(servers) as client:
        client.queue(unrouted).create()
        orders = client.exchange(exchange_name)
        orders.declare(type="topic", alternate_queue=unrouted)
        for service, patterns in BINDINGS.items():
            client.queue(prefix + service).create()
            for pattern in patterns:
                orders.bind(prefix + service, pattern=pattern)

        # one request, one Raft entry: all events routed, or none
        orders.publish_many(
            PublishMessage({"event": key, "order_id": order_id}, routing_key=key)
            for key, order_id in EVENTS
        )

        received: dict[str, list[tuple[str, int]]] = {}
        for name in [*BINDINGS, "unrouted"]:
            q = client.queue(prefix + name)
            got = received.setdefault(name, [])
            while msgs := q.receive(max=10, wait_s=0.5):
                for msg in msgs:
                    got.append((msg.data["event"], msg.data["order_id"]))
                    q.acknowledge(msg)
            print(f"{name:>10}: {', '.join(f'{e} #{o}' for e, o in got)}")
    return received


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    main()
