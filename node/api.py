"""The aiohttp application: API.md's routes on top of the QueueService.

Handlers only parse, validate and shape; every write goes through `QueueService.propose`, every
linearizable read through `QueueService.linearizable`, and every error through `ApiError` and the
middleware, so statuses and error bodies are the same everywhere.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web

from node import exchanges_api, groups_api, topics_api, users_api
from node.app_context import (
    AUTH_KEY,
    NODE_KEY,
    PRINCIPAL_KEY,
    SERVICE_KEY,
    NodeAdmin,
    parse_producer,
    principal_of,
    request_body,
)
from node.auth import (
    ADMIN,
    CLUSTER,
    IN_HANDLER,
    OPEN,
    READ,
    USER,
    WRITE,
    Authenticator,
)
from node.forwarding import LeaderForwarder
from node.http import (
    ApiError,
    bad_request,
    error_response,
    get_int,
    get_list,
    get_number,
    not_found,
    reject_unknown,
    render_bytes,
    respond,
    too_large,
)
from node.membership import add_member, conf_view, promote_member, remove_member
from node.queue_service import QueueService
from node.tls import outgoing_context
from node.validation import (
    check_queue_name,
    parse_messages,
    parse_queue_config,
    parse_receipts,
    parse_receive,
)
from raft.errors import RaftError

log = structlog.get_logger("node.api")

FORWARDER_KEY = web.AppKey("forwarder", LeaderForwarder)


async def serve_request(request: web.Request, handler: Any, route: str) -> web.StreamResponse:
    """Run `handler` with the API's error mapping and request metrics: every codec's one way
    in (the HTTP middleware below and the binary port, node/binary_api.py), so both answer
    the same statuses and error bodies and count in the same metrics."""
    service: QueueService = request.app[SERVICE_KEY]
    started = time.perf_counter()
    status = 500
    try:
        auth = request.app[AUTH_KEY]
        if auth.enabled:
            await _authorize(request, auth, ROUTE_ACCESS.get((request.method, route), USER))
        response = await handler(request)
        status = response.status
        return response
    except ApiError as err:
        status = err.status
        if err.status == 307:
            url = f"{err.extra['leader_url']}{request.path_qs}"
            err.headers["Location"] = url
        return error_response(request, err)
    except web.HTTPException as exc:
        status = exc.status
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "bad_request"
        )
        return error_response(request, ApiError(exc.status, code, exc.reason))
    except Exception:
        log.exception("api.internal_error", path=request.path)
        return error_response(request, ApiError(500, "internal", "internal error; see node logs"))
    finally:
        service.metrics.observe_request(
            request.method, route, status, time.perf_counter() - started
        )


async def _authorize(request: web.Request, auth: Authenticator, access: str) -> None:
    """401 without a valid token, 403 without the route's permission: before the handler
    reads the body, and so before anything is proposed or forwarded."""
    if access == OPEN:
        return
    principal = request.get(PRINCIPAL_KEY)
    if principal is None:
        principal = await auth.principal(request.headers.get("Authorization"))
        request[PRINCIPAL_KEY] = principal
    if access in (READ, WRITE, ADMIN):
        principal.require(access, request.match_info.get("name", CLUSTER))


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
    )
    return await serve_request(request, handler, route)


@web.middleware
async def forwarding_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """A request this node cannot serve (not the leader) is served by the leader through it."""
    try:
        return await handler(request)
    except ApiError as err:
        forwarder = request.app[FORWARDER_KEY]
        if not forwarder.may_forward(request, err):
            raise
        return await forwarder.serve_elsewhere(request, handler, err)


def _queue_name(request: web.Request) -> str:
    return check_queue_name(request.match_info["name"])


def _stale_ok(request: web.Request) -> bool:
    return request.query.get("consistency", "linearizable") == "stale"


async def _read_consistent(request: web.Request) -> QueueService:
    service: QueueService = request.app[SERVICE_KEY]
    if not _stale_ok(request):
        await service.linearizable()
    return service


# ---------------------------------------------------------------- cluster


async def health(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    return respond(request, {"status": "ok", "node_id": service.config.node_id})


async def ready(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    st = service.raft.status()
    leader = st.leader_id
    caught_up = st.applied >= st.commit
    ok = bool(leader) and caught_up
    return respond(
        request,
        {"ready": ok, "node_id": service.config.node_id, "leader_id": leader or None},
        status=200 if ok else 503,
    )


def cluster_view(service: QueueService, incarnation: str | None = None) -> dict[str, Any]:
    """This node's view of the cluster; `incarnation` is this node's (its data dir's).

    A peer's incarnation is null: this node does not know it.
    """
    st = service.raft.status()
    cfg = service.config
    leader_id = st.leader_id
    progress = st.progress
    nodes = []
    voters = set(st.voters)
    learners = set(st.learners)
    members = service.raft.members
    snapshot_index = st.first_index - 1
    ids = sorted(voters | learners) or sorted(cfg.peers)  # --peers until Raft has started
    for pid in ids:
        match, _next, replication = progress.get(pid, (None, None, None))
        role = (
            st.role.label if pid == cfg.node_id else ("leader" if pid == leader_id else "follower")
        )
        me = pid == cfg.node_id
        member = members.get(pid)
        peer = cfg.peers.get(pid)
        raft_addr = member.raft_addr if member is not None and member.raft_addr else None
        if raft_addr is None and peer is not None:
            raft_addr = f"{peer.raft_host}:{peer.raft_port}"
        nodes.append(
            {
                "id": pid,
                "url": service.member_url(pid),
                "raft_addr": raft_addr,
                "role": role,
                "match_index": match if match is not None else (st.last_index if me else None),
                "voter": pid in voters or not voters,
                "learner": pid in learners,
                # What this node knows: its own log; of the others, only a leader's view.
                "first_index": st.first_index if me else None,
                "last_index": st.last_index if me else None,
                "snapshot_index": snapshot_index if me else None,
                "commit": st.commit if me else None,
                "applied": st.applied if me else None,
                "replication": replication,  # probe / replicate / snapshot, on the leader
                "incarnation": incarnation if pid == cfg.node_id else None,
                # the binary port: known of this node only (members record HTTP URLs)
                "binary_url": cfg.binary_url if me else None,
            }
        )
    leader_url = service.member_url(leader_id) if leader_id else None
    return {
        "cluster_id": cfg.cluster_id,
        "node_id": cfg.node_id,
        "binary_url": cfg.binary_url,
        "incarnation": incarnation,
        "leader": {"id": leader_id, "url": leader_url} if leader_url else None,
        "term": st.term,
        "role": st.role.label,
        "commit_index": st.commit,
        "applied_index": st.applied,
        "last_index": st.last_index,
        "first_index": st.first_index,
        "snapshot_index": snapshot_index,
        "snapshots": service.raft.diagnostics().get("snapshots"),
        "nodes": nodes,
        # this node's own disk figures (each node has its own disk): see node/quota.py
        "disk": service.quota.view() if service.quota is not None else None,
    }


async def cluster(request: web.Request) -> web.Response:
    incarnation = request.app[NODE_KEY].incarnation
    return respond(request, cluster_view(request.app[SERVICE_KEY], incarnation))


async def transfer_leader(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    body = await request_body(request)
    reject_unknown(body, {"to"}, "body")
    to = get_int(body, "to", None, 1, 1 << 31)
    voters = set(service.raft.status().voters or service.config.peers)
    if to is not None and to not in voters:
        raise bad_request("body.to must name a voting member's node id", field="to")
    service.require_leader()
    if to is None:  # no target named: the most caught-up other voter
        to = service.raft.best_successor()
        if to is None:
            raise ApiError(409, "conflict", "no other voter to hand leadership to")
    if to == service.config.node_id:
        return respond(request, {"leader_id": to, "transferred": False})
    await service.raft.transfer_leader(to)
    return respond(request, {"leader_id": service.raft.leader_id, "transferred": True})


async def list_members(request: web.Request) -> web.Response:
    """GET /v1/cluster/members: the configuration in force on this node."""
    service: QueueService = request.app[SERVICE_KEY]
    return respond(request, conf_view(service.raft.conf))


async def metrics(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    text = service.metrics.render(service.figures())
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


# ---------------------------------------------------------------- queues


async def put_queue(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    name = _queue_name(request)
    config = parse_queue_config(await request_body(request))
    result = await service.propose("queue_put", name=name, config=config)
    return respond(request, result["queue"], status=201 if result.get("created") else 200)


async def list_queues(request: web.Request) -> web.Response:
    """The queues the caller holds any permission on (every queue when auth is off)."""
    service = await _read_consistent(request)
    principal = principal_of(request)
    queues = [q for q in service.sm.list_queues(service.stamp_ms()) if principal.sees(q["name"])]
    return respond(request, {"queues": queues})


async def show_queue(request: web.Request) -> web.Response:
    name = _queue_name(request)
    service = await _read_consistent(request)
    info = service.sm.queue_info(name, service.stamp_ms())
    if info is None:
        raise not_found(f"queue {name!r} does not exist")
    return respond(request, info)


async def delete_queue(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    name = _queue_name(request)
    result = await service.propose("queue_delete", name=name)
    return respond(request, result or {"deleted": name})


async def purge_queue(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    return respond(request, await service.propose("queue_purge", name=_queue_name(request)))


def _queue_limits(service: QueueService, name: str) -> tuple[int, bool]:
    info = service.sm.queue_config(name)
    if info is None:
        raise not_found(f"queue {name!r} does not exist")
    max_bytes = min(
        int(info.get("max_message_bytes", 262144)), service.config.limits.max_message_bytes
    )
    return max_bytes, bool(info.get("fifo"))


async def send_messages(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    name = _queue_name(request)
    ack = request.query.get("ack", "all")
    if ack not in ("all", "none"):
        raise bad_request("ack must be 'all' or 'none'")
    service.require_leader()
    body = await request_body(request)
    reject_unknown(body, {"messages", "producer"}, "body")
    max_bytes, fifo = _queue_limits(service, name)
    messages = parse_messages(body, service.config.limits, max_bytes, fifo)
    fields: dict[str, Any] = {"queue": name, "messages": messages}
    producer = parse_producer(request, body)
    if producer is not None:
        fields["producer"] = producer
    if ack == "none":
        service.propose_detached("send", **fields)
        service.metrics.count_sent(name, len(messages))
        return respond(request, {"accepted": len(messages)}, status=202)
    result = await service.propose("send", **fields)
    service.metrics.count_sent(name, len(messages))
    return respond(request, result)


async def receive_messages(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    name = _queue_name(request)
    service.require_leader()
    params = parse_receive(await request_body(request), service.config.limits)
    wait_s = params.pop("wait_s")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        event = service.queue_event(name)  # taken before looking: no lost wakeup
        if (
            wait_s > 0
            and not service.send_in_flight(name)
            and service.sm.nothing_to_receive(name, service.stamp_ms())
        ):
            messages = []  # no Raft round for an empty receive: wait for a send at once
        else:
            result = await service.propose("receive", queue=name, **params)
            messages = result.get("messages", [])
        remaining = deadline - loop.time()
        if messages or remaining <= 0 or service.closing:
            break
        # Nothing yet: the next send to the queue carries this receive in its own entry.
        delivered = await service.receive_with_next_send(name, params, event, remaining)
        if delivered is not None and delivered.get("messages"):
            messages = delivered["messages"]
            break
        service.require_leader()
    service.metrics.count_received(name, len(messages))
    return respond(request, {"messages": render_bytes(request, messages, "body")})


async def _receipt_op(request: web.Request, op: str, extra: dict[str, Any]) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    name = _queue_name(request)
    body = await request_body(request)
    reject_unknown(body, {"receipts", *extra}, "body")
    fields: dict[str, Any] = {
        "queue": name,
        "receipts": parse_receipts(body, service.config.limits),
    }
    for key, (default, lo, hi) in extra.items():
        value = get_number(body, key, default, lo, hi)
        if value is not None:  # absent: the state machine applies the queue's own setting
            fields[key] = value
    result = await service.propose(op, **fields)
    if op == "ack":
        service.metrics.count_acked(name, int(result.get("acked", 0)))
    return respond(request, result)


async def ack_messages(request: web.Request) -> web.Response:
    return await _receipt_op(request, "ack", {})


async def nack_messages(request: web.Request) -> web.Response:
    return await _receipt_op(request, "nack", {"delay_s": (0, 0, 43_200)})


async def extend_messages(request: web.Request) -> web.Response:
    """Without visibility_timeout_s, the command carries none and every replica extends by
    the queue's own visibility timeout (as a receive does), not by a fixed 30 s."""
    return await _receipt_op(request, "extend", {"visibility_timeout_s": (None, 0, 43_200)})


async def redrive(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    return respond(request, await service.propose("redrive", queue=_queue_name(request)))


# ---------------------------------------------------------------- exactly-once


def _txn_acks(body: dict[str, Any]) -> list[dict[str, str]]:
    acks = get_list(body, "ack", required=False)
    out = []
    for i, item in enumerate(acks):
        where = f"ack[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object {{queue, receipt}}")
        reject_unknown(item, {"queue", "receipt"}, where)
        receipt = item.get("receipt")
        if not isinstance(receipt, str) or not 0 < len(receipt) <= 512:
            raise bad_request(f"{where}.receipt must be a non-empty string")
        out.append({"queue": check_queue_name(str(item.get("queue", ""))), "receipt": receipt})
    return out


def _txn_sends(service: QueueService, body: dict[str, Any]) -> list[dict[str, Any]]:
    sends = get_list(body, "send", required=False)
    out = []
    for i, item in enumerate(sends):
        where = f"send[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object {{queue, messages}}")
        reject_unknown(item, {"queue", "messages"}, where)
        name = check_queue_name(str(item.get("queue", "")))
        max_bytes, fifo = _queue_limits(service, name)
        out.append(
            {
                "queue": name,
                "messages": parse_messages(item, service.config.limits, max_bytes, fifo),
            }
        )
    return out


