"""`raftq` CLI: parsing, output formats and exit codes, against fake nodes on loopback."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.cli import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    format_table,
    main,
    split_passthrough,
)
from cluster.launcher import LocalCluster
from tests.cluster.conftest import FakeCluster

REPO = Path(__file__).parents[2]
FAKE_NODE = Path(__file__).with_name("fake_node.py")


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def servers(fake: FakeCluster) -> list[str]:
    return ["--servers", ",".join(fake.urls), "--timeout", "5"]


def test_format_table() -> None:
    text = format_table(["ID", "NAME"], [(1, "alpha"), (22, None)])
    assert text.splitlines() == ["ID  NAME", "1   alpha", "22  -"]


def test_split_passthrough() -> None:
    assert split_passthrough(["node", "--id", "1"]) == ("node", ["--id", "1"], [])
    assert split_passthrough(["--servers", "http://x:1", "chaos", "--seed", "3"]) == (
        "chaos",
        ["--seed", "3"],
        ["--servers", "http://x:1"],
    )
    assert split_passthrough(["bench"])[0] == "benchmarks.queue_bench"  # type: ignore[index]
    assert split_passthrough(["status", "node"]) is None
    assert split_passthrough(["--json"]) is None


def test_usage_errors_exit_2(fake: FakeCluster) -> None:
    assert run("frobnicate")[0] == EXIT_USAGE
    assert run()[0] == EXIT_USAGE
    code, _, err = run(*servers(fake), "send", "q", "a", "--attr", "novalue")
    assert code == EXIT_USAGE and "key=value" in err
    code, _, err = run(*servers(fake), "send", "q", "a", "b", "--dedup-id", "x")
    assert code == EXIT_USAGE and "--dedup-id" in err
    code, _, err = run("--servers", "ftp://nope", "status")
    assert code == EXIT_USAGE and "invalid server URL" in err
    assert run(*servers(fake), "queue", "show")[0] == EXIT_USAGE
    assert fake.requests == []  # bad input changes nothing


def test_status_table_and_json(fake: FakeCluster) -> None:
    code, out, _ = run(*servers(fake), "status")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "URL", "ROLE", "TERM", "COMMIT", "APPLIED"]
    assert lines[1].split() == ["1*", fake.url(1), "leader", "1", "11", "10"]
    assert lines[2].split() == ["2", fake.url(2), "follower", "1", "12", "11"]
    assert lines[-1] == f"leader: node 1 ({fake.url(1)})"

    code, out, _ = run(*servers(fake), "status", "--json")
    doc = json.loads(out)
    assert code == EXIT_OK and doc["leader"] == {"id": 1, "url": fake.url(1)}
    assert [(n["id"], n["role"], n["commit_index"]) for n in doc["nodes"]] == [
        (1, "leader", 11),
        (2, "follower", 12),
        (3, "follower", 13),
    ]


def test_status_from_one_server_shows_every_node_and_marks_down(fake: FakeCluster) -> None:
    fake.take_down(3)
    code, out, _ = run("--servers", fake.url(2), "status", "--json")
    doc = json.loads(out)
    assert code == EXIT_OK
    assert [n["role"] for n in doc["nodes"]] == ["leader", "follower", "unreachable"]
    assert doc["nodes"][2]["url"] == fake.url(3) and doc["nodes"][2]["error"]


def test_queue_commands(fake: FakeCluster) -> None:
    args = servers(fake)
    code, out, _ = run(*args, "queue", "create", "jobs", "--visibility-timeout", "12", "--json")
    assert code == EXIT_OK and json.loads(out)["visibility_timeout_s"] == 12
    put = [b for _, m, p, b in fake.requests if m == "PUT"]
    assert put == [{"visibility_timeout_s": 12}]
    assert isinstance(put[0]["visibility_timeout_s"], int)
    code, _, _ = run(
        *args, "queue", "create", "dl", "--fifo", "--max-receives", "3", "--dlq", "dead"
    )
    assert code == EXIT_OK
    assert fake.queues["dl"].config["dead_letter_queue"] == "dead"
    assert fake.queues["dl"].config["fifo"] is True
    code, out, _ = run(*args, "queue", "list")
    assert out.splitlines()[0].split() == ["NAME", "DEPTH", "IN_FLIGHT", "DELAYED"]
    assert out.splitlines()[1].split() == ["jobs", "0", "0", "0"]
    code, out, _ = run(*args, "queue", "list", "--json")
    assert [q["name"] for q in json.loads(out)["queues"]] == ["jobs", "dl"]
    code, out, _ = run(*args, "queue", "show", "jobs")
    assert code == EXIT_OK and any(line.split() == ["depth", "0"] for line in out.splitlines())
    run(*args, "send", "jobs", "x")
    code, out, _ = run(*args, "queue", "purge", "jobs", "--json")
    assert json.loads(out) == {"purged": 1}
    code, out, _ = run(*args, "queue", "delete", "jobs")
    assert code == EXIT_OK and out.strip() == "deleted queue jobs"
    code, _, err = run(*args, "queue", "show", "jobs")
    assert code == EXIT_ERROR and "404 not_found" in err and len(err.splitlines()) == 1


def test_send_args_and_stdin_then_recv(fake: FakeCluster) -> None:
    args = servers(fake)
    run(*args, "queue", "create", "q")
    code, out, _ = run(
        *args, "send", "q", "one", "two", "--attr", "k=v", "--group", "g", "--priority", "2"
    )
    assert code == EXIT_OK and len(out.split()) == 2
    sent = next(b for _, _, p, b in fake.requests if p.endswith("/messages"))["messages"]
    assert [m["body"] for m in sent] == ["one", "two"]
    assert sent[0]["attributes"] == {"k": "v"} and sent[0]["group_id"] == "g"
    assert sent[0]["priority"] == 2

    code, out, _ = run(*args, "send", "q", "--json", stdin="three\n\nfour\r\n")
    doc = json.loads(out)
    assert code == EXIT_OK and len(doc["messages"]) == 2
    code, out, _ = run(*args, "send", "q", "once", "--dedup-id", "d1", "--json")
    code, out2, _ = run(*args, "send", "q", "once", "--dedup-id", "d1", "--json")
    assert json.loads(out2)["messages"][0]["duplicate"] is True
    assert json.loads(out)["messages"][0]["id"] == json.loads(out2)["messages"][0]["id"]

    code, out, _ = run(*args, "recv", "q", "--max", "2")
    lines = out.splitlines()
    assert code == EXIT_OK and lines[0].split() == ["ID", "COUNT", "RECEIPT", "BODY"]
    assert [line.split()[-1] for line in lines[1:]] == ["one", "two"]
    receipt = lines[1].split()[2]
    code, out, _ = run(*args, "ack", "q", receipt, "--json")
    assert code == EXIT_OK and json.loads(out) == {"acked": 1, "stale": []}

    code, out, _ = run(*args, "recv", "q", "--max", "10", "--ack", "--json")
    doc = json.loads(out)
    assert [m["body"] for m in doc["messages"]] == ["three", "four", "once"]
    assert doc["acked"] == 3 and doc["stale"] == []
    code, out, err = run(*args, "recv", "q", "--wait", "0.2")
    assert code == EXIT_OK and out == "" and "no messages" in err
    assert len(fake.queues["q"].messages) == 1  # "two": received, not acked


def test_cluster_unavailable_exit_3(dead_url: str) -> None:
    start = time.monotonic()
    code, out, err = run("--servers", dead_url, "--timeout", "0.5", "queue", "list")
    assert code == EXIT_UNAVAILABLE and out == ""
    assert dead_url in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - start < 3
    code, _, _ = run("--servers", dead_url, "status", "--json")
    assert code == EXIT_UNAVAILABLE


def test_env_servers_and_subprocess_entry_point(fake: FakeCluster) -> None:
    env = {**os.environ, "RAFTQ_SERVERS": ",".join(fake.urls), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "status", "--json"],
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["leader"]["id"] == 1


def test_bench_passthrough_execs_bench_queue_bench() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "bench", "--help"],
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"usage:" in proc.stdout


def test_node_passthrough_execs_python_m_node() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "node", "--help"],
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"--peers" in proc.stdout


def _consecutive_free_ports(n: int) -> int:
    """Base of `n` consecutive free ports (`raftq up` numbers its ports from a base)."""
    for base in range(20000 + os.getpid() % 20000, 60000, 97):
        try:
            socks = []
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def test_up_runs_until_sigterm_and_stops_every_node(tmp_path: Path) -> None:
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_NODE}" "$@"\n')
    wrapper.chmod(0o755)
    http = _consecutive_free_ports(6)
    raft = http + 3
    cmd = [
        sys.executable,
        "-m",
        "cluster.cli",
        "up",
        "--data-dir",
        str(tmp_path / "data"),
        "--http-port",
        str(http),
        "--raft-port",
        str(raft),
        "--python",
        str(wrapper),
        "--json",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        assert [n["url"] for n in doc["nodes"]] == [
            f"http://127.0.0.1:{http + i}" for i in range(3)
        ]
        assert doc["leader"]["id"] == 1
        pids = [n["pid"] for n in doc["nodes"]]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert b"stopping all nodes" in err
        for i in (1, 2, 3):
            assert "stopping" in (tmp_path / "data" / f"node-{i}.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- against a real 3-node cluster -------------------------------------------------------


@pytest.mark.integration
def test_every_command_json_on_real_cluster(cluster3: LocalCluster) -> None:
    args = ["--servers", cluster3.servers, "--timeout", "15"]
    code, out, _ = run(*args, "status", "--json")
    doc = json.loads(out)
    assert code == EXIT_OK and len(doc["nodes"]) == 3
    leaders = [n for n in doc["nodes"] if n["role"] == "leader"]
    assert [n["id"] for n in leaders] == [doc["leader"]["id"]]
    assert all(n["applied_index"] <= n["commit_index"] for n in doc["nodes"])
    code, out, _ = run(*args, "status")
    assert code == EXIT_OK and f"{doc['leader']['id']}*" in out.split()

    code, out, _ = run(*args, "queue", "create", "cli-dlq", "--json")
    assert code == EXIT_OK and json.loads(out)["name"] == "cli-dlq"
    code, out, _ = run(
        *args, "queue", "create", "cli-q", "--visibility-timeout", "7", "--max-receives", "2",
        "--dlq", "cli-dlq", "--json",
    )  # fmt: skip
    config = json.loads(out)
    assert code == EXIT_OK and config["visibility_timeout_s"] == 7
    assert config["dead_letter_queue"] == "cli-dlq" and config["max_receives"] == 2
    code, out, _ = run(*args, "queue", "list", "--json")
    assert {"cli-q", "cli-dlq"} <= {q["name"] for q in json.loads(out)["queues"]}

    code, out, _ = run(*args, "send", "cli-q", "a", "b", "--attr", "k=v", "--json")
    sent = json.loads(out)["messages"]
    assert code == EXIT_OK and len(sent) == 2 and not any(m["duplicate"] for m in sent)
    code, out, _ = run(*args, "send", "cli-q", "--json", stdin="c\nd\n")
    assert len(json.loads(out)["messages"]) == 2
    code, out, _ = run(*args, "send", "cli-q", "e", "--dedup-id", "cli-1", "--json")
    code, out2, _ = run(*args, "send", "cli-q", "e", "--dedup-id", "cli-1", "--json")
    assert json.loads(out2)["messages"][0] == {**json.loads(out)["messages"][0], "duplicate": True}

    code, out, _ = run(*args, "queue", "show", "cli-q", "--json")
    assert code == EXIT_OK and json.loads(out)["depth"] == 5

    code, out, _ = run(*args, "recv", "cli-q", "--max", "2", "--ack", "--json")
    doc = json.loads(out)
    assert [m["body"] for m in doc["messages"]] == ["a", "b"] and doc["acked"] == 2
    assert doc["messages"][0]["attributes"] == {"k": "v"}
    code, out, _ = run(*args, "recv", "cli-q", "--json")
    receipt = json.loads(out)["messages"][0]["receipt"]
    code, out, _ = run(*args, "ack", "cli-q", receipt, "--json")
    assert code == EXIT_OK and json.loads(out) == {"acked": 1, "stale": []}
    code, out, _ = run(*args, "ack", "cli-q", receipt, "--json")
    assert code == EXIT_ERROR and json.loads(out)["stale"] == [receipt]

    code, out, _ = run(*args, "queue", "purge", "cli-q", "--json")
    assert code == EXIT_OK
    code, out, _ = run(*args, "queue", "show", "cli-q", "--json")
    assert json.loads(out)["depth"] == 0
    code, out, _ = run(*args, "queue", "redrive", "cli-dlq", "--json")
    assert code == EXIT_OK, out
    code, out, _ = run(*args, "queue", "delete", "cli-q", "--json")
    assert code == EXIT_OK
    code, _, err = run(*args, "queue", "show", "cli-q", "--json")
    assert code == EXIT_ERROR and "not_found" in err
    code, _, err = run(*args, "queue", "create", "bad name!", "--json")
    assert code == EXIT_ERROR and "bad_request" in err


@pytest.mark.integration
def test_cli_exit_3_when_real_cluster_is_down(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(3)
    cluster.stop_all()
    args = ["--servers", cluster.servers, "--timeout", "1"]
    code, out, err = run(*args, "send", "q", "x")
    assert code == EXIT_UNAVAILABLE and out == "" and cluster.urls[0] in err
    code, out, _ = run(*args, "status", "--json")
    assert code == EXIT_UNAVAILABLE
    assert all(n["role"] == "unreachable" for n in json.loads(out)["nodes"])


def _up(data_dir: Path, http: int, *extra: str) -> tuple[subprocess.Popen[bytes], dict]:
    cmd = [sys.executable, "-m", "cluster.cli", "up", "--data-dir", str(data_dir)]
    cmd += ["--http-port", str(http), "--raft-port", str(http + 3), "--json", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        raise AssertionError(f"raftq up failed: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
    return proc, json.loads(line)


def _down(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


@pytest.mark.integration
def test_up_real_nodes_then_up_again_recovers_the_queue(tmp_path: Path) -> None:
    http = _consecutive_free_ports(6)
    data = tmp_path / "data"
    procs: list[subprocess.Popen[bytes]] = []
    pids: list[int] = []
    try:
        proc, doc = _up(data, http)
        procs.append(proc)
        pids += [n["pid"] for n in doc["nodes"]]
        servers = ",".join(n["url"] for n in doc["nodes"])
        args = ["--servers", servers, "--timeout", "15"]
        assert run(*args, "queue", "create", "durable")[0] == EXIT_OK
        assert run(*args, "send", "durable", "one", "two", "three")[0] == EXIT_OK
        _down(proc)
        assert all(not _pid_alive(p) for p in pids)

        proc, doc = _up(data, http)
        procs.append(proc)
        pids += [n["pid"] for n in doc["nodes"]]
        code, out, _ = run(*args, "recv", "durable", "--max", "10", "--ack", "--json")
        assert code == EXIT_OK
        assert [m["body"] for m in json.loads(out)["messages"]] == ["one", "two", "three"]
        _down(proc)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for pid in pids:
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:\tZ") for line in f)
    except FileNotFoundError:
        return False
