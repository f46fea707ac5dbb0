"""Prometheus metrics for one node: the numbers operators watch.

Why hand-rolled: the exposition format is small and stable, and a node must not pull a
dependency for it. Queue gauges (depth, in flight, delayed, DLQ size, oldest age) come
from the replicated state at scrape time; rates come from node-local counters
(`rate(raftq_messages_sent_total[1m])`), latency from a histogram per route.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from raft.core import Status

LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


@dataclass(frozen=True, slots=True)
class NodeFigures:
    """What /metrics reports beside this node's own HTTP counters, read once per scrape."""

    status: Status
    is_leader: bool
    coalesced_entries: int  # Raft entries that carried API writes
    coalesced_commands: int  # API writes carried by those entries
    queues: list[dict[str, Any]]  # the state machine's queue views (list_queues)
    disk: dict[str, Any] | None = None  # DiskQuota.view(), when the node has a quota
    piggybacked_receives: int = 0  # long-poll receives carried by a send's entry
    long_polls: int = 0  # receives waiting now
    long_polls_refused: int = 0  # receives refused with 503 too_many_long_polls
    ports: PortFigures | None = None  # the client ports' limits at work (node/server.py)


@dataclass(frozen=True, slots=True)
class PortFigures:
    """What the client ports' limits refused, and what they hold now."""

    http_connections_refused: int
    binary_connections_refused: int
    http_slow_requests: int  # connections closed: a request not in whole in time
    request_bytes_in_flight: int
    request_bytes_refused: int  # HTTP requests answered 503 overloaded


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