async def transaction(request: web.Request) -> web.Response:
    """Acks and sends applied all or nothing, once per txn_id (consume-transform-produce)."""
    service: QueueService = request.app[SERVICE_KEY]
    service.require_leader()
    body = await request_body(request)
    reject_unknown(body, {"txn_id", "ack", "send", "publish", "commit_offsets"}, "body")
    txn_id = body.get("txn_id")
    if not isinstance(txn_id, str) or not 0 < len(txn_id) <= 256:
        raise bad_request("txn_id must be a string of 1 to 256 characters", field="txn_id")
    acks, sends = _txn_acks(body), _txn_sends(service, body)
    publishes = topics_api.txn_publishes(service, body)
    offsets = topics_api.txn_offsets(body)
    if not acks and not sends and not publishes and not offsets:
        raise bad_request("a transaction needs at least one ack, send, publish or commit_offsets")
    principal = principal_of(request)
    for ack in acks:
        principal.require("read", ack["queue"])
    for send in sends:
        principal.require("write", send["queue"])
    for publish in publishes:
        principal.require("write", publish["topic"])
    for offset in offsets:
        principal.require("read", offset["topic"])
    items = len(acks) + len(offsets) + sum(len(s["messages"]) for s in sends)
    items += sum(len(p["records"]) for p in publishes)
    if items > service.config.limits.max_batch:
        raise too_large(f"a transaction may hold at most {service.config.limits.max_batch} items")
    fields: dict[str, Any] = {"ack": acks, "send": sends, "commit_offsets": offsets}
    if publishes:
        fields["publish"] = publishes
    result = await service.propose("txn", txn_id=principal.scoped(txn_id), **fields)
    topics_api.wake_fetches(service, result)
    if isinstance(result.get("txn_id"), str):
        result = {**result, "txn_id": principal.unscoped(result["txn_id"])}
    return respond(request, result)


