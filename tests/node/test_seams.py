"""The contracts node/ states for what it uses of Raft, the state machine and the node
(node/queue_service.py, node/app_context.py) are met by the real classes: no type checker
runs in CI, so this is what catches a contract drifting from the code it describes."""

from __future__ import annotations

import inspect

from node.app_context import NodeAdmin
from node.queue_service import QueueStateReader, RaftNodeApi
from node.server import NodeServer
from raft.driver import RaftNode
from raft.memory_storage import MemoryStorage
from tests.node.harness import Harness


class _NoMachine:
    def applied_index(self) -> int:
        return 0

    def apply(self, entries: object) -> list[object]:
        return []


def _same_parameters(protocol: type, cls: type) -> None:
    """Every method of `protocol` takes the same parameters on `cls` (its properties may be
    plain attributes: the isinstance checks find those on an instance)."""
    for name, ours in vars(protocol).items():
        if name.startswith("_") or isinstance(ours, property):
            continue
        theirs = getattr(cls, name, None)
        if callable(ours):
            assert callable(theirs), name
            assert list(inspect.signature(theirs).parameters) == list(
                inspect.signature(ours).parameters
            ), name


def test_raft_node_meets_raft_node_api() -> None:
    node = RaftNode(1, {1: ("127.0.0.1", 1)}, MemoryStorage(), _NoMachine(), cluster_id="c")
    assert isinstance(node, RaftNodeApi)  # every member present, `conf` included
    _same_parameters(RaftNodeApi, RaftNode)


def test_queue_state_machine_meets_queue_state_reader(tmp_path) -> None:
    h = Harness(str(tmp_path))
    try:
        assert isinstance(h.sm, QueueStateReader)
        _same_parameters(QueueStateReader, type(h.sm))
    finally:
        h.env.close()


def test_node_server_meets_node_admin() -> None:
    """(Building a NodeServer takes a data dir and LMDB: its methods are compared, and
    `incarnation`, an attribute it sets when it opens, is looked for in its source.)"""
    assert list(inspect.signature(NodeServer.committed_log).parameters) == list(
        inspect.signature(NodeAdmin.committed_log).parameters
    )
    assert "self.incarnation = " in inspect.getsource(NodeServer.__init__)
