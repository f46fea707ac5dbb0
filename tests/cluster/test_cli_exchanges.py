"""`raftq exchange ...` against a real 3-node cluster: every action, text and JSON, and
usage errors (exit 2)."""

from __future__ import annotations

import json

import pytest

from cluster.cli import EXIT_OK, EXIT_USAGE
from cluster.launcher import LocalCluster
from tests.cluster.test_cli import run

pytestmark = pytest.mark.integration


def test_exchange_commands(cluster3: LocalCluster) -> None:
    args = ["--servers", cluster3.servers, "--timeout", "15"]
    for q in ("cx-pay", "cx-lost", "cx-pdf"):
        assert run(*args, "queue", "create", q)[0] == EXIT_OK
    code, out, _ = run(*args, "queue", "create", "cx-tmp", "--expires", "600", "--json")
    assert code == EXIT_OK and json.loads(out)["expires_s"] == 600

    code, out, err = run(
        *args, "exchange", "create", "cx-orders", "--type", "topic",
        "--alternate-queue", "cx-lost", "--json",
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert json.loads(out)["alternate_queue"] == "cx-lost"
    code, out, err = run(
        *args, "exchange", "bind", "cx-orders", "cx-pay", "--pattern", "order.*", "--json"
    )
    assert code == EXIT_OK and json.loads(out)["binding"] == {
        "queue": "cx-pay",
        "pattern": "order.*",
    }
    code, out, _ = run(
        *args, "exchange", "publish", "cx-orders", '{"id": 1}', "x", "--routing-key", "order.new"
    )
    assert code == EXIT_OK and out.splitlines() == ["routed to cx-pay", "routed to cx-pay"]
    code, out, _ = run(
        *args, "exchange", "publish", "cx-orders", "y", "--routing-key", "user.new", "--json"
    )
    [published] = json.loads(out)["messages"]
    assert published["routed_to"] == ["cx-lost"] and published["unroutable"] is True
    code, out, _ = run(*args, "exchange", "show", "cx-orders", "--json")
    shown = json.loads(out)
    assert shown["published_total"] == 3 and shown["bindings"] == [
        {"queue": "cx-pay", "pattern": "order.*"}
    ]
    code, out, _ = run(*args, "exchange", "show", "cx-orders")
    assert code == EXIT_OK and "routed_total" in out

    run(*args, "exchange", "create", "cx-docs", "--type", "headers")
    code, out, err = run(
        *args, "exchange", "bind", "cx-docs", "cx-pdf", "--header", "format=pdf",
        "--header", "lang=en", "--match", "any",
    )  # fmt: skip
    assert code == EXIT_OK, err
    code, out, _ = run(*args, "exchange", "publish", "cx-docs", "d", "--header", "lang=en")
    assert out.strip() == "routed to cx-pdf"

    code, out, _ = run(*args, "exchange", "list")
    assert code == EXIT_OK and "cx-orders  topic  bindings=1" in out
    code, out, _ = run(*args, "exchange", "list", "--json")
    assert {"cx-docs", "cx-orders"} <= {e["name"] for e in json.loads(out)["exchanges"]}
    code, out, _ = run(*args, "exchange", "unbind", "cx-orders", "cx-pay", "--pattern", "order.*")
    assert code == EXIT_OK and "deleted" in out
    code, _, err = run(*args, "exchange", "unbind", "cx-orders", "cx-pay", "--pattern", "order.*")
    assert code != EXIT_OK and "no such binding" in err
    code, out, _ = run(*args, "exchange", "delete", "cx-orders", "--json")
    assert code == EXIT_OK and json.loads(out) == {"deleted": "cx-orders", "bindings": 0}


@pytest.mark.parametrize(
    "argv",
    [
        ["exchange", "create", "x"],  # no --type
        ["exchange", "show"],
        ["exchange", "bind", "x"],
        ["exchange", "publish", "x"],
        ["exchange", "publish", "x", "a", "b", "--dedup-id", "d"],
        ["exchange", "bind", "x", "q", "--header", "novalue"],
        ["exchange", "list", "x"],
        ["exchange", "show", "x", "extra"],
    ],
)
def test_exchange_usage_errors_exit_2(argv: list[str]) -> None:
    code, _out, err = run("--servers", "http://127.0.0.1:9", "--timeout", "1", *argv)
    assert code == EXIT_USAGE, err
