"""Leader discovery and the retry policy: how one client call finds a node that can serve it.

Every call gets ONE deadline. Inside it the router sends the request to the cached leader;
when there is none it asks every server's `GET /v1/cluster` at once and takes the first
answer that names a leader. While an attempt goes unanswered, the router asks the cluster
again after `leader_check_s`, then at doubling intervals: a leader that hangs (SIGSTOP, a
VM stall, a long pause) is replaced by an election in about a second, and once a
majority names another leader the attempt is abandoned and re-sent there, instead of
waiting for `request_timeout_s`. A follower's 307 hint replaces the cached leader at once;
connection errors, timeouts, `503 no_leader` (honouring `Retry-After`) and 5xx answers
forget the leader and back off with capped, jittered delays. Definite answers (4xx) are
raised at once. When the deadline passes, `ClusterUnavailable` names every server and the
last error seen there.

The router re-sends the *same* request body on every attempt: callers put idempotency keys
(`dedup_id`) in the body once, so an ambiguous failure never enqueues twice.

Servers given as `raftq://host:port` are spoken to over the binary protocol
(cluster/binary_client.py), `http://` ones over HTTP; answers are the same `Response`
either way. Nodes name each other by HTTP URL (in `/v1/cluster` and in 307 hints), so a
router given raftq servers learns which raftq URL is which node from the `/v1/cluster`
answers of those servers (the answering node's own entry in `nodes` names its HTTP URL) and
sends to a leader's raftq URL once it knows it; until then, to its HTTP URL (HTTP still
works). Discovery waits up to `LEARN_GRACE_S` past the majority for the leader's own answer.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import urlencode, urlsplit

import aiohttp
import msgpack
import structlog

from cluster.binary_client import BinaryConnection
from cluster.errors import DEFINITE_STATUSES, ClusterUnavailable, error_from_response
from cluster.watch import Abandoned, await_or_abandon
from common.binwire import SCHEME as BINARY_SCHEME
from common.binwire import TLS_SCHEME as BINARY_TLS_SCHEME

log = structlog.get_logger("raftq.client")

#: The binary ports of `raftq up`'s three nodes: the client speaks the binary protocol
#: unless given http:// URLs (HTTP stays for curl, browsers and the whole contract).
DEFAULT_SERVERS: tuple[str, ...] = (
    "raftq://127.0.0.1:7201",
    "raftq://127.0.0.1:7202",
    "raftq://127.0.0.1:7203",
)
BINARY_SCHEMES = (BINARY_SCHEME, BINARY_TLS_SCHEME)
#: How long discovery waits past a majority for the leader's own answer, which tells a
#: router given raftq URLs which of them is the leader's (see `_learn_leader_binary`).
LEARN_GRACE_S = 0.25
SERVERS_ENV = "RAFTQ_SERVERS"
#: A follower pointing at another follower more often than this in one call means the
#: hints are stale (an election is under way): stop following and back off instead.
MAX_REDIRECTS_PER_ROUND = 4
# Nodes forward a request a follower cannot serve to the leader unless asked for a 307.
# The client asks: the 307 teaches it the leader, so later requests skip the extra hop.
REDIRECT_HEADERS = {"X-Raftq-Redirect": "1"}
#: Answers that mean "not now": retried with backoff (Retry-After honoured) until the deadline.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
#: Other 5xx answers are retried this many times, then raised as ServerError.
MAX_SERVER_ERROR_RETRIES = 2


class CallOptions(TypedDict, total=False):
    """The per-call options of `LeaderRouter.request` (so of `AsyncClient.request` too)."""

    json_body: Any
    params: Mapping[str, str] | None
    timeout_s: float | None
    extra_request_s: float


def normalize_server(url: str) -> str:
    """Return `url` as `scheme://host:port` without a trailing slash (`http://` if omitted).

    `raftq://host:port` names a node's binary port (`raftqs://` over TLS), `http(s)://`
    its HTTP API.
    """
    url = url.strip()
    if not url:
        raise ValueError("empty server URL")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", *BINARY_SCHEMES) or not parts.netloc:
        raise ValueError(
            f"invalid server URL {url!r}: expected raftq(s)://host:port or http(s)://host:port"
        )
    if parts.scheme in BINARY_SCHEMES and parts.port is None:
        raise ValueError(f"invalid server URL {url!r}: a {parts.scheme}:// URL needs a port")
    return f"{parts.scheme}://{parts.netloc}"


TOKEN_ENV = "RAFTQ_TOKEN"
TOKEN_FILE_ENV = "RAFTQ_TOKEN_FILE"


def resolve_token(token: str | None = None) -> str | None:
    """The client's token: the argument, else `$RAFTQ_TOKEN`, else the contents of the
    file `$RAFTQ_TOKEN_FILE`, else None (a cluster with auth off needs none)."""
    if token:
        return token.strip()
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        with open(path, encoding="utf-8") as fh:
            return fh.read(4096).strip() or None
    return None


def is_binary_url(url: str) -> bool:
    """Whether `url` names a node's binary port (raftq:// or raftqs://)."""
    return url.startswith(("raftq://", "raftqs://"))


