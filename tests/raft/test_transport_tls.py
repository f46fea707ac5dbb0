"""Mutual TLS on the peer port, over real loopback sockets with certificates made at test
time: messages flow between nodes of one CA; another CA, plain TCP, and a certificate
that names another node than the one claimed are refused and logged, and deliver nothing
(so they cannot move a term)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from raft.peer_tls import PeerTls, cert_node_id, cert_node_ids, peer_name
from tests.raft import test_transport as plain
from tests.raft.test_transport import Inbox, app, events, wait_until
from tests.support.tls import TestCA

# the fixtures of the plain-TCP transport tests
logs = plain.logs
make_transport = plain.make_transport

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "certs")


# ---------------------------------------------------------------- the id convention


def test_a_certificate_names_its_node_by_dns_san() -> None:
    cert = {"subjectAltName": (("DNS", "raftq-node-3"), ("IP Address", "10.0.0.3"))}
    assert cert_node_id(cert) == 3 and peer_name(3) == "raftq-node-3"


def test_without_a_san_the_common_name_names_the_node() -> None:
    cert = {"subject": ((("organizationName", "x"),), (("commonName", "raftq-node-12"),))}
    assert cert_node_id(cert) == 12


@pytest.mark.parametrize(
    "sans",
    [
        (),
        (("DNS", "node-3"),),
        (("DNS", "raftq-node-0"),),
        (("DNS", "raftq-node-03"),),
        (("DNS", "raftq-node-3x"),),
        (("URI", "raftq-node-3"),),
        (("DNS", "raftq-node-3"), ("DNS", "raftq-node-4")),  # two nodes: nobody
    ],
)
def test_a_certificate_that_names_no_single_node_identifies_nobody(sans: Any) -> None:
    assert cert_node_id({"subjectAltName": sans}) is None


def test_a_dns_san_wins_over_the_common_name() -> None:
    cert = {
        "subjectAltName": (("DNS", "raftq-node-3"),),
        "subject": ((("commonName", "raftq-node-5"),),),
    }
    assert cert_node_id(cert) == 3


def test_two_identical_names_are_one_node() -> None:
    cert = {"subjectAltName": (("DNS", "raftq-node-3"), ("DNS", "raftq-node-3"))}
    assert cert_node_ids(cert) == {3} and cert_node_id(None) is None


# ---------------------------------------------------------------- on the wire


async def test_messages_flow_over_mutual_tls(make_transport: Any, ca: TestCA, logs: Any) -> None:
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, tls=ca.peer_tls(1))
    b = await make_transport(2, {1: a.listen_addr}, tls=ca.peer_tls(2))
    for i in range(20):
        b.send(app(2, 1, i))
    got = await inbox.wait_for_count(20)
    assert [m.index for m in got] == list(range(20))
    assert not events(logs, "raft.transport.tls_refused")


async def test_mutual_tls_and_the_secret_together(make_transport: Any, ca: TestCA) -> None:
    inbox = Inbox()
    secret = b"cluster-secret-0123456789"
    a = await make_transport(1, inbox=inbox, tls=ca.peer_tls(1), secret=secret)
    b = await make_transport(2, {1: a.listen_addr}, tls=ca.peer_tls(2), secret=secret)
    b.send(app(2, 1, 7, b"sealed inside tls"))
    (msg,) = await inbox.wait_for_count(1)
    assert msg.entries[0].data == b"sealed inside tls"


async def _refused(a: Any, inbox: Inbox, logs: Any, event: str) -> list[dict[str, Any]]:
    """Wait until `a` logged `event`; nothing may have been delivered meanwhile."""
    await wait_until(lambda: bool(events(logs, event)))
    await asyncio.sleep(0.3)  # anything the refused peer sent would have arrived by now
    assert inbox.messages == []
    assert a.received == 0
    return events(logs, event)


async def test_a_peer_with_a_certificate_from_another_ca_is_refused(
    make_transport: Any, ca: TestCA, tmp_path: Path, logs: Any
) -> None:
    """The rogue trusts the cluster's CA (so only node 1's check stands in its way)."""
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, tls=ca.peer_tls(1))
    rogue = TestCA(tmp_path / "rogue", "rogue").peer(2)
    tls = PeerTls.from_files(str(rogue.cert), str(rogue.key), str(ca.ca_file))
    b = await make_transport(2, {1: a.listen_addr}, tls=tls)
    b.send(app(2, 1, 1))
    refused = await _refused(a, inbox, logs, "raft.transport.tls_refused")
    assert "CERTIFICATE_VERIFY_FAILED" in refused[0]["error"]
    assert a.rejected_connections >= 1


async def test_a_node_does_not_dial_into_another_ca(
    make_transport: Any, ca: TestCA, tmp_path: Path, logs: Any
) -> None:
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, tls=TestCA(tmp_path / "other", "other").peer_tls(1))
    b = await make_transport(2, {1: a.listen_addr}, tls=ca.peer_tls(2))
    b.send(app(2, 1, 1))
    await wait_until(lambda: bool(events(logs, "raft.transport.connect_failed")))
    assert "CERTIFICATE_VERIFY_FAILED" in events(logs, "raft.transport.connect_failed")[0]["error"]
    await asyncio.sleep(0.2)
    assert inbox.messages == []


async def test_a_plain_tcp_peer_is_refused(make_transport: Any, ca: TestCA, logs: Any) -> None:
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, tls=ca.peer_tls(1))
    b = await make_transport(2, {1: a.listen_addr})  # no TLS at all
    b.send(app(2, 1, 1))
    await _refused(a, inbox, logs, "raft.transport.tls_refused")


async def test_a_peer_whose_certificate_names_another_node_is_refused(
    make_transport: Any, ca: TestCA, logs: Any
) -> None:
    """Node 2 holds node 3's (valid) certificate: it claims 2, its certificate says 3."""
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, tls=ca.peer_tls(1))
    b = await make_transport(2, {1: a.listen_addr}, tls=ca.peer_tls(2, names=3))
    b.send(app(2, 1, 1))
    (refused, *_) = await _refused(a, inbox, logs, "raft.transport.peer_identity_mismatch")
    assert refused["side"] == "accept" and refused["claimed"] == 2 and refused["cert_ids"] == [3]


async def test_the_dialer_refuses_a_node_that_is_not_the_peer_it_dialed(
    make_transport: Any, ca: TestCA, logs: Any
) -> None:
    """At node 1's address for peer 3 answers a node whose certificate names 1: node 2
    sends it nothing."""
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, tls=ca.peer_tls(1))
    b = await make_transport(2, {3: a.listen_addr}, tls=ca.peer_tls(2))
    b.send(app(2, 3, 1))
    (refused, *_) = await _refused(a, inbox, logs, "raft.transport.peer_identity_mismatch")
    assert refused["side"] == "dial" and refused["peer"] == 3 and refused["cert_ids"] == [1]
    assert not b.connected(3)