class Histogram:
    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKETS_S)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if value <= bound:
                self.counts[i] += 1
                break


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = defaultdict(Histogram)
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self.acked: dict[str, int] = defaultdict(int)
        self.leader_changes = 0

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        self.latency[route].observe(seconds)

    def count_sent(self, queue: str, n: int) -> None:
        self.sent[queue] += n

    def count_received(self, queue: str, n: int) -> None:
        self.received[queue] += n

    def count_acked(self, queue: str, n: int) -> None:
        self.acked[queue] += n

    def render(self, figures: NodeFigures) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("raftq_http_requests_total", "counter", "HTTP requests by route and status.")
        for (method, route, status), n in sorted(self.requests.items()):
            out.append(
                f"raftq_http_requests_total{_labels(method=method, route=route, status=status)} {n}"
            )
        family("raftq_http_request_duration_seconds", "histogram", "HTTP request latency.")
        for route, h in sorted(self.latency.items()):
            cumulative = 0
            for bound, c in zip(LATENCY_BUCKETS_S, h.counts, strict=True):
                cumulative += c
                out.append(
                    f"raftq_http_request_duration_seconds_bucket{_labels(route=route, le=bound)} {cumulative}"
                )
            out.append(
                f"raftq_http_request_duration_seconds_bucket{_labels(route=route, le='+Inf')} {h.count}"
            )
            out.append(
                f"raftq_http_request_duration_seconds_sum{_labels(route=route)} {h.total:.6f}"
            )
            out.append(f"raftq_http_request_duration_seconds_count{_labels(route=route)} {h.count}")
        for name, data, help_text in (
            ("raftq_messages_sent_total", self.sent, "Messages accepted by this node's API."),
            ("raftq_messages_received_total", self.received, "Messages delivered by this node."),
            ("raftq_messages_acked_total", self.acked, "Messages acknowledged via this node."),
        ):
            family(name, "counter", help_text)
            for q, n in sorted(data.items()):
                out.append(f"{name}{_labels(queue=q)} {n}")

        st = figures.status
        family("raftq_raft_term", "gauge", "Current Raft term.")
        out.append(f"raftq_raft_term {st.term}")
        family("raftq_raft_commit_index", "gauge", "Raft commit index.")
        out.append(f"raftq_raft_commit_index {st.commit}")
        family("raftq_raft_applied_index", "gauge", "Index applied to the state machine.")
        out.append(f"raftq_raft_applied_index {st.applied}")
        family("raftq_raft_is_leader", "gauge", "1 if this node leads.")
        out.append(f"raftq_raft_is_leader {1 if figures.is_leader else 0}")
        family("raftq_raft_leader_changes_total", "counter", "Leader changes seen by this node.")
        out.append(f"raftq_raft_leader_changes_total {self.leader_changes}")
        family("raftq_coalesced_entries_total", "counter", "Raft entries that carried API writes.")
        out.append(f"raftq_coalesced_entries_total {figures.coalesced_entries}")
        family("raftq_coalesced_commands_total", "counter", "API writes carried by those entries.")
        out.append(f"raftq_coalesced_commands_total {figures.coalesced_commands}")
        family(
            "raftq_receives_with_send_total",
            "counter",
            "Long-poll receives that a send carried in its own Raft entry.",
        )
        out.append(f"raftq_receives_with_send_total {figures.piggybacked_receives}")

        family("raftq_long_polls", "gauge", "Receives waiting (wait_s) on this node now.")
        out.append(f"raftq_long_polls {figures.long_polls}")
        family(
            "raftq_long_polls_refused_total",
            "counter",
            "Receives refused with 503 too_many_long_polls (max_long_polls).",
        )
        out.append(f"raftq_long_polls_refused_total {figures.long_polls_refused}")
        if figures.ports is not None:
            _render_ports(figures.ports, family, out)

        disk = figures.disk
        if disk is not None:
            family("raftq_disk_used_bytes", "gauge", "Bytes in this node's live LMDB pages.")
            out.append(f"raftq_disk_used_bytes {disk['used_bytes']}")
            family("raftq_disk_quota_bytes", "gauge", "This node's disk quota (--quota-bytes).")
            out.append(f"raftq_disk_quota_bytes {disk['quota_bytes']}")
            family(
                "raftq_disk_quota_alarm",
                "gauge",
                "1 while the quota is reached: writes that add data get 507.",
            )
            out.append(f"raftq_disk_quota_alarm {1 if disk['alarm'] else 0}")

        queues = figures.queues
        dead_letter_targets = {
            q.get("dead_letter_queue") for q in queues if q.get("dead_letter_queue")
        }
        gauges = (
            ("raftq_queue_depth", "depth", "Messages ready to receive."),
            ("raftq_queue_in_flight", "in_flight", "Messages received and not yet acked."),
            ("raftq_queue_delayed", "delayed", "Messages waiting for their delay."),
            ("raftq_queue_oldest_age_seconds", "oldest_age_ms", "Age of the oldest ready message."),
            ("raftq_queue_sent_total", "sent_total", "Messages ever enqueued (replicated)."),
            ("raftq_queue_acked_total", "acked_total", "Messages ever acked (replicated)."),
            (
                "raftq_queue_dead_lettered_total",
                "dead_lettered_total",
                "Messages moved to the DLQ.",
            ),
        )
        for name, key, help_text in gauges:
            family(name, "counter" if name.endswith("_total") else "gauge", help_text)
            for q in queues:
                value = q.get(key) or 0
                if key == "oldest_age_ms":
                    value = value / 1000.0
                out.append(f"{name}{_labels(queue=q['name'])} {value}")
        family("raftq_dlq_depth", "gauge", "Messages waiting in dead-letter queues.")
        for q in queues:
            if q["name"] in dead_letter_targets:
                out.append(f"raftq_dlq_depth{_labels(queue=q['name'])} {q.get('depth', 0)}")
        return "\n".join(out) + "\n"


def _render_ports(ports: PortFigures, family: Any, out: list[str]) -> None:
    family(
        "raftq_connections_refused_total",
        "counter",
        "Connections closed at accept: their address held its share.",
    )
    for port, n in (
        ("http", ports.http_connections_refused),
        ("binary", ports.binary_connections_refused),
    ):
        out.append(f"raftq_connections_refused_total{_labels(port=port)} {n}")
    family(
        "raftq_slow_requests_total",
        "counter",
        "HTTP connections closed: a request not in whole within read_timeout_s.",
    )
    out.append(f"raftq_slow_requests_total {ports.http_slow_requests}")
    family(
        "raftq_request_bytes_in_flight",
        "gauge",
        "Request body bytes being read or served (max_inflight_request_bytes).",
    )
    out.append(f"raftq_request_bytes_in_flight {ports.request_bytes_in_flight}")
    family(
        "raftq_request_bytes_refused_total",
        "counter",
        "HTTP requests answered 503 overloaded: their body did not fit the budget.",
    )
    out.append(f"raftq_request_bytes_refused_total {ports.request_bytes_refused}")
