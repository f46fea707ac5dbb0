"""Every HTTP endpoint that takes a body, fed random bodies on a real node: JSON built from
the API's own field names with values of any type, raw bytes, and msgpack.

The property (DEVELOPERS.md): no input produces a 500, and a refused request (4xx)
changes nothing, which the node's own state hash shows.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote, urlsplit

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.launcher import LocalCluster
from tests.fuzz import fuzz_settings

pytestmark = pytest.mark.integration

# The API's field names, so random bodies reach past the first "unknown field" check.
FIELDS = [
    "messages", "body", "body_b64", "attributes", "delay_s", "dedup_id", "group_id",
    "priority", "max", "visibility_timeout_s", "wait_s", "auto_ack", "receipts",
    "max_receives", "dead_letter_queue", "fifo", "content_based_dedup", "retention_s",
    "max_message_bytes", "ops", "txn_id", "op", "queue", "receipt", "producer",
    "producer_id", "epoch", "seq", "id", "url", "raft_addr", "to", "limit", "from",
    "name", "permissions", "read", "write", "admin", "token",
    "type", "alternate_queue", "routing_key", "pattern", "headers", "match", "expires_s",
    "records", "key", "value", "value_b64", "headers", "partition", "partitions",
    "retention_bytes", "topic", "member_id", "session_timeout_s", "start", "generation",
    "offsets", "offset", "publish", "commit_offsets", "group",
]  # fmt: skip

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["fz", "\ud800", "a\n", "x" * 300, "", "0" * 20])
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6) | values

ROUTES = [
    ("PUT", "/v1/queues/{name}"),
    ("POST", "/v1/queues/{name}/messages"),
    ("POST", "/v1/queues/{name}/receive"),
    ("POST", "/v1/queues/{name}/ack"),
    ("POST", "/v1/queues/{name}/nack"),
    ("POST", "/v1/queues/{name}/extend"),
    ("POST", "/v1/queues/{name}/redrive"),
    ("POST", "/v1/transactions"),
    ("POST", "/v1/producers"),
    ("POST", "/v1/cluster/transfer-leader"),
    ("POST", "/v1/cluster/members"),
    ("POST", "/v1/users"),
    ("PUT", "/v1/users/{name}/permissions"),
    ("POST", "/v1/users/{name}/token"),
    ("POST", "/v1/auth"),
    ("PUT", "/v1/exchanges/{name}"),
    ("POST", "/v1/exchanges/{name}/bindings"),
    ("DELETE", "/v1/exchanges/{name}/bindings"),
    ("POST", "/v1/exchanges/{name}/bindings/delete"),
    ("POST", "/v1/exchanges/{name}/publish"),
    ("PUT", "/v1/topics/{name}"),
    ("POST", "/v1/topics/{name}/records"),
    ("POST", "/v1/groups/{name}/join"),
    ("POST", "/v1/groups/{name}/heartbeat"),
    ("POST", "/v1/groups/{name}/leave"),
    ("POST", "/v1/groups/{name}/commit"),
]
names = st.sampled_from(["fz", "fz-dlq", "missing", "fzt", "fzg"]) | st.text(max_size=12)


class Node:
    """A blocking HTTP connection to one node (hypothesis runs the examples one by one)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def call(self, method: str, path: str, raw: bytes | None, ctype: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                headers = {"Content-Type": ctype} if raw is not None else {}
                self.conn.request(method, path, body=raw, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
                if response.getheader("Content-Type", "").startswith("application/msgpack"):
                    raw = json.dumps(msgpack.unpackb(raw), default=repr).encode()
                return response.status, raw
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()  # the node may close a connection it refused: reopen
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def state_hash(self) -> str:
        status, raw = self.call("GET", "/v1/admin/state", None, "")
        assert status == 200
        return str(json.loads(raw)["state_hash"])


@pytest.fixture(scope="module")
def node(single_node: LocalCluster) -> Node:
    n = Node(single_node.urls[0])
    for name, config in (("fz-dlq", {}), ("fz", {"dead_letter_queue": "fz-dlq"})):
        assert n.call("PUT", f"/v1/queues/{name}", json.dumps(config).encode(), "application/json")[
            0
        ] in (200, 201)
    for method, path, config in (
        ("PUT", "/v1/exchanges/fz", {"type": "topic", "alternate_queue": "fz-dlq"}),
        ("POST", "/v1/exchanges/fz/bindings", {"queue": "fz", "pattern": "#"}),
    ):
        assert n.call(method, path, json.dumps(config).encode(), "application/json")[0] in (
            200,
            201,
        )
    # a topic and a group of it, so topic and group bodies reach past "not found"
    assert n.call("PUT", "/v1/topics/fzt", b'{"partitions": 2}', "application/json")[0] in (
        200,
        201,
    )
    join = b'{"topic": "fzt", "member_id": "m", "session_timeout_s": 3600}'
    assert n.call("POST", "/v1/groups/fzg/join", join, "application/json")[0] == 200
    return n


def _encode(body: Any, codec: str) -> tuple[bytes, str]:
    if codec == "json":
        return json.dumps(body).encode("utf-8", "surrogatepass"), "application/json"
    if codec == "msgpack":
        try:
            return msgpack.packb(body, use_bin_type=True), "application/msgpack"
        except (OverflowError, UnicodeEncodeError, ValueError):
            return b"\xc1", "application/msgpack"  # never-used msgpack byte: undecodable
    return body if isinstance(body, bytes) else repr(body).encode(), "application/json"


def _tame(path: str, body: Any) -> Any:
    """Keep each example short: a receive long-polls for at most 0.05 s."""
    if path.endswith("/receive") and isinstance(body, dict) and "wait_s" in body:
        body = {
            **body,
            "wait_s": 0.05 if isinstance(body["wait_s"], int | float) else body["wait_s"],
        }
    return body


@fuzz_settings(150)
@given(
    route=st.sampled_from(ROUTES),
    name=names,
    body=bodies | st.binary(max_size=60),
    codec=st.sampled_from(["json", "msgpack", "raw"]),
)
def test_no_body_gets_a_500_and_a_refused_one_changes_nothing(
    node: Node, route: tuple[str, str], name: str, body: Any, codec: str
) -> None:
    method, template = route
    path = template.replace("{name}", quote(name, safe="") or "%20")
    if isinstance(body, bytes) and codec != "raw":
        codec = "raw"
    raw, ctype = _encode(_tame(path, body), codec)
    before = node.state_hash()
    status, answer = node.call(method, path, raw, ctype)
    assert status < 500, (method, path, raw[:200], answer[:300])
    if 400 <= status < 500:
        assert node.state_hash() == before, (method, path, raw[:200], answer[:300])
        error = json.loads(answer)["error"]
        assert error["code"] and error["message"]
