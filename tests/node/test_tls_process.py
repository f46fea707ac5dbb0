"""A TLS cluster end to end, on real node processes with certificates made at test time:
clients over https:// and raftqs:// (client certificates required), followers forwarding
to the leader over https, peers over mutual TLS, the CLI with --ca/--cert/--key; and on
the peer port, a plain-TCP peer, a peer from another CA and a peer whose certificate names
another node than it claims are refused, logged, and cannot move the term."""

from __future__ import annotations

import asyncio
import io
import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import AsyncClient, Client
from cluster.cli import EXIT_OK, EXIT_UNAVAILABLE, main
from cluster.errors import ClusterUnavailable
from cluster.launcher import ClusterTls, LocalCluster, free_ports
from node.config import Limits
from raft.framing import FrameDecoder, config_digest, encode_handshake, frame
from raft.messages import Message, MessageType, encode_message
from raft.peer_tls import peer_name
from tests.support.tls import TestCA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls(ca: TestCA) -> ClusterTls:
    return ca.cluster_tls([1, 2, 3], client_certs=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tls: ClusterTls) -> Iterator[LocalCluster]:
    """Three nodes; peers authenticate by mutual TLS alone (no secret file)."""
    c = LocalCluster.on_free_ports(3, tmp_path_factory.mktemp("tls"), tls=tls, peer_secret=False)
    try:
        c.start()
        c.wait_for_leader(timeout_s=60)
        for i in c.ids:
            c.wait_ready(i, timeout_s=60)
        yield c
    finally:
        c.stop_all()


def client_options(tls: ClusterTls) -> dict[str, str]:
    assert tls.client_cert is not None and tls.client_key is not None
    return {
        "ca_file": str(tls.ca),
        "cert_file": str(tls.client_cert),
        "key_file": str(tls.client_key),
    }


def _view(cluster: LocalCluster, tls: ClusterTls, node_id: int) -> dict:
    view = cluster.cluster_view(node_id, timeout_s=5)
    assert view is not None, f"node {node_id} does not answer over https"
    return view


def _term(cluster: LocalCluster, tls: ClusterTls, node_id: int) -> int:
    return int(_view(cluster, tls, node_id)["term"])


# ---------------------------------------------------------------- clients


def test_the_nodes_advertise_https_and_raftqs(cluster: LocalCluster, tls: ClusterTls) -> None:
    view = _view(cluster, tls, 1)
    assert {n["url"] for n in view["nodes"]} == set(cluster.urls)
    assert all(u.startswith("https://") for u in cluster.urls)
    assert view["binary_url"] == cluster.binary_url(1)
    assert cluster.binary_url(1).startswith("raftqs://")


@pytest.mark.parametrize("scheme", ["https", "raftqs"])
def test_send_receive_ack_over_tls(cluster: LocalCluster, tls: ClusterTls, scheme: str) -> None:
    servers = cluster.servers if scheme == "https" else cluster.binary_servers
    with Client(servers, timeout_s=30, **client_options(tls)) as client:
        q = client.queue(f"tls-{scheme}")
        q.create(visibility_timeout_s=30)
        q.send({"over": scheme}, dedup_id=f"one-{scheme}")
        msg = q.receive(wait_s=5)
        assert msg is not None and msg.data == {"over": scheme}
        assert q.acknowledge(msg) is True
        assert q.info()["depth"] == 0 and q.info()["in_flight"] == 0


def test_a_follower_forwards_to_the_leader_over_https(
    cluster: LocalCluster, tls: ClusterTls
) -> None:
    """No redirect asked: the follower relays the write to the leader, presenting its own
    certificate to the leader's client port (which requires one)."""
    leader = cluster.wait_for_leader(timeout_s=30)
    follower = next(i for i in cluster.ids if i != leader.id)
    ctx = tls.ssl_context()
    base = cluster.url(follower)
    for method, path, body in [
        ("PUT", "/v1/queues/forwarded", {}),
        ("POST", "/v1/queues/forwarded/messages", {"messages": [{"body": "via follower"}]}),
    ]:
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method=method)
        with urllib.request.urlopen(request, timeout=20, context=ctx) as answer:
            assert answer.status in (200, 201)
    with Client(cluster.servers, **client_options(tls)) as client:
        assert client.queue("forwarded").info()["depth"] == 1


