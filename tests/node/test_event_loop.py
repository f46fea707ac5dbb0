"""Nodes and the blocking client run on uvloop unless RAFTQ_EVENT_LOOP=asyncio says not."""

from __future__ import annotations

import asyncio

import pytest

from common import event_loop


def test_uvloop_is_the_default_and_the_variable_selects_asyncio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(event_loop.ENV_VAR, raising=False)
    assert event_loop.loop_kind() == "uvloop"
    loop = event_loop.new_event_loop()
    assert type(loop).__module__.startswith("uvloop")
    loop.close()
    assert event_loop.run(_loop_module()) == "uvloop"
    monkeypatch.setenv(event_loop.ENV_VAR, "asyncio")
    assert event_loop.loop_kind() == "asyncio"
    assert event_loop.run(_loop_module()) == "asyncio"


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_a_node_says_which_loop_it_runs(cluster3) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("uvloop")
    kinds = set()
    for node_id in cluster3.ids:
        for line in cluster3.specs[node_id].log_path.read_text().splitlines():
            if '"node.started"' in line or "node.started" in line:
                kinds.add("uvloop" if "uvloop" in line else "asyncio")
    assert kinds == {"uvloop"}