async def producer_init(request: web.Request) -> web.Response:
    """Hand out a producer id, or bump the epoch of a given one (fencing older instances)."""
    service: QueueService = request.app[SERVICE_KEY]
    body = await request_body(request)
    reject_unknown(body, {"producer_id"}, "body")
    producer_id = body.get("producer_id")
    if producer_id is not None and (
        not isinstance(producer_id, str) or not 0 < len(producer_id) <= 128
    ):
        raise bad_request("producer_id must be a string of 1 to 128 characters")
    principal = principal_of(request)
    if not principal.may_any("write"):
        principal.require("write", CLUSTER)  # 403: a producer needs somewhere to write
    if producer_id:
        fields = {"producer_id": principal.scoped(producer_id)}
    else:  # ids handed out are namespaced too: another user cannot re-init (fence) them
        fields = {"scope": principal.scoped("")} if principal.name is not None else {}
    result = await service.propose("producer_init", **fields)
    return respond(request, {**result, "producer_id": principal.unscoped(result["producer_id"])})


# ---------------------------------------------------------------- admin (chaos checker)


async def admin_log(request: web.Request) -> web.Response:
    """(index, term, crc32) of committed entries: P7/P8 of the chaos checker compare these."""
    node = request.app[NODE_KEY]
    service = request.app[SERVICE_KEY]
    try:
        lo = int(request.query.get("from", "1"))
        hi = int(request.query.get("to", "0")) or None
        limit = min(int(request.query.get("max", "10000")), 100_000)
    except ValueError:
        raise bad_request("from, to and max must be integers") from None
    entries = node.committed_log(lo, hi, limit)
    return respond(request, {"entries": entries, "commit_index": service.raft.status().commit})


