"""Exchange access rules on a cluster with auth: admin on the exchange to declare and
bind (plus write on the bound queue), write on the exchange to publish (and nothing more,
whichever queues it routes to), read to show; refusals change nothing."""

from __future__ import annotations

import pytest

from cluster import Client, Forbidden, LocalCluster
from tests.node.test_auth_process import _state, admin, leader_api, secured  # noqa: F401

pytestmark = pytest.mark.integration


async def test_exchange_permissions(secured: LocalCluster, admin: Client) -> None:  # noqa: F811
    admin.queue("exq-private").create()
    admin.queue("exq-open").create()
    ev = admin.exchange("exa-ev")
    ev.declare(type="fanout")
    ev.bind("exq-private")
    _u, publisher = admin.add_user("ex-pub", {"write": ["exa-ev"]})
    _u, operator = admin.add_user("ex-ops", {"admin": ["exa-*"], "write": ["exq-open"]})
    _u, reader = admin.add_user("ex-read", {"read": ["exa-ev"]})

    with Client(secured.servers, token=publisher) as pub:
        # write on the exchange is enough, though it routes to a queue pub cannot write
        assert pub.exchange("exa-ev").publish("hello").routed_to == ["exq-private"]
        with pytest.raises(Forbidden):
            pub.queue("exq-private").send("direct")
        before = await _state(secured)
        for call in (
            lambda: pub.exchange("exa-ev").bind("exq-open"),
            lambda: pub.exchange("exa-ev").declare(type="fanout"),
            lambda: pub.exchange("exa-ev").info(),
            lambda: pub.exchange("exa-other").publish("x"),
        ):
            with pytest.raises(Forbidden):
                call()
        assert await _state(secured) == before

    with Client(secured.servers, token=operator) as ops:
        ex = ops.exchange("exa-new")
        assert ex.declare(type="direct")["type"] == "direct"
        before = await _state(secured)
        with pytest.raises(Forbidden):  # binding would let ops write into exq-private
            ex.bind("exq-private", routing_key="k")
        with pytest.raises(Forbidden):
            ops.exchange("exa-new").declare(type="direct", alternate_queue="exq-private")
        assert await _state(secured) == before
        assert ex.bind("exq-open", routing_key="k")["created"] is True
        assert [e["name"] for e in ops.exchanges()] == ["exa-ev", "exa-new"]

    with Client(secured.servers, token=reader) as rd:
        assert rd.exchange("exa-ev").info()["bindings"] == [{"queue": "exq-private"}]
        assert [e["name"] for e in rd.exchanges()] == ["exa-ev"]
        with pytest.raises(Forbidden):
            rd.exchange("exa-ev").publish("x")
