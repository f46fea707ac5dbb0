"""Membership over HTTP: add, remove and promote members; join a running cluster.

Why through the API: an operator (or a new node starting with `--join URL`) may talk to any
node; the request reaches the leader (followers forward), which proposes ONE single-server
change through the log (raft core: one at a time, voters changing by one) and answers once
it is committed. A node is added as a learner (it catches up, by snapshot if needed, and
never counts toward a quorum before that) and the leader promotes it once it is within
`promote_lag` entries of the log, unless it was added with `"voter": false`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from node.app_context import SERVICE_KEY, request_body
from node.http import (
    ApiError,
    bad_request,
    get_bool,
    get_int,
    get_str,
    not_found,
    reject_unknown,
    respond,
)
from raft.errors import ConfChangeRefused, NotLeader, RaftError
from raft.messages import ConfState, Member

log = structlog.get_logger("node.membership")

#: A membership change: the configuration in force -> the one to propose (run by the driver).
ConfChange = Callable[[ConfState], ConfState]

MEMBER_FIELDS = frozenset({"id", "url", "raft_addr", "voter", "incarnation"})


class JoinRefused(RuntimeError):
    """The cluster answered the join request with a definite refusal."""


def conf_view(conf: ConfState) -> dict[str, Any]:
    """The configuration as the membership endpoints answer it."""
    known = {m.id: m for m in conf.members}
    members = []
    for node_id in conf.ids():
        m = known.get(node_id, Member(node_id))
        members.append(
            {
                "id": node_id,
                "url": m.url or None,
                "raft_addr": m.raft_addr or None,
                "voter": node_id in conf.voters,
                "learner": node_id in conf.learners,
                "incarnation": m.incarnation or None,
            }
        )
    return {"voters": list(conf.voters), "learners": list(conf.learners), "members": members}


def _with(
    conf: ConfState, member: Member, voters: tuple[int, ...], learners: tuple[int, ...]
) -> ConfState:
    others = tuple(m for m in conf.members if m.id != member.id)
    return ConfState(voters, learners, (*others, member))


async def _change(request: web.Request, change: ConfChange) -> web.Response:
    service = request.app[SERVICE_KEY]
    service.require_leader()
    try:
        conf = await service.raft.change_membership(
            change, timeout_s=service.config.propose_timeout_s
        )
    except NotLeader as exc:
        raise service.leader_hint(exc.leader_id) from None
    except ConfChangeRefused as exc:
        raise ApiError(409, "conflict", f"membership change refused: {exc}") from None
    except ValueError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except LookupError as exc:
        raise not_found(str(exc)) from None
    except TimeoutError:
        raise ApiError(504, "timeout", "the membership change did not commit in time") from None
    except RaftError as exc:  # leadership lost or the node stopping: outcome unknown
        raise ApiError(
            503,
            "leader_changed",
            f"the membership change's outcome is unknown ({exc}); read GET /v1/cluster/members",
            {"Retry-After": "1"},
        ) from None
    return respond(request, conf_view(conf))


async def add_member(request: web.Request) -> web.Response:
    """POST /v1/cluster/members: add a learner (promoted once caught up unless voter=false)."""
    body = await request_body(request)
    reject_unknown(body, MEMBER_FIELDS, "body")
    node_id = get_int(body, "id", None, 1, (1 << 31) - 1)
    if node_id is None:
        raise bad_request("body.id is required", field="id")
    url = get_str(body, "url", None, 512)
    raft_addr = get_str(body, "raft_addr", None, 512)
    if not url or not url.startswith(("http://", "https://")):
        raise bad_request("body.url must be the node's http(s) URL", field="url")
    host, _, port = (raft_addr or "").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad_request("body.raft_addr must be HOST:PORT", field="raft_addr")
    voter = get_bool(body, "voter", True)
    incarnation = get_str(body, "incarnation", None, 64) or ""
    new = Member(node_id, url.rstrip("/"), raft_addr or "", incarnation, promote=voter)

    def change(conf: ConfState) -> ConfState:
        current = conf.member(node_id)
        if node_id in conf.ids():
            same = current is not None and (current.url, current.raft_addr) == (
                new.url,
                new.raft_addr,
            )
            if same:
                return conf  # a retried join: nothing to change
            raise ValueError(f"node {node_id} is a member already, at another address")
        return _with(conf, new, conf.voters, tuple(sorted({*conf.learners, node_id})))

    return await _change_unless_same(request, change)


async def _change_unless_same(request: web.Request, change: ConfChange) -> web.Response:
    """Like _change, but a change that changes nothing answers at once (idempotent)."""
    service = request.app[SERVICE_KEY]
    service.require_leader()
    current = service.raft.conf
    try:
        unchanged = change(current) == current
    except ValueError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    if unchanged:
        return respond(request, conf_view(current))
    return await _change(request, change)


def _member_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or not 0 < int(raw) < 1 << 31:
        raise bad_request("the member id must be a positive integer", field="id")
    return int(raw)


async def remove_member(request: web.Request) -> web.Response:
    """DELETE /v1/cluster/members/{id}: the node leaves the configuration (the leader too:
    it commits its removal, hands over and steps down)."""
    node_id = _member_id(request)

    def change(conf: ConfState) -> ConfState:
        if node_id not in conf.ids():
            raise LookupError(f"node {node_id} is not a member")
        return ConfState(
            tuple(v for v in conf.voters if v != node_id),
            tuple(v for v in conf.learners if v != node_id),
            tuple(m for m in conf.members if m.id != node_id),
        )

    return await _change(request, change)


async def promote_member(request: web.Request) -> web.Response:
    """POST /v1/cluster/members/{id}/promote: a learner that has caught up becomes a voter
    now (like etcd, a learner still far behind is refused: as a voter it could not help
    commit, and with another node down the cluster would stop)."""
    node_id = _member_id(request)
    raft = request.app[SERVICE_KEY].raft

    def change(conf: ConfState) -> ConfState:
        if node_id in conf.voters:
            return conf
        if node_id not in conf.learners:
            raise ValueError(f"node {node_id} is not a member")
        if node_id not in raft.caught_up_learners():
            raise ValueError(
                f"node {node_id} has not caught up with the log yet; it is promoted "
                "automatically once it has (unless it was added with voter=false)"
            )
        return ConfState(
            tuple(sorted({*conf.voters, node_id})),
            tuple(v for v in conf.learners if v != node_id),
            conf.members,
        )

    return await _change_unless_same(request, change)


async def join_cluster(
    url: str,
    body: dict[str, Any],
    deadline_s: float,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """POST the join request until a definite answer: the configuration, or JoinRefused.
    `ssl_context`: how to verify (and present a certificate to) an https cluster.
    `token`: a cluster admin's (the node's --admin-token-file) where the cluster has auth."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    delay = 0.2
    last = "no answer"
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=15), connector=connector, headers=headers
    ) as session:
        while loop.time() < deadline:
            try:
                async with session.post(url.rstrip("/") + "/v1/cluster/members", json=body) as r:
                    answer = await r.json(content_type=None)
                    if 200 <= r.status < 300 and isinstance(answer, dict):
                        return answer
                    last = f"{r.status}: {answer}"
                    if r.status < 500:
                        raise JoinRefused(f"the cluster at {url} refused to add this node: {last}")
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                last = repr(exc)
            log.info("node.join_retry", via=url, error=last[:200])
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
    raise JoinRefused(f"no answer from the cluster at {url} within {deadline_s:g}s ({last})")
