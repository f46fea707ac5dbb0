"""Any node serves any client: a follower forwards what needs the leader, and relays its answer.

Why: RabbitMQ, NATS and etcd let a client talk to any member. A 307 is correct HTTP, but
curl without `-L`, most HTTP libraries for non-GET verbs, and load balancers in front of
the cluster do not follow it. So a request that only the leader can serve (a write, a
linearizable read) is sent on, over a kept-alive connection, to the node this one knows
as leader, and the leader's answer (status, body, the headers that matter) goes back
unchanged: same errors, same at-most-once / at-least-once meaning.

Rules that keep the meaning:
- Forwarding happens only when this node refused the request with `not_leader` or
  `no_leader`. Both are raised before anything is proposed here, so nothing this node did
  can duplicate what the leader does.
- A forwarded request carries `X-Raftq-Forwarded-By`; its target never forwards it again
  (no loops, no chains). If the target is no longer the leader it answers 307/503, and
  this node tries again with whoever leads now, until `forward_wait_s` has passed.
- A connection that could not be opened sent nothing: safe to try again. A request that
  left but got no answer (a reset, a timeout) has an unknown outcome, and says so; a
  client retries it with the same dedup id, as after a leader change.
- A client that prefers redirects (the raftq client library learns the leader this way)
  asks with `X-Raftq-Redirect: 1` or `?redirect=1` and gets the 307 as before.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgpack
import structlog
from aiohttp import web

from node.http import MSGPACK, ApiError, read_raw

log = structlog.get_logger("node.forwarding")

REDIRECT_HEADER = "X-Raftq-Redirect"
FORWARDED_HEADER = "X-Raftq-Forwarded-By"
LEADER_CODES = frozenset({"not_leader", "no_leader"})
# The leader authenticates a forwarded request again (it trusts no follower's word), so
# the caller's token travels with it.
_REQUEST_HEADERS = ("Content-Type", "Accept", "Authorization")
_RESPONSE_HEADERS = ("Content-Type", "Retry-After", "Location", "WWW-Authenticate")
RETRY_PAUSE_S = 0.05  # between tries while an election settles

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def wants_redirect(request: web.Request) -> bool:
    """The client asked for a 307 instead of forwarding (header or query flag)."""
    flag = request.headers.get(REDIRECT_HEADER) or request.query.get("redirect") or ""
    return flag.lower() in ("1", "true", "yes")


def is_forwarded(request: web.Request) -> bool:
    return FORWARDED_HEADER in request.headers


class _NotSent(Exception):
    """The connection to the leader could not be opened: nothing left this node."""


class _NotServed(Exception):
    """The forward target answered that it is not the leader (307 or 503 no_leader)."""


class LeaderForwarder:
    """Serves a request this node cannot serve by sending it to the leader.

    `leader_url()` answers the current leader's HTTP URL, None while none is known, or the
    empty string when this node itself leads (then the request runs here again).
    """

    def __init__(
        self,
        node_id: int,
        leader_url: Callable[[], str | None],
        *,
        wait_s: float,
        timeout_s: float,
        max_body_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.node_id = node_id
        # How to reach an https leader (node/tls.py outgoing_context); None: the defaults
        self.ssl_context = ssl_context
        self._leader_url = leader_url
        self.wait_s = wait_s
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None
        self.failed = 0  # forwards that ended in no answer (unknown or no leader)

    def may_forward(self, request: web.Request, err: ApiError) -> bool:
        return (
            err.code in LEADER_CODES and not wants_redirect(request) and not is_forwarded(request)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Kept-alive connections to whichever node leads; idle ones close before the
            # server's own keep-alive timeout, so a reused one is rarely stale.
            connector = aiohttp.TCPConnector(
                limit=256,
                keepalive_timeout=15.0,
                ssl=self.ssl_context if self.ssl_context is not None else True,
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def serve_elsewhere(
        self, request: web.Request, handler: Handler, first: ApiError
    ) -> web.StreamResponse:
        """Find the leader within `wait_s` and relay its answer, or run here if we now lead.

        Raises the last `not_leader`/`no_leader` error (as 503 no_leader) when no leader
        could serve the request in time.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        last: ApiError = first
        while True:
            target = self._leader_url()
            try:
                if target == "":
                    return await handler(request)
                if target is not None:
                    return await self._forward(request, target)
            except ApiError as err:
                if err.code not in LEADER_CODES:
                    raise
                last = err
            except (_NotSent, _NotServed):
                pass
            if loop.time() >= deadline:
                self.failed += 1
                raise _no_leader(last, self.wait_s)
            await asyncio.sleep(min(RETRY_PAUSE_S, max(0.0, deadline - loop.time())))

    async def _forward(self, request: web.Request, leader_url: str) -> web.Response:
        body = await read_raw(request, self.max_body_bytes)
        headers = {h: request.headers[h] for h in _REQUEST_HEADERS if h in request.headers}
        headers[FORWARDED_HEADER] = str(self.node_id)
        url = leader_url + request.path_qs
        try:
            async with self._get_session().request(
                request.method,
                url,
                data=body or None,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, connect=1.0),
            ) as resp:
                answer = await resp.read()
                status = resp.status
                out_headers = {h: resp.headers[h] for h in _RESPONSE_HEADERS if h in resp.headers}
        except aiohttp.ClientConnectorError as exc:
            log.info("forward.connect_failed", leader=leader_url, error=str(exc))
            raise _NotSent from None
        except TimeoutError:
            self.failed += 1
            raise ApiError(
                504,
                "timeout",
                "the leader did not answer the forwarded request in time; its outcome is "
                "unknown: retry with the same dedup_id",
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            self.failed += 1
            log.info("forward.failed", leader=leader_url, error=repr(exc))
            raise ApiError(
                503,
                "leader_unreachable",
                "the connection to the leader broke during the forwarded request; its outcome "
                "is unknown: retry with the same dedup_id",
                {"Retry-After": "1"},
            ) from None
        if status == 307 or (status == 503 and _error_code(answer, out_headers) == "no_leader"):
            raise _NotServed  # it stopped leading; ask again who does
        return web.Response(status=status, body=answer, headers=out_headers)


def _error_code(answer: bytes, headers: dict[str, str]) -> str | None:
    """The `error.code` of an answer body, JSON or msgpack; None if it has none."""
    try:
        if headers.get("Content-Type", "").startswith(MSGPACK):
            value: Any = msgpack.unpackb(answer, raw=False)
        else:
            value = json.loads(answer)
    except Exception:
        return None
    err = value.get("error") if isinstance(value, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


def _no_leader(last: ApiError, waited_s: float) -> ApiError:
    return ApiError(
        503,
        "no_leader",
        f"no leader could serve this request within {waited_s:g} s (election in progress?); "
        f"nothing was proposed: retry later ({last.message})",
        {"Retry-After": "1"},
    )
