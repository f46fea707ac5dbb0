"""docs/API.md's examples, replayed against live nodes: each documented answer has the keys
of the real one, so the reference cannot drift from the code unnoticed.

The convention the document follows (its "Examples" paragraph says the same):
- a ```sh block holds one `curl` command against `localhost:7001` (node 1 of `raftq up`);
  every such command runs, in document order, on a fresh 3-node cluster;
- its status is 200 unless the block ends with a comment `# → NNN`;
- a ```json block right after a ```sh block is that command's answer, in full (no `...`);
  its shape must equal the live answer's: the same keys in every object, recursively, and
  for arrays the first elements compared (and both empty or both not). Values are examples.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
STATUS = re.compile(r"#\s*→\s*(\d{3})\s*$")
HOST = "localhost:7001"
#: Receipts carry a tag made with the cluster's key (random per cluster), so the document
#: writes `{id}.{lease}.TAG` and the replay puts in the receipt a live answer gave for it.
DOC_RECEIPT = re.compile(r"\b([0-9a-f]{16}\.\d+)\.TAG\b")
#: (Not `\b` after the tag: a tag may end in `-` or `_`, which \b does not bound, and
#: about one receipt in 30 then went unmatched, failing the example that acks it.)
LIVE_RECEIPT = re.compile(r"\b([0-9a-f]{16}\.\d+)\.[A-Za-z0-9_-]{16}(?![A-Za-z0-9_-])")
#: Routes whose answer is not JSON: documented in prose only.
NOT_JSON = {("GET", "/metrics")}


@dataclass
class Example:
    line: int  # of the ```sh block in docs/API.md
    method: str
    path: str
    data: bytes | None
    follow: bool  # curl -L
    status: int
    headers: dict[str, str]  # curl -H
    answer: Any = None  # the documented answer, when a ```json block follows
    answered: bool = False


def parse_curl(block: str, line: int) -> Example:
    """One documented curl command (the options the document uses, nothing else)."""
    text = block.strip()
    status_match = STATUS.search(text)
    args = [a for a in shlex.split(text.replace("\\\n", " "), comments=True) if a.strip()]
    if not args or args[0] != "curl":
        raise ValueError(f"docs/API.md:{line}: a ```sh block must hold one curl command")
    method, data, url, follow = None, None, None, False
    headers: dict[str, str] = {}
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-X":
            method = next(rest)
        elif arg == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(rest).encode()
        elif arg in ("-s", "-L", "-sL"):
            follow = follow or "L" in arg
        elif arg.startswith("-") or url is not None:
            raise ValueError(f"docs/API.md:{line}: unexpected curl argument {arg!r}")
        else:
            url = arg
    if url is None or not url.removeprefix("http://").startswith(HOST + "/"):
        raise ValueError(f"docs/API.md:{line}: examples talk to {HOST}, not {url!r}")
    return Example(
        line=line,
        method=method or ("POST" if data is not None else "GET"),
        path=url.removeprefix("http://")[len(HOST) :],
        data=data,
        follow=follow,
        status=int(status_match.group(1)) if status_match else 200,
        headers=headers,
    )


def examples(text: str) -> list[Example]:
    """Every curl example of `text`, with its documented answer where one follows it."""
    out: list[Example] = []
    previous_end, previous_kind = -1, ""
    for m in BLOCK.finditer(text):
        kind, body = m.group(1), m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if kind == "sh":
            out.append(parse_curl(body, line))
        elif kind == "json":
            follows = previous_kind == "sh" and not text[previous_end : m.start()].strip()
            if not follows:
                raise ValueError(f"docs/API.md:{line}: a ```json block must answer a ```sh one")
            try:
                out[-1].answer = json.loads(body)
            except ValueError as exc:
                raise ValueError(f"docs/API.md:{line}: answer is not JSON: {exc}") from None
            out[-1].answered = True
        previous_end, previous_kind = m.end(), kind
    return out


def shape(value: Any) -> Any:
    """Keys, recursively; an array's first element; None for every scalar."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def differences(doc: Any, live: Any, path: str = "") -> list[str]:
    """Where the documented shape and the live one part, as readable lines."""
    where = path or "the answer"
    if isinstance(doc, dict) and isinstance(live, dict):
        out = [f"{where}: documented but not answered: {k}" for k in doc.keys() - live.keys()]
        out += [f"{where}: answered but not documented: {k}" for k in live.keys() - doc.keys()]
        for k in doc.keys() & live.keys():
            out += differences(doc[k], live[k], f"{path}.{k}" if path else k)
        return out
    if isinstance(doc, list) and isinstance(live, list):
        if bool(doc) != bool(live):
            return [f"{where}: documented {len(doc)} item(s), answered {len(live)}"]
        return differences(doc[0], live[0], f"{path}[0]") if doc else []
    if shape(doc) != shape(live):
        return [f"{where}: documented {json.dumps(doc)[:60]}, answered {json.dumps(live)[:60]}"]
    return []


