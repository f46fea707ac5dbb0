"""Any node serves any client: a follower forwards what needs the leader (real processes).

The README's curl walk-through used to fail two times in three (the PUT to node 1 got
`307 not_leader` whenever node 1 followed, and every later step failed). These tests run
requests against a follower without following redirects, and the walk-through itself,
command by command, with real curl.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import msgpack
import pytest

from cluster.launcher import LocalCluster
from tests.support.api_client import ApiClient

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def follower_of(cluster: LocalCluster) -> tuple[str, str]:
    leader = cluster.wait_for_leader(timeout_s=30)
    follower = next(i for i in cluster.ids if i != leader.id)
    return leader.url, cluster.url(follower)


async def test_follower_serves_writes_and_reads_with_the_leaders_answers(cluster3) -> None:
    leader_url, follower_url = follower_of(cluster3)
    async with ApiClient(follower_url) as follower, ApiClient(leader_url) as leader:
        status, body, headers = await follower.call_with_headers(
            "PUT", "/v1/queues/fwd", {"visibility_timeout_s": 7}, allow_redirects=False
        )
        assert status == 201, body
        assert body["name"] == "fwd" and body["visibility_timeout_s"] == 7
        assert "Location" not in headers
        status, sent = await follower.post("/v1/queues/fwd/messages", {"messages": [{"body": "a"}]})
        assert status == 200 and sent["messages"][0]["duplicate"] is False
        # the leader holds it: the write went through the log, not a local shortcut
        _, info = await leader.get("/v1/queues/fwd")
        assert info["depth"] == 1
        # a linearizable read through the follower sees it at once
        status, info = await follower.get("/v1/queues/fwd")
        assert status == 200 and info["depth"] == 1
        # the same errors as at the leader
        status, body = await follower.get("/v1/queues/nope")
        assert status == 404 and body["error"]["code"] == "not_found"
        status, body = await follower.post("/v1/queues/fwd/messages", {"messages": []})
        assert status == 400 and body["error"]["code"] == "bad_request"
        status, body = await follower.post(
            "/v1/queues/nope/messages", {"messages": [{"body": "x"}]}
        )
        assert status == 404
        status, raw = await follower.raw("POST", "/v1/queues/fwd/ack", b"{nope", "application/json")
        assert status == 400 and json.loads(raw)["error"]["code"] == "bad_request"
        # receive + ack through the follower
        status, got = await follower.post("/v1/queues/fwd/receive", {"max": 1})
        assert status == 200 and got["messages"][0]["body"] == "a"
        status, acked = await follower.post(
            "/v1/queues/fwd/ack", {"receipts": [got["messages"][0]["receipt"]]}
        )
        assert status == 200 and acked == {"acked": 1, "stale": []}


async def test_forwarded_msgpack_and_chunked_bodies(cluster3) -> None:
    _, follower_url = follower_of(cluster3)
    async with ApiClient(follower_url) as follower:
        await follower.put("/v1/queues/fwd-mp", {})
        packed = msgpack.packb({"messages": [{"body": b"\x00\xffbin"}]}, use_bin_type=True)
        status, raw = await follower.raw(
            "POST", "/v1/queues/fwd-mp/messages", packed, "application/msgpack"
        )
        assert status == 200
        assert msgpack.unpackb(raw)["messages"][0]["duplicate"] is False

        async def chunks():
            for piece in (b'{"messages": [', b'{"body": "chunked"}', b"]}"):
                yield piece

        assert follower.session is not None
        async with follower.session.post(
            follower_url + "/v1/queues/fwd-mp/messages",
            data=chunks(),
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 200, await resp.text()
        _, info = await follower.get("/v1/queues/fwd-mp")
        assert info["depth"] == 2


async def test_forwarded_long_poll_receives_a_later_send(cluster3) -> None:
    leader_url, follower_url = follower_of(cluster3)
    async with ApiClient(follower_url) as follower, ApiClient(leader_url) as leader:
        await follower.put("/v1/queues/fwd-poll", {})
        started = time.monotonic()
        poll = asyncio.create_task(follower.post("/v1/queues/fwd-poll/receive", {"wait_s": 10}))
        await asyncio.sleep(0.5)
        await leader.post("/v1/queues/fwd-poll/messages", {"messages": [{"body": "late"}]})
        status, got = await poll
        assert status == 200 and got["messages"][0]["body"] == "late"
        assert time.monotonic() - started < 8


async def test_redirect_on_request_and_no_forwarding_chains(cluster3) -> None:
    leader_url, follower_url = follower_of(cluster3)
    async with ApiClient(follower_url) as follower:
        for path, headers in (
            ("/v1/queues/redir2", {"X-Raftq-Redirect": "1"}),
            ("/v1/queues/redir2?redirect=1", {}),
            # a request another node already forwarded is never sent on again
            ("/v1/queues/redir2", {"X-Raftq-Forwarded-By": "9"}),
        ):
            status, body, got = await follower.call_with_headers(
                "PUT", path, {}, allow_redirects=False, headers=headers
            )
            assert status == 307, (path, headers, body)
            assert body["error"]["code"] == "not_leader" and body["leader_url"] == leader_url
            assert got["Location"].startswith(leader_url + "/v1/queues/redir2")
        status, _ = await follower.get("/v1/queues/redir2")
        assert status == 404  # none of those created it


async def test_without_a_leader_a_follower_answers_503_no_leader_in_bounded_time(
    make_cluster,
) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader(timeout_s=30)
    survivor = next(i for i in cluster.ids if i != leader.id)
    for i in cluster.ids:
        if i != survivor:
            cluster.kill(i)
    await asyncio.sleep(1.5)  # the survivor notices the leader is gone (no quorum left)
    async with ApiClient(cluster.url(survivor)) as node:
        started = time.monotonic()
        status, body, headers = await node.call_with_headers(
            "PUT", "/v1/queues/orphan", {}, allow_redirects=False
        )
        waited = time.monotonic() - started
    assert status == 503, body
    assert body["error"]["code"] == "no_leader" and headers["Retry-After"] == "1"
    assert 2.0 <= waited <= 10.0  # it waited for an election (forward_wait_s = 3 s), no more


async def test_a_request_during_an_election_waits_for_the_new_leader(make_cluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader(timeout_s=30)
    follower = next(i for i in cluster.ids if i != leader.id)
    async with ApiClient(cluster.url(follower)) as node:
        assert (await node.put("/v1/queues/elect", {}))[0] == 201
        cluster.kill(leader.id)
        answers = []
        for attempt in range(3):  # the contract: 503 no_leader carries Retry-After
            status, body, headers = await node.call_with_headers(
                "POST", "/v1/queues/elect/messages", {"messages": [{"body": str(attempt)}]}
            )
            answers.append((status, body))
            if status == 200:
                break
            assert status == 503 and headers.get("Retry-After"), body
            await asyncio.sleep(float(headers["Retry-After"]))
        assert answers[-1][0] == 200, answers
        _, info = await node.get("/v1/queues/elect")
        assert info["depth"] == 1


# ---------------------------------------------------------------- the README, as written


def readme_walkthrough() -> list[str]:
    """The shell commands of the README's curl walk-through, continuation lines joined."""
    text = README.read_text()
    section = text[text.index("## A walk-through with curl") :]
    block = section[section.index("```sh") + 5 : section.index("```", section.index("```sh") + 5)]
    commands, current = [], ""
    for line in block.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def test_readme_walkthrough_runs_as_written_against_a_follower(make_cluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader(timeout_s=30)
    followers = [i for i in cluster.ids if i != leader.id]
    port = {7000 + k: cluster.url(i).rsplit(":", 1)[1] for k, i in enumerate(followers, 1)}
    commands = readme_walkthrough()
    assert any("kill -9" in c for c in commands) and len(commands) >= 9
    receipt = None
    outputs: list[tuple[str, str]] = []
    for command in commands:
        if command.startswith("kill -9"):
            cluster.kill(leader.id)  # the README's <leader pid>
            continue
        assert command.startswith("curl "), command
        for readme_port, real in port.items():
            command = command.replace(f"localhost:{readme_port}", f"127.0.0.1:{real}")
        if "<receipt>" in command:
            assert receipt, "the walk-through acks before it received anything"
            command = command.replace("<receipt>", receipt)
        for attempt in range(3):  # only the send after the kill may meet an election
            run = subprocess.run(
                [*shlex.split(command.split("|")[0]), "-w", "\n%{http_code}"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            body, _, code = run.stdout.rpartition("\n")
            if not (code == "503" and "no_leader" in body and attempt < 2):
                break
            time.sleep(1)
        assert run.returncode == 0 and code.startswith("2"), (command, code, body)
        outputs.append((command, body))
        found = re.findall(r'"receipt":\s*"([^"]+)"', body)
        if found:
            receipt = found[-1]
    received = [json.loads(b) for c, b in outputs if "/receive" in c]
    assert received[0]["messages"][0]["receive_count"] == 1
    assert received[1]["messages"][0]["receive_count"] == 2  # redelivered after 5 s
    assert [json.loads(b) for c, b in outputs if "/ack" in c] == [{"acked": 1, "stale": []}]
    [stats] = [json.loads(b) for c, b in outputs if c.endswith("/v1/queues/tasks")]
    assert stats["acked_total"] == 1 and stats["visibility_timeout_s"] == 5
    assert json.loads(outputs[-1][1])["messages"][0]["duplicate"] is False