def resolve_servers(servers: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """Servers from the argument, else `$RAFTQ_SERVERS` (comma-separated), else the defaults."""
    if servers is None:
        servers = os.environ.get(SERVERS_ENV) or None
    if servers is None:
        return DEFAULT_SERVERS
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    result: list[str] = []
    for item in items:
        if item.strip():
            url = normalize_server(item)
            if url not in result:
                result.append(url)
    if not result:
        raise ValueError("no server URLs given")
    return tuple(result)


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with "equal jitter": delay in [d/2, d], d = min(cap, base*2^n).

    Jitter spreads the retries of many clients after a leader crash so they do not all hit
    the new leader in the same millisecond.
    """

    base_s: float = 0.05
    cap_s: float = 2.0
    attempt: int = 0
    rng: random.Random | None = None

    def next_delay_s(self) -> float:
        d = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        rng = self.rng or random
        return d / 2 + rng.random() * d / 2


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP answer: status, headers and the decoded JSON body (None when empty)."""

    status: int
    headers: Mapping[str, str]
    body: Any


def describe_exception(exc: BaseException) -> str:
    """Short human description of a transport failure, for ClusterUnavailable reports."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS: the node's certificate was refused: {exc.certificate_error}"[:200]
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS: {exc.os_error}"[:200]
    if isinstance(exc, ssl.SSLError):  # the binary protocol's raftqs:// connections
        return f"TLS: {exc}"[:200]
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        reason = os.strerror(errno) if errno else str(exc.os_error) or "refused"
        return f"cannot connect: {reason}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection error: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "cannot connect: Connection refused"
    if isinstance(exc, ConnectionError) and not isinstance(exc, aiohttp.ClientError):
        return f"connection error: {exc}"[:200]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


def note_failure(errors: dict[str, str], url: str, text: str, cut_short: bool) -> None:
    """Record why `url` failed, for the ClusterUnavailable report.

    A timeout of an attempt that the caller's overall deadline cut short says nothing about
    the server: it does not replace an earlier answer such as "503 no_leader", which does.
    """
    if cut_short and text == "timed out" and url in errors:
        return
    errors[url] = text


def _error_summary(resp: Response) -> str:
    err = resp.body.get("error") if isinstance(resp.body, dict) else None
    if isinstance(err, dict):
        return f"{resp.status} {err.get('code', '')}: {err.get('message', '')}".strip()[:200]
    return f"HTTP {resp.status}"


def leader_hint(resp: Response) -> str | None:
    """The leader base URL a 307 points at: JSON `leader_url`, else the `Location` origin."""
    if isinstance(resp.body, dict):
        url = resp.body.get("leader_url")
        if isinstance(url, str) and url:
            try:
                return normalize_server(url)
            except ValueError:
                pass
    location = resp.headers.get("Location")
    if location and "://" in location:
        try:
            return normalize_server(location)
        except ValueError:
            return None
    return None


def retry_after_s(resp: Response) -> float | None:
    """Seconds from a `Retry-After: <seconds>` header (HTTP dates are ignored)."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class LeaderRouter:
    """Sends requests to the current leader, discovering and re-discovering it as needed.

    One router per client; it owns (or borrows) one aiohttp session and the cached leader
    URL shared by all concurrent calls on that client.
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        timeout_s: float,
        request_timeout_s: float,
        probe_timeout_s: float = 2.0,
        session: aiohttp.ClientSession | None = None,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
        leader_check_s: float | None = 1.0,
        rng: random.Random | None = None,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if timeout_s <= 0 or request_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if leader_check_s is not None and leader_check_s <= 0:
            raise ValueError("leader_check_s must be positive (or None to never check)")
        self.servers: tuple[str, ...] = tuple(servers)
        # Sent with every HTTP request, and once per binary connection (its session).
        self.token = token
        self._headers = (
            {**REDIRECT_HEADERS, "Authorization": f"Bearer {token}"} if token else REDIRECT_HEADERS
        )
        self.timeout_s = timeout_s
        self.request_timeout_s = request_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.leader_check_s = leader_check_s
        self._leader_check: asyncio.Future[str | None] | None = None
        self._leader_check_at = 0.0  # loop time the shared check started
        self._rng = rng or random.Random()
        self._session = session
        self._owns_session = session is None
        # TLS for https:// and raftqs:// servers (cluster/tls.py); None: the system's CAs
        self.ssl_context = ssl_context
        self.leader_url: str | None = None
        self._last_leader_url: str | None = None  # only for the leader_changed log event
        # The binary protocol: one connection per raftq URL, and what the router learned
        # of which raftq URL is which node's (nodes name each other by HTTP URL).
        self.binary = any(is_binary_url(s) for s in self.servers)
        self._binary: dict[str, BinaryConnection] = {}
        self._binary_for_http: dict[str, str] = {}
        self._http_for_binary: dict[str, str] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"LeaderRouter(servers={list(self.servers)!r}, leader={self.leader_url!r})"

    # --- session -------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the session passed to the client is closed")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=256,
                    force_close=False,
                    ssl=self.ssl_context if self.ssl_context is not None else True,
                ),
                headers={"Accept": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        """Close the session if this router created it (a borrowed one stays open)."""
        check, self._leader_check = self._leader_check, None
        if check is not None and not check.done():
            check.cancel()
            await asyncio.gather(check, return_exceptions=True)
        background, self._background = self._background, set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        connections, self._binary = list(self._binary.values()), {}
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None if self._owns_session else self._session

    # --- one HTTP exchange ---------------------------------------------------------------

    async def send_once(
        self,
        base_url: str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        timeout_s: float,
    ) -> Response:
        """One request to one node, no retry; transport errors propagate."""
        if is_binary_url(base_url):
            return await self._send_binary(
                base_url, method, path, json_body=json_body, params=params, timeout_s=timeout_s
            )
        session = self._get_session()
        async with session.request(
            method,
            base_url + path,
            json=json_body,
            params=params,
            headers=self._headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=max(0.001, timeout_s)),
        ) as resp:
            raw = await resp.read()
            body: Any = None
            if raw:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
            return Response(resp.status, dict(resp.headers), body)

    async def _send_binary(
        self,
        base_url: str,
        method: str,
        path: str,
        *,
        json_body: Any,
        params: Mapping[str, str] | None,
        timeout_s: float,
    ) -> Response:
        """`send_once` over the binary protocol: the same call, the same `Response`."""
        conn = self._binary.get(base_url)
        if conn is None:
            conn = self._binary[base_url] = BinaryConnection(
                base_url, self.ssl_context, token=self.token
            )
        path_qs = f"{path}?{urlencode(params)}" if params else path
        body = None if json_body is None else msgpack.packb(json_body, use_bin_type=True)
        status, headers, answer = await conn.request(method, path_qs, body, timeout_s)
        if status == 200 and method == "GET" and path == "/v1/cluster":
            self._learn_binary(base_url, answer)
        return Response(status, headers, answer)

    def _learn_binary(self, base_url: str, view: Any) -> None:
        """Note which node answered at `base_url` (a raftq URL): its HTTP URL, from its
        own `/v1/cluster` view, so that leader hints (HTTP URLs) can be sent over binary."""
        if not isinstance(view, dict):
            return
        me = view.get("node_id")
        for node in view.get("nodes") or ():
            if isinstance(node, dict) and node.get("id") == me and isinstance(node.get("url"), str):
                try:
                    http_url = normalize_server(node["url"])
                except ValueError:
                    return
                self._binary_for_http[http_url] = base_url
                self._http_for_binary[base_url] = http_url
                return

    def route_url(self, url: str) -> str:
        """Where to send a request meant for node `url`: its raftq URL when this router
        speaks binary and knows it, else `url` itself."""
        if self.binary and not is_binary_url(url):
            return self._binary_for_http.get(url, url)
        return url

    def same_node(self, a: str | None, b: str | None) -> bool:
        """Whether URLs `a` and `b` name the same node (one may be its raftq URL)."""
        if a is None or b is None:
            return a is b
        return self._http_for_binary.get(a, a) == self._http_for_binary.get(b, b)

    # --- discovery -----------------------------------------------------------------------

    async def _probe(self, url: str, timeout_s: float) -> tuple[str, str | None, int, str | None]:
        """Ask one node who leads: (url, leader_url or None, term, error text or None)."""
        try:
            resp = await self.send_once(url, "GET", "/v1/cluster", timeout_s=timeout_s)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return url, None, -1, describe_exception(exc)
        if resp.status in (401, 403):
            # Reachable, but refuses this client: the request itself gets the same answer
            # and raises it at once (retrying cannot make a wrong token right).
            return url, None, 0, _error_summary(resp)
        if resp.status != 200 or not isinstance(resp.body, dict):
            return url, None, -1, _error_summary(resp)
        term = resp.body.get("term")
        term = term if isinstance(term, int) else 0
        leader = resp.body.get("leader")
        if isinstance(leader, dict) and isinstance(leader.get("url"), str) and leader["url"]:
            try:
                return url, normalize_server(leader["url"]), term, None
            except ValueError:
                return url, None, term, f"bad leader url {leader['url']!r}"
        return url, None, term, f"no leader known (term {term})"

    async def discover(
        self, deadline: float, errors: dict[str, str], reachable: list[str] | None = None
    ) -> str | None:
        """Ask all servers at once which node leads; None if nobody knows.

        The leader named in the highest term wins, so a partitioned ex-leader that still
        believes in its old term loses to the majority's answer. It returns as soon as a
        majority of the servers agree (a hung server cannot delay it), else when every probe
        is answered or the probe timeout passes. Servers that answered without naming a
        leader are appended to `reachable`: the caller may still send there and follow a 307.
        """
        loop = asyncio.get_running_loop()
        timeout_s = min(self.probe_timeout_s, deadline - loop.time())
        if timeout_s <= 0:
            return None
        majority = len(self.servers) // 2 + 1
        best: tuple[int, str] | None = None  # (term, leader url)
        votes: dict[tuple[int, str], int] = {}
        tasks = [asyncio.ensure_future(self._probe(url, timeout_s)) for url in self.servers]
        try:
            for next_done in asyncio.as_completed(tasks):
                url, leader, term, err = await next_done
                if leader is None:
                    note_failure(
                        errors, url, err or "no leader known", timeout_s < self.probe_timeout_s
                    )
                    if reachable is not None and term >= 0:
                        reachable.append(url)
                    continue
                key = (term, leader)
                votes[key] = votes.get(key, 0) + 1
                if best is None or key[0] > best[0]:
                    best = key
                if best == key and votes[key] >= majority:
                    break
            if best is not None:
                await self._learn_leader_binary(best[1], tasks)
        except TimeoutError:
            pass
        finally:
            cancelled = []
            for task in tasks:
                if self.binary and not task.done():
                    # its answer still teaches which raftq URL is which node (the leader's
                    # may be the one not in yet); bounded by the probe timeout
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                    continue
                task.cancel()
                cancelled.append(task)
            await asyncio.gather(*cancelled, return_exceptions=True)
        if best is None:
            return None
        self.leader_url = best[1]
        if self._last_leader_url is not None and self._last_leader_url != best[1]:
            log.info("client.leader_changed", old=self._last_leader_url, new=best[1], term=best[0])
        self._last_leader_url = best[1]
        return best[1]

    async def _learn_leader_binary(self, leader: str, probes: list[asyncio.Future[Any]]) -> None:
        """Give the probes still out a moment (`LEARN_GRACE_S`) if one of them may name the
        leader's raftq URL: else the first calls after a discovery go over HTTP. Nodes
        answer `/v1/cluster` locally, so the leader's answer is usually milliseconds
        behind the majority's; a hung server costs at most the grace."""
        if not self.binary:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + LEARN_GRACE_S
        pending = {t for t in probes if not t.done()}
        while pending and self.route_url(leader) == leader:
            remaining = until - loop.time()
            if remaining <= 0:
                return
            _done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )

    def forget_leader(self, url: str | None = None) -> None:
        """Drop the cached leader (only if it is still `url`, when given)."""
        if url is None or self.same_node(self.leader_url, url):
            self.leader_url = None

    # --- the retry loop ------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        extra_request_s: float = 0.0,
    ) -> Any:
        """Send to the leader with discovery and retries; return the decoded 2xx body.

        `timeout_s` overrides the client's total deadline for this call; `extra_request_s`
        lengthens each attempt's own timeout (a long poll may legitimately take `wait_s`).
        """
        loop = asyncio.get_running_loop()
        budget_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + budget_s + extra_request_s
        errors: dict[str, str] = {}
        backoff = Backoff(self.backoff_base_s, self.backoff_cap_s, rng=self._rng)
        redirects = 0
        server_errors = 0

        async def pause(delay_s: float) -> None:
            await asyncio.sleep(max(0.0, min(delay_s, deadline - loop.time())))

        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._unavailable(budget_s + extra_request_s, errors)
            target = self.leader_url
            if target is None:
                reachable: list[str] = []
                target = await self.discover(deadline, errors, reachable)
                if target is None and reachable:
                    # Nobody names a leader in /v1/cluster: ask one live node directly;
                    # it answers 307 with a hint or 503 no_leader with Retry-After.
                    target = reachable[0]
                if target is None:
                    await pause(backoff.next_delay_s())
                    continue
            target = self.route_url(target)
            remaining = deadline - loop.time()
            if remaining <= 0:
                continue
            attempt_s = self.request_timeout_s + extra_request_s
            attempt = self.send_once(
                target,
                method,
                path,
                json_body=json_body,
                params=params,
                timeout_s=min(attempt_s, remaining),
            )
            try:
                resp = await self._watching_leader(target, attempt)
            except Abandoned as moved:
                errors[target] = (
                    f"no answer after {moved.waited_s:.1f}s; the cluster now names "
                    f"{moved.reason} leader"
                )
                log.info("client.leader_moved", url=target, path=path, leader=moved.reason)
                continue  # the check already cached the new leader: no backoff
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                note_failure(errors, target, describe_exception(exc), remaining < attempt_s)
                log.debug("client.request_failed", url=target, path=path, error=errors[target])
                self.forget_leader(target)
                await pause(backoff.next_delay_s())
                continue
            if 200 <= resp.status < 300:
                return resp.body
            if resp.status in (307, 308):
                hint = leader_hint(resp)
                errors[target] = f"{resp.status} not_leader (leader hint {hint})"
                self.forget_leader(target)
                if (
                    hint is not None
                    and not self.same_node(hint, target)
                    and redirects < MAX_REDIRECTS_PER_ROUND
                ):
                    redirects += 1
                    self.leader_url = hint
                    continue
                redirects = 0
                await pause(backoff.next_delay_s())
                continue
            if resp.status in DEFINITE_STATUSES:
                raise error_from_response(resp.status, resp.body)
            if resp.status in TRANSIENT_STATUSES or resp.status >= 500:
                errors[target] = _error_summary(resp)
                if resp.status not in TRANSIENT_STATUSES:
                    # An internal error may be a bug that repeats forever: retry a little
                    # (it may be a node dying mid-request), then let the caller see it.
                    server_errors += 1
                    if server_errors > MAX_SERVER_ERROR_RETRIES:
                        raise error_from_response(resp.status, resp.body)
                self.forget_leader(target)
                hinted = retry_after_s(resp)
                delay_s = backoff.next_delay_s()
                if hinted is not None:
                    delay_s = max(hinted * (0.8 + 0.4 * self._rng.random()), 0.01)
                await pause(delay_s)
                continue
            raise error_from_response(resp.status, resp.body)

    async def _watching_leader(self, target: str, attempt: Awaitable[Response]) -> Response:
        """Await `attempt` (a request to `target`), abandoning it if another node now leads.

        While it is unanswered, the cluster is asked who leads after `leader_check_s`,
        then at doubling intervals (`await_or_abandon`). If a majority names another
        leader, `target` was deposed: whatever it still holds cannot commit in its old
        term (the majority has moved on), so the attempt is cancelled and `Abandoned`
        raised for the caller to re-send, exactly as after a timeout, only sooner. A leader
        that is merely slow is still named, and the attempt keeps waiting until its own
        timeout.
        """
        if self.leader_check_s is None:
            return await attempt

        async def another_leader() -> str | None:
            # shielded: the check is shared, and this waiter may be cancelled
            leader = await asyncio.shield(self._check_leader())
            return leader if leader is not None and not self.same_node(leader, target) else None

        return await await_or_abandon(attempt, another_leader, self.leader_check_s)

    def _check_leader(self) -> asyncio.Future[str | None]:
        """One `discover` shared by every attempt of this router that waits now.

        Sixty-four requests stuck on a hung leader make one round of probes, not 64: a
        pending check is reused, and so is a finished one started less than half a check
        interval ago (requests that started a few ms apart reach their checks a few ms
        apart, often after the first round has already answered).
        """
        now = asyncio.get_running_loop().time()
        check = self._leader_check
        assert self.leader_check_s is not None
        if check is None or (
            check.done() and now - self._leader_check_at >= self.leader_check_s / 2
        ):
            check = asyncio.ensure_future(self.discover(now + self.probe_timeout_s, {}))
            self._leader_check, self._leader_check_at = check, now
        return check

    def _unavailable(self, budget_s: float, errors: Mapping[str, str]) -> ClusterUnavailable:
        attempts = {url: errors.get(url, "not reached") for url in self.servers}
        attempts.update({url: err for url, err in errors.items() if url not in attempts})
        log.warning("client.cluster_unavailable", deadline_s=budget_s, attempts=attempts)
        return ClusterUnavailable(budget_s, attempts)

    async def request_node(
        self, base_url: str, method: str, path: str, *, timeout_s: float | None = None
    ) -> Any:
        """One request to one specific node (no leader routing); errors raise typed."""
        resp = await self.send_once(
            normalize_server(base_url),
            method,
            path,
            timeout_s=self.request_timeout_s if timeout_s is None else timeout_s,
        )
        if 200 <= resp.status < 300:
            return resp.body
        raise error_from_response(resp.status, resp.body)
