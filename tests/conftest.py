"""Fixtures that start real raftq node processes on loopback (and always stop them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog

from cluster.launcher import LocalCluster
from tests.support.api_client import ApiClient


@pytest.fixture(autouse=True)
def _isolated_structlog() -> Iterator[None]:
    """A CLI run in-process configures structlog (with logger caching) for the whole
    pytest process; reset after every test so later tests can capture log events."""
    yield
    structlog.reset_defaults()


def start_cluster(data_dir: Path, nodes: int, extra_args: tuple[str, ...] = ()) -> LocalCluster:
    cluster = LocalCluster.on_free_ports(nodes, data_dir, extra_args)
    try:
        cluster.start()
        cluster.wait_for_leader(timeout_s=30)
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    """Factory: `make_cluster(3)` → a started LocalCluster, stopped at teardown."""
    started: list[LocalCluster] = []

    def factory(nodes: int = 3, extra_args: tuple[str, ...] = ()) -> LocalCluster:
        c = start_cluster(tmp_path / f"cluster-{len(started)}", nodes, extra_args)
        started.append(c)
        return c

    try:
        yield factory
    finally:
        for c in started:
            c.stop_all()


@pytest.fixture(scope="module")
def single_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("single"), 1)
    try:
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("three"), 3)
    try:
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
async def api(single_node: LocalCluster):
    async with ApiClient(single_node.urls[0]) as client:
        yield client


@pytest.fixture
async def cluster3_api(cluster3: LocalCluster):
    leader = cluster3.wait_for_leader(timeout_s=30)
    follower_id = next(i for i in cluster3.ids if i != leader.id)
    async with ApiClient(leader.url) as lead, ApiClient(cluster3.url(follower_id)) as follow:
        yield SimpleNamespace(leader=lead, follower=follow, cluster=cluster3)