def _route_pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)))


def _routes() -> set[tuple[str, str]]:
    from node.api import ROUTES

    return {(method, path) for method, path, _handler, _access in ROUTES}


# ---------------------------------------------------------------- offline checks


def test_the_document_follows_the_convention() -> None:
    """examples() raises on a broken rule: a non-curl ```sh block, an orphan or unparsable
    ```json block, a command against another host."""
    found = examples(DOC.read_text())
    assert len(found) > 20 and sum(e.answered for e in found) > 20


def test_every_route_has_an_answered_example() -> None:
    answered = [e for e in examples(DOC.read_text()) if e.answered]
    missing = []
    for method, template in sorted(_routes()):
        pattern = _route_pattern(template)
        if (method, template) in NOT_JSON:
            continue
        if not any(
            e.method == method and pattern.fullmatch(e.path.partition("?")[0]) for e in answered
        ):
            missing.append(f"{method} {template}")
    assert not missing, f"docs/API.md has no answered example for: {', '.join(missing)}"


@pytest.mark.parametrize(
    ("doc", "live", "problems"),
    [
        ({"a": 1, "b": [{"c": 2}]}, {"b": [{"c": 9}, {}], "a": "x"}, 0),
        ({"deleted": "tasks"}, {"deleted": True, "messages": 0}, 1),
        ({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}, 1),
        ({"a": []}, {"a": [1]}, 1),
        ({"a": {"b": 1}}, {"a": None}, 1),
        ({"a": [[1, 2, 3]]}, {"a": [[4, 5, 6]]}, 0),
    ],
)
def test_shapes_compare_keys_not_values(doc: Any, live: Any, problems: int) -> None:
    assert len(differences(shape(doc), shape(live))) == problems


# ---------------------------------------------------------------- against live nodes


async def _call(session: aiohttp.ClientSession, base: str, ex: Example) -> tuple[int, Any, bytes]:
    """The request as curl sends it (-d means a form content type); 503 no_leader (an
    election after the documented leader transfer: nothing was applied) is retried."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if ex.data else {}
    headers.update(ex.headers)
    for _ in range(50):
        async with session.request(
            ex.method, base + ex.path, data=ex.data, headers=headers, allow_redirects=ex.follow
        ) as resp:
            raw = await resp.read()
        answer = json.loads(raw) if raw else None
        if resp.status == 503 and ex.status != 503:
            await asyncio.sleep(0.2)
            continue
        return resp.status, answer, raw
    return resp.status, answer, raw


@pytest.mark.integration
async def test_every_documented_answer_has_the_keys_of_the_live_one(make_cluster) -> None:
    cluster = make_cluster(3)
    base = cluster.url(1)
    failures: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        receipts: dict[str, str] = {}  # "{id}.{lease}" -> the live receipt with its tag
        for ex in examples(DOC.read_text()):
            if ex.data is not None:  # the document's receipts end in a placeholder tag
                ex.data = DOC_RECEIPT.sub(
                    lambda m: receipts.get(m.group(1), m.group(0)), ex.data.decode()
                ).encode()
            status, answer, raw = await _call(session, base, ex)
            for found in LIVE_RECEIPT.finditer(raw.decode(errors="replace")):
                receipts[found.group(1)] = found.group(0)
            where = f"docs/API.md:{ex.line} {ex.method} {ex.path}"
            if status != ex.status:
                failures.append(f"{where}: status {status}, documented {ex.status}: {raw[:300]!r}")
            elif ex.answered:
                failures += [f"{where}: {d}" for d in differences(shape(ex.answer), shape(answer))]
    assert not failures, "\n".join(failures)