async def admin_snapshot(request: web.Request) -> web.Response:
    """Write a snapshot of this node's state now and compact its log up to it."""
    service = request.app[SERVICE_KEY]
    try:
        result = await service.raft.snapshot_now()
    except RaftError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return respond(request, result)


async def admin_state(request: web.Request) -> web.Response:
    """The applied index and a hash of the whole state, read in one transaction on a
    worker thread: hashing a big database on the event loop would stall heartbeats."""
    service: QueueService = request.app[SERVICE_KEY]
    applied, digest = await asyncio.to_thread(service.sm.applied_state)
    return respond(request, {"applied_index": applied, "state_hash": digest})


# Every route of the API: (method, path, handler, what it needs: node/auth.py). One
# table, so tests can list them and no route lacks an access rule.
ROUTES: tuple[tuple[str, str, Any, str], ...] = (
    ("GET", "/v1/health", health, OPEN),
    ("GET", "/v1/ready", ready, OPEN),
    ("POST", "/v1/auth", users_api.open_session, OPEN),
    ("GET", "/v1/whoami", users_api.whoami, USER),
    ("GET", "/v1/cluster", cluster, USER),
    ("POST", "/v1/cluster/transfer-leader", transfer_leader, ADMIN),
    ("GET", "/v1/cluster/members", list_members, USER),
    ("POST", "/v1/cluster/members", add_member, ADMIN),
    ("DELETE", "/v1/cluster/members/{id}", remove_member, ADMIN),
    ("POST", "/v1/cluster/members/{id}/promote", promote_member, ADMIN),
    ("GET", "/metrics", metrics, USER),
    ("GET", "/v1/queues", list_queues, USER),
    ("PUT", "/v1/queues/{name}", put_queue, ADMIN),
    ("GET", "/v1/queues/{name}", show_queue, READ),
    ("DELETE", "/v1/queues/{name}", delete_queue, ADMIN),
    ("POST", "/v1/queues/{name}/purge", purge_queue, ADMIN),
    ("POST", "/v1/queues/{name}/messages", send_messages, WRITE),
    ("POST", "/v1/queues/{name}/receive", receive_messages, READ),
    ("POST", "/v1/queues/{name}/ack", ack_messages, READ),
    ("POST", "/v1/queues/{name}/nack", nack_messages, READ),
    ("POST", "/v1/queues/{name}/extend", extend_messages, READ),
    ("POST", "/v1/queues/{name}/redrive", redrive, ADMIN),
    ("POST", "/v1/transactions", transaction, IN_HANDLER),
    ("POST", "/v1/producers", producer_init, IN_HANDLER),
    ("GET", "/v1/users", users_api.list_users, ADMIN),
    ("POST", "/v1/users", users_api.add_user, ADMIN),
    ("GET", "/v1/users/{user}", users_api.show_user, ADMIN),
    ("DELETE", "/v1/users/{user}", users_api.delete_user, ADMIN),
    ("PUT", "/v1/users/{user}/permissions", users_api.set_permissions, ADMIN),
    ("POST", "/v1/users/{user}/token", users_api.rotate_token, ADMIN),
    ("GET", "/v1/admin/log", admin_log, ADMIN),
    ("GET", "/v1/admin/state", admin_state, ADMIN),
    ("POST", "/v1/admin/snapshot", admin_snapshot, ADMIN),
    # exchanges (node/exchanges_api.py): access on the exchange's name
    ("GET", "/v1/exchanges", exchanges_api.list_exchanges, USER),
    ("PUT", "/v1/exchanges/{name}", exchanges_api.put_exchange, ADMIN),
    ("GET", "/v1/exchanges/{name}", exchanges_api.show_exchange, READ),
    ("DELETE", "/v1/exchanges/{name}", exchanges_api.delete_exchange, ADMIN),
    ("POST", "/v1/exchanges/{name}/bindings", exchanges_api.bind, ADMIN),
    ("DELETE", "/v1/exchanges/{name}/bindings", exchanges_api.unbind, ADMIN),
    ("POST", "/v1/exchanges/{name}/bindings/delete", exchanges_api.unbind, ADMIN),
    ("POST", "/v1/exchanges/{name}/publish", exchanges_api.publish, WRITE),
    # topics (node/topics_api.py) and consumer groups (node/groups_api.py)
    ("GET", "/v1/topics", topics_api.list_topics, USER),
    ("PUT", "/v1/topics/{name}", topics_api.put_topic, ADMIN),
    ("GET", "/v1/topics/{name}", topics_api.show_topic, READ),
    ("DELETE", "/v1/topics/{name}", topics_api.delete_topic, ADMIN),
    ("POST", "/v1/topics/{name}/records", topics_api.append_records, WRITE),
    ("GET", "/v1/topics/{name}/partitions/{p}/records", topics_api.fetch_records, READ),
    ("POST", "/v1/groups/{group}/join", groups_api.join, IN_HANDLER),
    ("POST", "/v1/groups/{group}/heartbeat", groups_api.heartbeat, IN_HANDLER),
    ("POST", "/v1/groups/{group}/leave", groups_api.leave, IN_HANDLER),
    ("POST", "/v1/groups/{group}/commit", groups_api.commit, IN_HANDLER),
    ("GET", "/v1/groups/{group}", groups_api.show_group, IN_HANDLER),
)
ROUTE_ACCESS: dict[tuple[str, str], str] = {(m, p): a for m, p, _h, a in ROUTES}


def build_app(service: QueueService, node: NodeAdmin) -> web.Application:
    """The node's aiohttp application: every route in ROUTES over `service` and `node`."""
    cfg = service.config
    app = web.Application(
        middlewares=[error_middleware, forwarding_middleware],
        client_max_size=cfg.limits.max_body_bytes,
    )
    app[SERVICE_KEY] = service
    app[NODE_KEY] = node
    app[AUTH_KEY] = Authenticator(service.sm, enabled=cfg.auth)
    forwarder = LeaderForwarder(
        cfg.node_id,
        service.leader_http_url,
        wait_s=cfg.forward_wait_s,
        # a forwarded long-poll may take its whole wait_s before the write's own timeout
        timeout_s=cfg.limits.max_wait_s + cfg.propose_timeout_s + 5.0,
        max_body_bytes=cfg.limits.max_body_bytes,
        ssl_context=outgoing_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca),
    )
    app[FORWARDER_KEY] = forwarder

    async def close_forwarder(_app: web.Application) -> None:
        await forwarder.close()

    app.on_cleanup.append(close_forwarder)
    for method, path, handler, _access in ROUTES:
        app.router.add_route(method, path, handler)
    return app