def test_a_client_without_a_client_certificate_is_refused(
    cluster: LocalCluster, tls: ClusterTls
) -> None:
    for servers in (cluster.servers, cluster.binary_servers):
        with (
            pytest.raises(ClusterUnavailable, match=r"TLS: |connection error|disconnected"),
            Client(servers, timeout_s=2, request_timeout_s=1, ca_file=str(tls.ca)) as client,
        ):
            client.queues()


def test_a_client_that_does_not_trust_the_cluster_ca_is_refused(
    cluster: LocalCluster, tls: ClusterTls
) -> None:
    options = {**client_options(tls), "ca_file": None}  # the system's CAs: not ours
    with (
        pytest.raises(ClusterUnavailable, match=r"TLS: .*CERTIFICATE_VERIFY_FAILED"),
        Client(cluster.servers, timeout_s=2, request_timeout_s=1, **options) as client,
    ):
        client.queues()


async def test_the_async_client_takes_an_ssl_context(
    cluster: LocalCluster, tls: ClusterTls
) -> None:
    async with AsyncClient(cluster.binary_servers, ssl_context=tls.ssl_context()) as client:
        view = await client.cluster()
        assert view["leader"] is not None


def test_the_cli_with_ca_cert_and_key(
    cluster: LocalCluster, tls: ClusterTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = ["--servers", cluster.binary_servers, "--ca", str(tls.ca)]
    flags += ["--cert", str(tls.client_cert), "--key", str(tls.client_key)]

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main([*argv], stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    code, out, err = run(*flags, "queue", "create", "cli-tls")
    assert code == EXIT_OK, err
    code, out, err = run(*flags, "send", "cli-tls", "hello over tls")
    assert code == EXIT_OK, err
    code, out, err = run(*flags, "recv", "cli-tls", "--ack", "--json", "--wait", "5")
    assert code == EXIT_OK, err
    assert "hello over tls" in out
    code, out, err = run(
        "--servers",
        cluster.servers,
        "status",
        "--ca",
        str(tls.ca),
        "--cert",
        str(tls.client_cert),
        "--key",
        str(tls.client_key),
    )
    assert code == EXIT_OK and "leader" in out.lower(), err
    # the same from the environment
    monkeypatch.setenv("RAFTQ_CA_FILE", str(tls.ca))
    monkeypatch.setenv("RAFTQ_CERT_FILE", str(tls.client_cert))
    monkeypatch.setenv("RAFTQ_KEY_FILE", str(tls.client_key))
    code, out, err = run("--servers", cluster.servers, "queue", "list")
    assert code == EXIT_OK and "cli-tls" in out, err
    # and without a client certificate, refused
    monkeypatch.delenv("RAFTQ_CERT_FILE")
    monkeypatch.delenv("RAFTQ_KEY_FILE")
    code, out, err = run("--servers", cluster.servers, "--timeout", "2", "queue", "list")
    assert code == EXIT_UNAVAILABLE, (out, err)


def test_half_a_client_certificate_is_a_usage_error(tls: ClusterTls) -> None:
    err = io.StringIO()
    code = main(["--cert", str(tls.client_cert), "status"], stdout=io.StringIO(), stderr=err)
    assert code == 2 and "both" in err.getvalue()


# ---------------------------------------------------------------- the peer port


async def _speak_raft(
    host: str, port: int, ctx: ssl.SSLContext | None, claimed: int, to: int, term: int
) -> bytes:
    """Connect to a node's peer port (over TLS with `ctx`), claim to be node `claimed`
    and ask for its vote at `term`; returns what the node sent back before closing."""
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname="" if ctx else None
        )
    except (ssl.SSLError, ConnectionError):
        return b""  # refused in the TLS handshake
    try:
        hello = encode_handshake(
            "raftq", claimed, to, None, config=config_digest((), Limits().max_entry_bytes)
        )
        vote = Message(
            MessageType.VOTE, to=to, frm=claimed, term=term, log_term=term, index=1 << 40
        )
        writer.write(frame(hello) + frame(encode_message(vote)))
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 5)
        except (ConnectionError, ssl.SSLError):
            return b""
    finally:
        writer.close()


