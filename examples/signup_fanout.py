"""A user-signup event fanned out to every interested service (a fanout exchange).

The signup endpoint should not know who cares about a new user. It publishes one
`user.signup` event to the `signups` exchange; the email, analytics and CRM services each
bind their own queue to it and each gets its own copy, which it processes and acks at its
own pace. Adding a fourth service is one binding, no change to the publisher. The publish
is one Raft entry: either every bound queue has the event or none has (a failed publish
is retried with the same dedup ids, so no queue gets it twice).

Run it against a local cluster:

    raftq up                      # in another terminal (or set RAFTQ_SERVERS)
    python examples/signup_fanout.py
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import structlog

from cluster import Client

SERVICES = ("email", "analytics", "crm")


@dataclass
class Result:
    routed_to: list[list[str]] = field(default_factory=list)
    seen: dict[str, list[str]] = field(default_factory=dict)  # service -> user names


def main(
    servers: str | None = None,
    *,
    exchange_name: str = "signups",
    users: tuple[str, ...] = ("alice", "bob", "carol"),
    prefix: str = "signup-",
) -> Result:
    result = Result()
    with Client(servers) as client:
        signups = client.exchange(exchange_name)
        signups.declare(type="fanout")
        for service in SERVICES:
            client.queue(prefix + service).create()
            signups.bind(prefix + service)

        for user in users:  # what the signup endpoint does
            published = signups.publish({"event": "user.signup", "user": user})
            result.routed_to.append(published.routed_to)

        for service in SERVICES:  # each service drains its own copy
            q = client.queue(prefix + service)
            names = result.seen.setdefault(service, [])
            while msgs := q.receive(max=10, wait_s=0.5):
                for msg in msgs:
                    names.append(msg.data["user"])
                    q.acknowledge(msg)
        for service, names in result.seen.items():
            print(f"{service}: {', '.join(names)}")
        print(f"{exchange_name}: {signups.info()['routed_total']} copies routed")
    return result


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    main()
