"""Request-reply (RPC) over queues: a price service answering quote requests.

The caller sends a request and waits for its answer: `queue.request(body)` makes a
private reply queue (`rpc.reply.<random>`, deleted afterwards, and deleting itself after
`expires_s` unused if the caller dies), sends the request with `reply_to` and
`correlation_id` attributes, and returns the reply that carries the same correlation id.
The service runs `queue.serve(handler)`: the handler's return value is sent to
`reply_to`, committed in one transaction with the request's ack, so each request is
answered exactly once even when a commit is retried across a leader change.

Run it against a local cluster:

    raftq up                      # in another terminal (or set RAFTQ_SERVERS)
    python examples/rpc.py
"""

from __future__ import annotations

import logging
import threading

import structlog

from cluster import Client, Message

PRICES = {"apple": 0.5, "pear": 0.75, "melon": 3.0}


def quote(msg: Message) -> dict[str, object]:
    """The service's handler: its return value is the reply."""
    request = msg.data
    unit = PRICES.get(request["item"])
    if unit is None:
        return {"item": request["item"], "error": "unknown item"}
    return {"item": request["item"], "total": round(unit * request["quantity"], 2)}


def main(
    servers: str | None = None,
    *,
    queue_name: str = "prices",
    requests: tuple[tuple[str, int], ...] = (("apple", 4), ("melon", 2), ("kiwi", 1)),
) -> list[dict[str, object]]:
    with Client(servers) as client:
        service = client.queue(queue_name)
        service.create()
        stop = threading.Event()
        server = threading.Thread(
            target=service.serve,
            args=(quote,),
            kwargs={"stop_event": stop, "handle_signals": False, "poll_wait_s": 0.5},
            name="price-service",
        )
        server.start()
        try:
            answers = []
            for item, quantity in requests:
                reply = service.request({"item": item, "quantity": quantity}, timeout_s=20)
                answers.append(reply.data)
                print(f"{quantity} x {item}: {reply.data}")
        finally:
            stop.set()
            server.join()
    return answers


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    main()