def _peer_context(ca: TestCA, cert_ca: TestCA, name: str) -> ssl.SSLContext:
    """A client context presenting a certificate for `name` from `cert_ca`, trusting `ca`."""
    pair = cert_ca.issue(f"attacker-{name}", name)
    ctx = ssl.create_default_context(cafile=str(ca.ca_file))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


def _wait_for_log(path: Path, needle: str, since: int) -> None:
    deadline = time.monotonic() + 10
    while needle not in path.read_bytes()[since:].decode("utf-8", "replace"):
        assert time.monotonic() < deadline, f"no {needle} in {path}"
        time.sleep(0.1)


@pytest.mark.parametrize("attacker", ["plain_tcp", "other_ca", "other_node_cert"])
def test_a_bad_peer_is_refused_and_cannot_move_the_term(
    cluster: LocalCluster, tls: ClusterTls, ca: TestCA, tmp_path: Path, attacker: str
) -> None:
    leader = cluster.wait_for_leader(timeout_s=30)
    follower = next(i for i in cluster.ids if i != leader.id)
    other = next(i for i in cluster.ids if i not in (leader.id, follower))
    spec = cluster.specs[follower]
    since = spec.log_path.stat().st_size
    if attacker == "plain_tcp":
        ctx, needle = None, "raft.transport.tls_refused"
    elif attacker == "other_ca":
        rogue = TestCA(tmp_path / "rogue", "rogue")
        ctx, needle = _peer_context(ca, rogue, peer_name(other)), "raft.transport.tls_refused"
    else:  # a genuine certificate of the cluster CA, for the leader, claiming `other`
        ctx = _peer_context(ca, ca, peer_name(leader.id))
        needle = "raft.transport.peer_identity_mismatch"
    before = _term(cluster, tls, leader.id)
    said = asyncio.run(_speak_raft(spec.host, spec.raft_port, ctx, other, follower, before + 100))
    assert FrameDecoder(4096).feed(said) == []  # nothing but a closed connection
    _wait_for_log(spec.log_path, needle, since)
    time.sleep(1.0)  # a vote at that term would have started an election by now
    assert _term(cluster, tls, leader.id) == before == _term(cluster, tls, follower)


# ---------------------------------------------------------------- joining


def test_a_node_joins_a_tls_cluster_over_https(tmp_path: Path, ca: TestCA) -> None:
    """`--join https://...`: the new node verifies the cluster with --tls-ca and presents
    its certificate (client certificates required), then replicates over mutual TLS."""
    tls = ca.cluster_tls([1, 2], client_certs=True)
    ports = free_ports(6)
    c = LocalCluster(
        nodes=1,
        data_dir=tmp_path / "join",
        http_port=ports[:1],
        raft_port=ports[1:2],
        binary_port=ports[2:3],
        tls=tls,
        peer_secret=False,
    )
    try:
        c.start()
        c.wait_for_leader(timeout_s=60)
        new = c.add_node(ports[3], ports[4], binary_port=ports[5])
        assert c.command(new)[c.command(new).index("--join") + 1].startswith("https://")
        c.start_node(new)
        deadline = time.monotonic() + 60
        while True:
            view = c.cluster_view(1) or {}
            voters = [n["id"] for n in view.get("nodes", []) if n.get("voter")]
            if sorted(voters) == [1, new]:
                break
            assert time.monotonic() < deadline, f"node {new} never became a voter: {view}"
            time.sleep(0.2)
        c.wait_ready(new, timeout_s=60)
        with Client(c.servers, **client_options(tls)) as client:
            client.queue("after-join").create()
            assert "after-join" in [q["name"] for q in client.queues()]
    finally:
        c.stop_all()
