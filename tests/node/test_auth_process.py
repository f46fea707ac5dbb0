"""Client auth on a real 3-node cluster (LocalCluster(auth=True): the nodes' bootstrap
admin token in a 0600 file): every route without a token, with a wrong one, with one
lacking the permission (401/403 and the state unchanged), and with the right one; users
added, rotated and deleted on every node; the binary port's session; producer and
transaction ids namespaced by user; the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cluster import cli
from cluster.errors import Forbidden, Unauthorized
from cluster.launcher import LocalCluster
from cluster.sync_client import Client
from common.tokens import new_token
from node.api import ROUTES
from node.auth import ADMIN, IN_HANDLER, OPEN, READ, USER, WRITE
from tests.support.api_client import ApiClient

pytestmark = pytest.mark.integration

QUEUE = "authq"
ACCESS_BY_ROUTE = {(m, p): a for m, p, _h, a in ROUTES}


def _concrete(path: str) -> str:
    """A route's path on a scratch queue (the admin's pass deletes and purges it)."""
    for param, value in (
        ("{name}", "scratch"),
        ("{id}", "9"),
        ("{user}", "ghost"),
        ("{group}", "scratch"),
        ("{p}", "0"),
    ):
        path = path.replace(param, value)
    return path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster.on_free_ports(3, tmp_path_factory.mktemp("auth"), auth=True)
    try:
        cluster.start()
        cluster.wait_for_leader(timeout_s=30)
        token = cluster.admin_token
        assert token is not None
        deadline = time.monotonic() + 20
        while True:  # the leader adds the bootstrap admin through the log
            with Client(cluster.servers, token=token, timeout_s=5) as c:
                try:
                    if c.whoami().get("user") == "admin":
                        break
                except Unauthorized:
                    pass
            assert time.monotonic() < deadline, "the bootstrap admin never appeared"
            time.sleep(0.2)
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def admin(secured: LocalCluster) -> Iterator[Client]:
    with Client(secured.servers, token=secured.admin_token) as c:
        c.queue(QUEUE).create()
        yield c


@pytest.fixture
async def leader_api(secured: LocalCluster) -> AsyncIterator[ApiClient]:
    leader = secured.wait_for_leader(timeout_s=30)
    async with ApiClient(leader.url) as api:
        yield api


async def _state(secured: LocalCluster) -> str:
    leader = secured.wait_for_leader(timeout_s=30)
    async with ApiClient(leader.url, token=secured.admin_token) as api:
        status, body = await api.get("/v1/admin/state")
        assert status == 200, body
        return body["state_hash"]


async def _each_guarded_route(api: ApiClient, token: str | None) -> dict[tuple[str, str], int]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    out = {}
    for method, path, _handler, access in ROUTES:
        if access == OPEN:
            continue
        body = None if method in ("GET", "DELETE") else b"{}"
        assert api.session is not None
        async with api.session.request(
            method,
            api.url + _concrete(path),
            data=body,
            headers={**headers, "Content-Type": "application/json"},
            allow_redirects=False,
        ) as resp:
            out[(method, path)] = resp.status
    return out


async def test_every_route_but_health_needs_a_valid_token(
    secured: LocalCluster, admin: Client, leader_api: ApiClient
) -> None:
    before = await _state(secured)
    wrong = new_token("admin")  # well formed, the right user, not its token
    for token in (None, "", "not-a-token", wrong):
        statuses = await _each_guarded_route(leader_api, token)
        assert set(statuses.values()) == {401}, (token, statuses)
    status, _, headers = await leader_api.call_with_headers("GET", "/v1/queues")
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
    for path in ("/v1/health", "/v1/ready"):
        assert (await leader_api.get(path))[0] == 200
    assert await _state(secured) == before


async def test_a_user_without_the_permission_gets_403_and_changes_nothing(
    secured: LocalCluster, admin: Client, leader_api: ApiClient
) -> None:
    _user, token = admin.add_user("nobody", {})
    before = await _state(secured)
    statuses = await _each_guarded_route(leader_api, token)
    for route, status in statuses.items():
        access = ACCESS_BY_ROUTE[route]
        if access in (READ, WRITE, ADMIN):
            assert status == 403, (route, status)
        elif access == USER:
            assert status == 200, (route, status)
        else:
            assert access == IN_HANDLER and status in (400, 403), (route, status)
    headers = {"Authorization": f"Bearer {token}"}
    for path, body in (
        (
            "/v1/transactions",
            {"txn_id": "t", "send": [{"queue": QUEUE, "messages": [{"body": "x"}]}]},
        ),
        ("/v1/transactions", {"txn_id": "t", "ack": [{"queue": QUEUE, "receipt": "0.1.A"}]}),
        ("/v1/producers", {}),
    ):
        status, answer, _ = await leader_api.call_with_headers("POST", path, body, headers=headers)
        assert status == 403 and answer["error"]["code"] == "forbidden", (path, answer)
    assert await _state(secured) == before
    admin.remove_user("nobody")


async def test_the_admin_passes_every_route(
    secured: LocalCluster, admin: Client, leader_api: ApiClient
) -> None:
    statuses = await _each_guarded_route(leader_api, secured.admin_token)
    assert not {s for s in statuses.values() if s in (401, 403)}, statuses


def test_permissions_follow_queue_name_patterns(secured: LocalCluster, admin: Client) -> None:
    for name in ("orders.eu", "orders.us", "billing"):
        admin.queue(name).create()
    _user, token = admin.add_user(
        "shop", {"write": ["orders.*"], "read": ["orders.eu"], "admin": []}
    )
    with Client(secured.binary_servers, token=token) as shop:
        assert shop.whoami()["user"] == "shop"
        shop.queue("orders.us").send("to us")
        shop.queue("orders.eu").send("to eu")
        got = shop.queue("orders.eu").receive(max=5)
        assert [m.body for m in got] == ["to eu"]
        shop.queue("orders.eu").acknowledge_many(got)
        with pytest.raises(Forbidden):
            shop.queue("orders.us").receive(max=1)
        with pytest.raises(Forbidden):
            shop.queue("billing").send("no")
        with pytest.raises(Forbidden):
            shop.queue("orders.new").create()
        assert sorted(q["name"] for q in shop.request("GET", "/v1/queues")["queues"]) == [
            "orders.eu",
            "orders.us",
        ]
    admin.remove_user("shop")


def test_the_binary_port_refuses_a_connection_without_a_valid_session(
    secured: LocalCluster, admin: Client
) -> None:
    for token in (None, new_token("admin")):
        with Client(secured.binary_servers, token=token, timeout_s=5) as stranger:
            started = time.monotonic()
            with pytest.raises(Unauthorized):
                stranger.queue(QUEUE).send("x")
            assert time.monotonic() - started < 3  # refused at once, not retried to the deadline


async def test_a_rotated_token_and_a_deleted_user_stop_working_on_every_node(
    secured: LocalCluster, admin: Client
) -> None:
    _user, old = admin.add_user("rotor", {"read": ["*"]})
    new = admin.rotate_token("rotor")
    assert new != old

    async def status_everywhere(token: str) -> set[int]:
        out = set()
        for url in secured.urls:
            async with ApiClient(url, token=token) as api:
                out.add((await api.get("/v1/whoami"))[0])
        return out

    async def eventually(token: str, want: set[int]) -> None:
        deadline = time.monotonic() + 10
        while (got := await status_everywhere(token)) != want:
            assert time.monotonic() < deadline, (want, got)
            await asyncio.sleep(0.1)

    await eventually(old, {401})
    await eventually(new, {200})
    admin.remove_user("rotor")
    await eventually(new, {401})


def test_one_user_can_neither_fence_nor_preempt_anothers_ids(
    secured: LocalCluster, admin: Client
) -> None:
    """Producer ids and txn ids are per user: the same id from two users is two ids."""
    admin.queue("shared").create()
    tokens = {n: admin.add_user(n, {"read": ["shared"], "write": ["shared"]})[1] for n in "ab"}
    with (
        Client(secured.servers, token=tokens["a"]) as a,
        Client(secured.servers, token=tokens["b"]) as b,
    ):
        pa = a.request("POST", "/v1/producers", json_body={"producer_id": "same"})
        pb = b.request("POST", "/v1/producers", json_body={"producer_id": "same"})
        assert pa == {"producer_id": "same", "epoch": 0} == pb  # b did not bump a's epoch
        sent = a.request(
            "POST",
            "/v1/queues/shared/messages",
            json_body={
                "messages": [{"body": "from a"}],
                "producer": {"id": "same", "epoch": 0, "seq": 0},
            },
        )
        assert not sent["messages"][0]["duplicate"]  # a is not fenced
        first = a.request(
            "POST",
            "/v1/transactions",
            json_body={"txn_id": "t1", "send": [{"queue": "shared", "messages": [{"body": "a1"}]}]},
        )
        second = b.request(
            "POST",
            "/v1/transactions",
            json_body={"txn_id": "t1", "send": [{"queue": "shared", "messages": [{"body": "b1"}]}]},
        )
        assert first["txn_id"] == second["txn_id"] == "t1"
        assert not first.get("duplicate") and not second.get("duplicate")
        bodies = sorted(m.body for m in a.queue("shared").receive(max=10))
        assert bodies == ["a1", "b1", "from a"]
    for n in "ab":
        admin.remove_user(n)


def test_a_follower_forwards_with_the_callers_token(secured: LocalCluster, admin: Client) -> None:
    leader = secured.wait_for_leader(timeout_s=30)
    follower = next(u for i, u in zip(secured.ids, secured.urls, strict=True) if i != leader.id)
    with Client([follower], token=secured.admin_token) as c:
        assert c.queue(QUEUE).send("via a follower")
    with Client([follower], token=None, timeout_s=5) as c, pytest.raises(Unauthorized):
        c.queue(QUEUE).send("no token")


def test_cli_adds_lists_and_removes_users(
    secured: LocalCluster, admin: Client, tmp_path: Path
) -> None:
    admin_file = str(secured.admin_token_path)

    def run(*argv: str, token_file: str = admin_file) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(
            ["--servers", secured.servers, "--token-file", token_file, *argv],
            stdout=out,
            stderr=err,
        )
        return code, out.getvalue(), err.getvalue()

    code, out, err = run("user", "add", "cli-app", "--write", "authq", "--read", "authq")
    assert code == 0, err
    token_file = tmp_path / "cli-app.token"
    token_file.write_text(out)
    code, out, _ = run("user", "list", "--json")
    names = [u["name"] for u in json.loads(out)["users"]]
    assert "admin" in names and "cli-app" in names
    code, out, _ = run("user", "whoami", token_file=str(token_file))
    assert code == 0 and out.startswith("cli-app")
    code, _, err = run("send", QUEUE, "hello", token_file=str(token_file))
    assert code == 0, err
    code, _, err = run("queue", "delete", QUEUE, token_file=str(token_file))
    assert code != 0 and "forbidden" in err
    assert run("user", "remove", "cli-app")[0] == 0
    code, out, err = run("user", "whoami", token_file=str(token_file))
    assert code != 0 and "unauthorized" in err, (code, out, err)


def test_topic_and_group_permissions_follow_topic_names(
    secured: LocalCluster, admin: Client
) -> None:
    """Topics take the queue rules by name (admin creates, write appends, read fetches);
    every group route needs read on the group's topic."""
    admin.topic("events.eu").create(partitions=2)
    admin.topic("billing.log").create(partitions=1)
    admin.topic("events.eu").publish("hello", partition=0)
    _user, token = admin.add_user("reader", {"read": ["events.*"], "write": [], "admin": []})
    with Client(secured.servers, token=token) as reader:
        page = reader.topic("events.eu").fetch(0)
        assert [r.text for r in page.records] == ["hello"]
        with pytest.raises(Forbidden):
            reader.topic("events.eu").publish("no")
        with pytest.raises(Forbidden):
            reader.topic("billing.log").fetch(0)
        with pytest.raises(Forbidden):
            reader.topic("events.new").create()
        joined = reader.request(
            "POST", "/v1/groups/eu-readers/join", json_body={"topic": "events.eu"}
        )
        assert joined["partitions"] == [0, 1]
        assert reader.group("eu-readers")["topic"] == "events.eu"
        with pytest.raises(Forbidden):
            reader.request("POST", "/v1/groups/bill/join", json_body={"topic": "billing.log"})
        assert [t["name"] for t in reader.topics()] == ["events.eu"]
    admin.request("POST", "/v1/groups/bill/join", json_body={"topic": "billing.log"})
    _user, other = admin.add_user("outsider", {"read": ["billing.*"]})
    with Client(secured.servers, token=other) as outsider:
        with pytest.raises(Forbidden):
            outsider.group("eu-readers")
        with pytest.raises(Forbidden):
            outsider.request(
                "POST",
                "/v1/groups/eu-readers/heartbeat",
                json_body={"member_id": joined["member_id"]},
            )
        assert outsider.group("bill")["topic"] == "billing.log"
    for name in ("reader", "outsider"):
        admin.remove_user(name)
