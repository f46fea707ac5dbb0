"""The cluster's receipt key lives in the replicated state: replicas whose peer secrets
differ (a rotation under way, or no secret at all with peer TLS) still make and check the
same receipts once the key entry is applied, and the first key proposed stays."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from node.receipt_key import propose_receipt_key
from node.state.messages import receipt_key_from
from node.state_machine import QueueStateMachine
from raft.messages import Entry
from tests.node.harness import Harness

KEY = bytes(range(32))


def replicas(tmp_path: Path, secrets: list[bytes | None]) -> list[Harness]:
    """One state machine per secret, each with the fallback key its secret gives."""
    out = []
    for i, secret in enumerate(secrets):
        h = Harness(str(tmp_path / f"r{i}"))
        h.sm = QueueStateMachine(h.env, receipt_key=receipt_key_from(secret))
        out.append(h)
    return out


def test_replicas_with_different_secrets_agree_on_receipts_once_the_key_is_applied(
    tmp_path: Path,
) -> None:
    nodes = replicas(tmp_path, [b"old-secret-0123456789", b"new-secret-0123456789", None])
    for h in nodes:
        assert not h.sm.has_receipt_key()
        assert h.ok("receipt_key", key=KEY) == {"set": True}
        assert h.sm.has_receipt_key()
        h.create("q")
        h.send("q", b"x")
    receipts = [h.receive("q")[0]["receipt"] for h in nodes]
    assert len(set(receipts)) == 1  # the same receipt on every replica
    hashes = set()
    for h in nodes:  # and the same ack outcome, so the same state
        assert h.ok("ack", queue="q", receipts=receipts[:1]) == {"acked": 1, "stale": []}
        hashes.add(h.sm.state_hash())
    assert len(hashes) == 1
    for h in nodes:
        h.close()


def test_the_first_key_stays(tmp_path: Path) -> None:
    (h,) = replicas(tmp_path, [None])
    assert h.ok("receipt_key", key=KEY) == {"set": True}
    assert h.ok("receipt_key", key=bytes(32)) == {"set": False}
    h.create("q")
    h.send("q", b"x")
    receipt = h.receive("q")[0]["receipt"]
    h.reopen()  # read from LMDB, not remembered
    assert h.ok("ack", queue="q", receipts=[receipt])["acked"] == 1
    h.close()


@pytest.mark.parametrize("key", [b"short", "a string", None, bytes(33)])
def test_a_malformed_key_is_refused_and_changes_nothing(tmp_path: Path, key: Any) -> None:
    (h,) = replicas(tmp_path, [None])
    before = h.sm.state_hash()
    result = h.run("receipt_key", key=key)
    assert result["error"]["code"] == "bad_request"
    assert h.sm.state_hash() == before and not h.sm.has_receipt_key()
    h.close()


def test_before_the_key_the_secret_derived_key_tags_receipts(tmp_path: Path) -> None:
    """A cluster older than the key entry: its receipts keep working until the key lands."""
    a, b = replicas(tmp_path, [b"same-secret-0123456789", b"same-secret-0123456789"])
    for h in (a, b):
        h.create("q")
        h.send("q", b"x")
    ra, rb = a.receive("q")[0]["receipt"], b.receive("q")[0]["receipt"]
    assert ra == rb
    assert a.ok("ack", queue="q", receipts=[ra])["acked"] == 1
    a.close()
    b.close()


class _Raft:
    def __init__(self, leader: bool = True) -> None:
        self.proposed: list[bytes] = []
        self.leader = leader

    def propose_nowait(self, data: bytes) -> asyncio.Future[Any]:
        if not self.leader:
            raise RuntimeError("not leader")
        self.proposed.append(data)
        return asyncio.get_running_loop().create_future()


async def test_a_new_leader_proposes_a_key_only_when_the_state_has_none(tmp_path: Path) -> None:
    (h,) = replicas(tmp_path, [None])
    raft = _Raft()
    propose_receipt_key(raft, h.sm, lambda: 1)
    assert len(raft.proposed) == 1
    h.index += 1
    assert h.sm.apply([Entry(h.index, 1, data=raft.proposed[0])]) == [{"set": True}]
    propose_receipt_key(raft, h.sm, lambda: 2)
    assert len(raft.proposed) == 1  # the state has one: nothing more
    h.close()


def test_a_proposal_that_cannot_be_made_is_left_to_the_next_leader(tmp_path: Path) -> None:
    (h,) = replicas(tmp_path, [None])
    propose_receipt_key(_Raft(leader=False), h.sm, lambda: 3)  # never raises
    assert not h.sm.has_receipt_key()
    h.close()
