"""The Raft peer transport: one-way msgpack frames over asyncio TCP.

Node *i* sends to *j* only on its own outbound connection to *j*; a connection *j* accepted
is read-only for *j* (but for the challenge it opens with in a cluster with a secret:
raft/framing.py has the handshake and the sealed frames). So one proxy per directed link can cut exactly one direction, which
the chaos suite relies on. Raft tolerates lost messages, so the transport trades delivery
guarantees for never blocking the driver: `send()` enqueues pre-framed bytes on a bounded
per-peer queue and returns; one writer task per peer connects, handshakes and drains the
queue in batches, reconnecting with capped jittered backoff. Whatever a peer sends us is
validated (handshake, frame size, message shape) and a violation closes that connection
with a logged reason; it never raises out of the transport.

With peer TLS (`tls=PeerTls`, raft/peer_tls.py) every connection is mutual TLS under the
cluster CA before its first frame, and the node id a certificate names must be the id the
connection claims: the acceptor refuses a handshake whose `from` differs from the dialer's
certificate (`raft.transport.peer_identity_mismatch`), and the dialer drops a connection
whose acceptor's certificate is not the peer it dialed. Both happen before a single Raft
message is delivered, so a mismatched peer cannot move the term. The acceptor upgrades
the accepted socket itself (`StreamWriter.start_tls`) rather than listening with `ssl=`,
so that a refused TLS handshake (a plain-TCP peer, another CA, no certificate) is logged
(`raft.transport.tls_refused`) instead of vanishing inside asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import structlog

from common.connection_cap import ConnectionCap, peer_address
from raft.errors import InvalidMessage, UndeliverableMessage
from raft.framing import (
    FRAME_HEADER_BYTES,
    MAX_HANDSHAKE_BYTES,
    FrameDecoder,
    FrameError,
    FrameOpener,
    FrameSealer,
    HandshakeRejected,
    decode_challenge_keys,
    decode_handshake,
    encode_challenge,
    encode_handshake,
    frame,
    key_id,
    new_nonce,
    pick_secret,
    sealed_frame_limit,
    session_key,
)
from raft.messages import Message, MessageType, decode_message, encode_message
from raft.peer_tls import PeerTls, cert_node_id, cert_node_ids

log = structlog.get_logger("raft.transport")

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
READ_CHUNK_BYTES = 256 * 1024
#: Connections one address may hold open on the peer port (a peer holds one, two while it
#: reconnects; on one host, behind the chaos proxy or a NAT, every peer shares one address).
MAX_CONNECTIONS_PER_ADDRESS = 16
#: An accepted connection that delivers no byte for this long is closed. A dialer with
#: nothing to send writes a keep-alive after a third of it, so only a dead or stalled
#: peer (or a stranger holding the port) stays silent that long; 30 s is far above any
#: election timeout, so Raft has long moved on by then.
IDLE_TIMEOUT_S = 30.0
#: A frame must be in within READ_TIMEOUT_S of its first byte, plus its length at
#: MIN_FRAME_BYTES_PER_S (so a multi-megabyte append on a slow link keeps its time while a
#: client trickling a frame holds the connection no longer).
READ_TIMEOUT_S = 30.0
MIN_FRAME_BYTES_PER_S = 16 << 10
_DROPPABLE_FIRST = frozenset({MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP})

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PeerStats:
    """Counters of one outbound link, as returned by `Transport.stats()`."""

    peer_id: int
    addr: Address
    connected: bool
    queued: int
    sent: int
    dropped: int
    reconnects: int


class _OutboundQueue:
    """Bounded FIFO of pre-framed messages that sheds heartbeats before anything else.

    Two deques tagged with a global sequence number: overflow pops the oldest heartbeat in
    O(1) (else the oldest message); taking everything merges them back in send order.
    """

    __slots__ = ("_heartbeats", "_others", "_seq", "max_msgs")

    def __init__(self, max_msgs: int) -> None:
        self.max_msgs = max_msgs
        self._heartbeats: deque[tuple[int, bytes]] = deque()
        self._others: deque[tuple[int, bytes]] = deque()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heartbeats) + len(self._others)

    def push(self, framed: bytes, droppable_first: bool) -> int:
        """Append one frame; return how many frames were dropped to make room (0 or 1)."""
        self._seq += 1
        (self._heartbeats if droppable_first else self._others).append((self._seq, framed))
        if len(self._heartbeats) + len(self._others) <= self.max_msgs:
            return 0
        if self._heartbeats:
            self._heartbeats.popleft()
        else:
            self._others.popleft()
        return 1

    def take_all(self) -> list[bytes]:
        """Remove and return every queued frame in send order."""
        hb, ot = self._heartbeats, self._others
        if not hb:
            out = [f for _, f in ot]
        elif not ot:
            out = [f for _, f in hb]
        else:
            out = [f for _, f in sorted((*hb, *ot), key=lambda item: item[0])]
        hb.clear()
        ot.clear()
        return out

    def clear(self) -> int:
        n = len(self)
        self._heartbeats.clear()
        self._others.clear()
        return n


class _Peer:
    """Outbound state of one peer: address, queue, counters, and the writer's wake-ups."""

    def __init__(self, peer_id: int, addr: Address, max_queue_msgs: int) -> None:
        self.peer_id = peer_id
        self.addr = addr
        self.queue = _OutboundQueue(max_queue_msgs)
        self.wake = asyncio.Event()  # queue non-empty, connection lost, or address changed
        self.addr_changed = asyncio.Event()
        self.conn_lost = False
        self.connected = False
        self.removed = False
        self.sent = 0
        self.dropped = 0
        self.reconnects = 0
        self.task: asyncio.Task[None] | None = None
        # Set while the writer task idles on `wake` with an open, fully flushed stream:
        # only then may `Transport.flush` write for it without reordering frames.
        self.idle_writer: asyncio.StreamWriter | None = None
        # The current connection's sealer (a cluster with a secret), set after its handshake.
        self.sealer: FrameSealer | None = None
        self.last_write_s = 0.0  # time.monotonic() of the last write on the connection


def _write_queued(peer: _Peer, writer: asyncio.StreamWriter) -> None:
    """Hand every queued frame of `peer` to `writer` in one write, in order.

    A connection already closing keeps its frames queued for the next one: asyncio drops
    the bytes of a write to a closing stream quietly (uvloop raises), and either way the
    frames would be lost.
    """
    if writer.transport.is_closing():
        peer.conn_lost = True
        peer.wake.set()  # the writer task sees it and reconnects
        return
    frames = peer.queue.take_all()
    sealer = peer.sealer
    writer.write(b"".join(frames) if sealer is None else sealer.seal_all(frames))
    peer.sent += len(frames)
    peer.last_write_s = time.monotonic()


def _keepalive(peer: _Peer) -> bytes:
    """What a dialer writes on a link silent for a while: an empty frame (an empty seal
    with a secret), which the acceptor reads as a sign of life and nothing else."""
    return frame(b"") if peer.sealer is None else peer.sealer.seal(b"")


@runtime_checkable
class PeerTransport(Protocol):
    """What the driver needs from a transport (the TCP `Transport` below; a test may pass
    another through `RaftNode(transport_factory=...)`).

    Built as `factory(node_id, cluster_id, listen, peers, on_message, with_incarnation=...,
    **options)`; `on_message(msg, incarnation)` receives every message in order per peer.
    """

    received: int
    peer_incarnations: dict[int, str]

    @property
    def listen_addr(self) -> Address: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def send(self, msg: Message) -> None: ...

    def flush(self) -> None:
        """Write what `send` queued (the driver calls it once per loop turn)."""
        ...

    def update_peer(self, peer_id: int, addr: Address) -> None: ...

    def remove_peer(self, peer_id: int) -> None: ...

    def stats(self) -> dict[int, PeerStats]: ...


class Transport:
    """Peer transport of one node. See the module docstring for the wire rules."""

    def __init__(
        self,
        node_id: int,
        cluster_id: str,
        listen: Address,
        peers: dict[int, Address],
        on_message: Callable[..., None],
        *,
        with_incarnation: bool = False,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_queue_msgs: int = 4096,
        secret: bytes | None = None,
        previous_secret: bytes | None = None,
        config_digest: bytes = b"",
        incarnation: str = "",
        connect_timeout_s: float = 1.0,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 2.0,
        handshake_timeout_s: float = 5.0,
        max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        rng: random.Random | None = None,
        tls: PeerTls | None = None,
    ) -> None:
        if node_id <= 0:
            raise ValueError(f"node_id must be positive, got {node_id}")
        if node_id in peers:
            raise ValueError(f"peers must not contain this node's own id {node_id}")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._listen = listen
        # on_message(msg), or on_message(msg, incarnation) with `with_incarnation`: the
        # sender's incarnation as the handshake of the connection it came on named it.
        self._on_message = on_message
        self._with_incarnation = with_incarnation
        self.max_frame_bytes = max_frame_bytes
        self.max_queue_msgs = max_queue_msgs
        self._secret = secret
        # A rotation under way (framing.py): the previous secret is accepted too, and
        # dialed with when a peer does not hold ours yet.
        self._secrets: tuple[bytes, ...] = tuple(
            s for s in (secret, previous_secret if secret is not None else None) if s is not None
        )
        self._key_ids = tuple(key_id(s) for s in self._secrets)
        self._tls = tls  # mutual TLS on every peer connection (module docstring)
        self._config_digest = config_digest  # see framing.config_digest
        self.incarnation = incarnation  # ours, sent in every handshake
        # Each peer's incarnation as its latest accepted connection announced it.
        self.peer_incarnations: dict[int, str] = {}
        self.connect_timeout_s = connect_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.handshake_timeout_s = handshake_timeout_s
        self.connection_cap = ConnectionCap(
            max_connections_per_address, "raft.transport.connection_refused", "raft.transport"
        )
        self.idle_timeout_s = idle_timeout_s
        self.keepalive_s = idle_timeout_s / 3
        self.read_timeout_s = read_timeout_s
        self._rng = rng or random.Random()
        # Peers exist before start() so messages sent early are queued, not refused.
        self._peers: dict[int, _Peer] = {
            pid: _Peer(pid, addr, max_queue_msgs) for pid, addr in peers.items()
        }
        self._server: asyncio.Server | None = None
        self._bound: Address | None = None
        self._inbound: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._inbound_by_peer: dict[int, asyncio.StreamWriter] = {}
        self._started = False
        self._stopped = False
        self.received = 0
        self.rejected_connections = 0
        self.bad_frames = 0
        self.send_refused = 0
        self._log = log.bind(node_id=node_id)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the listener and start one writer per peer; returns once bound."""
        if self._started:
            return
        self._started = True
        host, port = self._listen
        self._server = await asyncio.start_server(
            self._serve_inbound, host, port, reuse_address=True, limit=READ_CHUNK_BYTES
        )
        sockname = self._server.sockets[0].getsockname()
        self._bound = (sockname[0], sockname[1])
        for peer in self._peers.values():
            self._start_writer(peer)
        self._log.info("raft.transport.listening", addr=f"{self._bound[0]}:{self._bound[1]}")

    @property
    def listen_addr(self) -> Address:
        """The address actually bound (the real port when started with port 0)."""
        if self._bound is None:
            raise RuntimeError("transport not started")
        return self._bound

    @property
    def port(self) -> int:
        return self.listen_addr[1]

    async def stop(self) -> None:
        """Close the listener, every connection and task. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()
        tasks: list[asyncio.Task[None]] = []
        for peer in self._peers.values():
            peer.conn_lost = True
            peer.wake.set()
            if peer.task is not None:
                peer.task.cancel()
                tasks.append(peer.task)
        # Inbound tasks end on their own once their socket is closed (cancelling them trips
        # a CancelledError in asyncio's start_server callback on Python 3.11).
        inbound = list(self._inbound.items())
        for _task, writer in inbound:
            writer.close()
        if inbound:
            _done, stuck = await asyncio.wait([t for t, _ in inbound], timeout=1.0)
            for task in stuck:
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
        self._log.info("raft.transport.stopped")

    # ------------------------------------------------------------ peers

    def _start_writer(self, peer: _Peer) -> None:
        peer.task = asyncio.get_running_loop().create_task(
            self._run_writer(peer), name=f"raft-transport-{self.node_id}->{peer.peer_id}"
        )

    def update_peer(self, peer_id: int, addr: Address) -> None:
        """Add a peer, or move it to a new address (reconnects; queued messages are kept)."""
        if peer_id == self.node_id or peer_id <= 0:
            raise ValueError(f"invalid peer id {peer_id}")
        if self._stopped:
            return
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer(peer_id, addr, self.max_queue_msgs)
            if self._started:
                self._start_writer(peer)
            return
        if peer.addr != addr:
            peer.addr = addr
            peer.conn_lost = True  # the writer drops the old connection on its next wake-up
            peer.addr_changed.set()
            peer.wake.set()

    def remove_peer(self, peer_id: int) -> None:
        """Forget a peer: stop its writer and drop its queue."""
        peer = self._peers.pop(peer_id, None)
        if peer is not None:
            peer.removed = True
            peer.conn_lost = True
            peer.wake.set()
            peer.queue.clear()
            if peer.task is not None:
                peer.task.cancel()

    # ------------------------------------------------------------ sending

    def send(self, msg: Message) -> None:
        """Queue `msg` for its peer and return at once (never blocks, never awaits).

        A full queue sheds its oldest heartbeat, else its oldest message (the core resends
        what was lost). A message for an unknown peer or not from this node is dropped and
        logged. A message over the frame limit raises UndeliverableMessage: the core would
        rebuild it the same way forever, so dropping it would wedge replication silently.
        """
        peer = self._peers.get(msg.to)
        if peer is None or self._stopped:
            self.send_refused += 1
            self._log.debug("raft.transport.send_unknown_peer", to=msg.to, type=msg.type.name)
            return
        if msg.frm != self.node_id:
            self.send_refused += 1
            self._log.error("raft.transport.send_refused", reason="frm_not_self", frm=msg.frm)
            return
        body = encode_message(msg)
        if len(body) > self.max_frame_bytes:
            # The peer would refuse it every time: dropping it would stall replication for
            # good (a retried APP is rebuilt the same). The caller must fail loudly.
            peer.dropped += 1
            self._log.critical(
                "raft.transport.send_refused",
                reason="frame_too_large",
                size_bytes=len(body),
                max_frame_bytes=self.max_frame_bytes,
                to=msg.to,
                type=msg.type.name,
            )
            raise UndeliverableMessage(
                f"{msg.type.name} to {msg.to} encodes to {len(body)} bytes, over the "
                f"{self.max_frame_bytes}-byte frame limit"
            )
        peer.dropped += peer.queue.push(frame(body), msg.type in _DROPPABLE_FIRST)
        peer.wake.set()

    def flush(self) -> None:
        """Write queued frames now for every peer whose writer is idle and caught up.

        Why: `send` only queues and wakes the peer's writer task, which writes on a later
        turn of the event loop; a caller about to block the loop (an inline fsync) or to
        end its turn calls this so replication leaves at once. Frames are written only when
        the kernel took everything before (no buffered bytes), so the writer task's drain
        still paces a slow peer, and always in queue order.
        """
        for peer in self._peers.values():
            writer = peer.idle_writer
            if writer is None or not peer.queue or peer.conn_lost:
                continue
            if writer.transport.is_closing():
                _write_queued(peer, writer)  # keeps the frames, wakes the writer task
                continue
            if writer.transport.get_write_buffer_size():
                continue  # the writer task drains first
            _write_queued(peer, writer)

    def connected(self, peer_id: int) -> bool:
        """Whether our outbound connection to `peer_id` is currently up."""
        peer = self._peers.get(peer_id)
        return peer is not None and peer.connected

    def stats(self) -> dict[int, PeerStats]:
        return {
            pid: PeerStats(
                peer_id=pid,
                addr=p.addr,
                connected=p.connected,
                queued=len(p.queue),
                sent=p.sent,
                dropped=p.dropped,
                reconnects=p.reconnects,
            )
            for pid, p in self._peers.items()
        }

    def inbound_stats(self) -> dict[str, int]:
        """Counters of the accepting side (what peers sent us, and what we refused)."""
        return {
            "connections": len(self._inbound),
            "peers_connected": len(self._inbound_by_peer),
            "received": self.received,
            "rejected_connections": self.rejected_connections,
            "bad_frames": self.bad_frames,
        }

    def _backoff_s(self, attempt: int) -> float:
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** min(attempt, 30)))
        return cap * (0.5 + 0.5 * self._rng.random())

    async def _run_writer(self, peer: _Peer) -> None:
        """Connect, handshake, drain the queue; on any error back off and reconnect."""
        attempt = 0
        short_lived_streak = 0
        ever_connected = False
        # Loop on flags too, not only on cancellation: on Python 3.11 `wait_for` can swallow
        # a cancel that races with its inner future completing.
        while not peer.removed and not self._stopped:
            addr = peer.addr
            peer.addr_changed.clear()
            try:
                async with asyncio.timeout(self._connect_budget_s()):
                    reader, writer = await self._open(addr)
            except Exception as exc:  # refused, timed out, unresolvable: all mean "retry later"
                attempt += 1
                level = self._log.info if attempt == 1 else self._log.debug
                level(
                    "raft.transport.connect_failed",
                    peer=peer.peer_id,
                    addr=f"{addr[0]}:{addr[1]}",
                    attempt=attempt,
                    error=repr(exc),
                )
                await self._sleep_backoff(peer, attempt)
                continue
            if peer.addr != addr or peer.removed or self._stopped:
                writer.close()  # moved or shut down while we were connecting
                continue
            if self._tls is not None and not self._dialed_right_peer(
                peer, writer, addr, quiet=attempt > 0
            ):
                writer.close()
                attempt += 1
                await self._sleep_backoff(peer, attempt)
                continue
            challenge, dial_secret = b"", self._secret
            if self._secret is not None:
                try:
                    challenge, dial_secret = await self._read_challenge(reader)
                except (
                    HandshakeRejected,
                    TimeoutError,
                    OSError,
                    asyncio.IncompleteReadError,
                ) as exc:
                    writer.close()
                    attempt += 1
                    (self._log.warning if attempt == 1 else self._log.debug)(
                        "raft.transport.challenge_failed",
                        peer=peer.peer_id,
                        addr=f"{addr[0]}:{addr[1]}",
                        error=repr(exc),
                    )
                    await self._sleep_backoff(peer, attempt)
                    continue
            if ever_connected:
                peer.reconnects += 1
            ever_connected = True
            up_since = time.monotonic()
            peer.conn_lost = False
            peer.connected = True
            # While the peer keeps dropping us right after the handshake, log once, then quietly.
            quiet = short_lived_streak > 1
            (self._log.debug if quiet else self._log.info)(
                "raft.transport.connected",
                peer=peer.peer_id,
                addr=f"{addr[0]}:{addr[1]}",
                failed_attempts=attempt,
            )
            watcher = asyncio.get_running_loop().create_task(self._watch_outbound(reader, peer))
            try:
                await self._pump(peer, writer, challenge, dial_secret)
                reason = "stopped" if peer.removed or self._stopped else "closed_by_peer"
            except Exception as exc:  # the writer task must outlive any socket error
                reason = repr(exc)
            finally:
                peer.connected = False
                peer.sealer = None
                watcher.cancel()
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(0.5):
                        await writer.wait_closed()
            (self._log.debug if quiet else self._log.info)(
                "raft.transport.disconnected", peer=peer.peer_id, reason=reason
            )
            # A connection that was refused right after the handshake must not spin.
            if time.monotonic() - up_since >= self.backoff_max_s:
                attempt = short_lived_streak = 0
            else:
                attempt += 1
                short_lived_streak += 1
            await self._sleep_backoff(peer, attempt)

    def _connect_budget_s(self) -> float:
        """TCP connect, plus the TLS handshake when the peer port speaks TLS."""
        return self.connect_timeout_s + (self.handshake_timeout_s if self._tls else 0.0)

    async def _open(self, addr: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """One outbound connection: TCP, or mutual TLS under the cluster CA."""
        if self._tls is None:
            return await asyncio.open_connection(addr[0], addr[1])
        return await asyncio.open_connection(
            addr[0],
            addr[1],
            ssl=self._tls.client,
            server_hostname="",  # no SNI and no hostname check: the node id is (peer_tls)
            ssl_handshake_timeout=self.handshake_timeout_s,
        )

    def _dialed_right_peer(
        self, peer: _Peer, writer: asyncio.StreamWriter, addr: Address, quiet: bool = False
    ) -> bool:
        """Whether the node that answered at `addr` is, by its certificate, `peer`
        (logged when not: a warning, then quietly while the retries keep failing).

        Why: our frames go to whoever holds the address; a valid certificate of another
        node (a stale address after a move, a misrouted proxy) must not receive them.
        """
        named = cert_node_id(writer.get_extra_info("peercert"))
        if named == peer.peer_id:
            return True
        (self._log.debug if quiet else self._log.warning)(
            "raft.transport.peer_identity_mismatch",
            side="dial",
            peer=peer.peer_id,
            cert_ids=sorted(cert_node_ids(writer.get_extra_info("peercert"))),
            addr=f"{addr[0]}:{addr[1]}",
        )
        return False

    async def _sleep_backoff(self, peer: _Peer, attempt: int) -> None:
        if attempt == 0 or peer.addr_changed.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._backoff_s(attempt)):
                await peer.addr_changed.wait()

    async def _read_challenge(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes | None]:
        """The acceptor's challenge, the first frame on an outbound connection (secret set),
        and which of our secrets to sign with: the first one the acceptor holds."""
        body = await self._read_opening_frame(reader, "challenge_too_large")
        challenge, theirs = decode_challenge_keys(body)
        return challenge, pick_secret(self._secrets, theirs)

    async def _read_opening_frame(self, reader: asyncio.StreamReader, too_large: str) -> bytes:
        """The body of a connection's first frame (a challenge or a handshake), refused
        (`too_large`) past MAX_HANDSHAKE_BYTES before it is read, within the timeout."""
        async with asyncio.timeout(self.handshake_timeout_s):
            header = await reader.readexactly(FRAME_HEADER_BYTES)
            length = int.from_bytes(header, "big")
            if length > MAX_HANDSHAKE_BYTES:
                raise HandshakeRejected(too_large, f"length {length}")
            return await reader.readexactly(length)

    async def _pump(
        self,
        peer: _Peer,
        writer: asyncio.StreamWriter,
        challenge: bytes,
        secret: bytes | None = None,
    ) -> None:
        """Write the handshake (signed with `secret`, one of ours the acceptor holds), then
        every queued frame: one write + one drain per wake-up."""
        nonce = new_nonce() if secret is not None else b""
        writer.write(
            frame(
                encode_handshake(
                    self.cluster_id,
                    self.node_id,
                    peer.peer_id,
                    secret,
                    self._config_digest,
                    self.incarnation,
                    challenge,
                    nonce,
                )
            )
        )
        if secret is not None:
            peer.sealer = FrameSealer(
                session_key(secret, challenge, nonce),
                self.max_frame_bytes + FRAME_HEADER_BYTES,
            )
        peer.last_write_s = time.monotonic()
        await writer.drain()
        queue = peer.queue
        while True:
            if peer.conn_lost:
                return
            if queue:
                _write_queued(peer, writer)
                await writer.drain()
                continue
            peer.wake.clear()
            peer.idle_writer = writer
            try:
                async with asyncio.timeout(self.keepalive_s):
                    await peer.wake.wait()
            except TimeoutError:
                pass
            finally:
                peer.idle_writer = None
            # `flush` may have written meanwhile (a leader's heartbeats go that way)
            if not peer.wake.is_set() and time.monotonic() - peer.last_write_s >= self.keepalive_s:
                writer.write(_keepalive(peer))
                peer.last_write_s = time.monotonic()
                await writer.drain()

    async def _watch_outbound(self, reader: asyncio.StreamReader, peer: _Peer) -> None:
        """Notice the peer closing our outbound connection (it never sends us frames on it)."""
        try:
            while await reader.read(4096):
                pass  # nothing is expected here; ignore anything a future ack might carry
        except (OSError, ConnectionError):
            pass
        peer.conn_lost = True
        peer.wake.set()

    # ------------------------------------------------------------ receiving

    async def _serve_inbound(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopped:
            writer.close()
            return
        address, remote_s = peer_address(writer.get_extra_info("peername"))
        if not self.connection_cap.admit(address, remote_s):
            writer.close()  # before a byte is read, and before a challenge is made
            return
        self._inbound[task] = writer
        sender: int | None = None
        try:
            if self._tls is not None and not await self._accept_tls(writer, remote_s):
                self.rejected_connections += 1
                return
            accepted = await self._read_handshake(reader, writer, remote_s)
            if accepted is None:
                self.rejected_connections += 1
                return
            sender, incarnation, opener = accepted
            previous = self._inbound_by_peer.get(sender)
            if previous is not None:
                previous.close()  # a reconnect supersedes a possibly half-open old link
            self._inbound_by_peer[sender] = writer
            self._log.info("raft.transport.accepted", peer=sender, remote=remote_s)
            await self._read_frames(reader, sender, remote_s, incarnation, opener)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # nothing a peer sends may escape the transport
            self._log.error("raft.transport.inbound_failed", remote=remote_s, error=repr(exc))
        finally:
            if sender is not None and self._inbound_by_peer.get(sender) is writer:
                del self._inbound_by_peer[sender]
            self._inbound.pop(task, None)
            self.connection_cap.release(address)
            writer.close()

    async def _accept_tls(self, writer: asyncio.StreamWriter, remote_s: str) -> bool:
        """Upgrade an accepted connection to mutual TLS; False (logged) if the peer fails
        the handshake: plain TCP, no certificate, one from another CA, too slow."""
        assert self._tls is not None
        try:
            await writer.start_tls(self._tls.server, ssl_handshake_timeout=self.handshake_timeout_s)
        except (OSError, ConnectionError, TimeoutError, EOFError) as exc:  # ssl.SSLError too
            self._log.warning("raft.transport.tls_refused", remote=remote_s, error=repr(exc)[:200])
            return False
        return True

    async def _read_handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote_s: str
    ) -> tuple[int, str, FrameOpener | None] | None:
        """Send the challenge (secret set), read and check the handshake frame; (sender id,
        its incarnation, the opener of its sealed frames), or None (logged)."""
        challenge = b""
        try:
            if self._secret is not None:
                challenge = new_nonce()
                writer.write(frame(encode_challenge(challenge, self._key_ids)))
            body = await self._read_opening_frame(reader, "too_large")
            hs = decode_handshake(
                body,
                cluster=self.cluster_id,
                our_id=self.node_id,
                secret=self._secret,
                config=self._config_digest,
                challenge=challenge,
                also_accepted=self._secrets[1:],
            )
        except TimeoutError:
            self._reject("timeout", "", remote_s)
            return None
        except asyncio.IncompleteReadError:
            self._reject("truncated", "", remote_s)
            return None
        except HandshakeRejected as exc:
            self._reject(exc.reason, exc.detail, remote_s)
            return None
        except (OSError, ConnectionError) as exc:
            self._reject("connection_error", repr(exc), remote_s)
            return None
        if self._tls is not None:
            peercert = writer.get_extra_info("peercert")
            if cert_node_id(peercert) != hs.frm:
                self._log.warning(
                    "raft.transport.peer_identity_mismatch",
                    side="accept",
                    claimed=hs.frm,
                    cert_ids=sorted(cert_node_ids(peercert)),
                    remote=remote_s,
                )
                return None
        if hs.incarnation and self.peer_incarnations.get(hs.frm) != hs.incarnation:
            self._log.info(
                "raft.transport.peer_incarnation", peer=hs.frm, incarnation=hs.incarnation
            )
            self.peer_incarnations[hs.frm] = hs.incarnation
        opener = None
        if hs.secret is not None:
            opener = FrameOpener(session_key(hs.secret, challenge, hs.nonce), self.max_frame_bytes)
        return hs.frm, hs.incarnation, opener

    def _reject(self, reason: str, detail: str, remote_s: str) -> None:
        self._log.warning(
            "raft.transport.handshake_rejected", reason=reason, detail=detail, remote=remote_s
        )

    def _bad_frame(self, reason: str, detail: str, sender: int, remote_s: str) -> None:
        self.bad_frames += 1
        self._log.warning(
            "raft.transport.bad_frame", reason=reason, detail=detail, peer=sender, remote=remote_s
        )

    async def _read_frames(
        self,
        reader: asyncio.StreamReader,
        sender: int,
        remote_s: str,
        incarnation: str = "",
        opener: FrameOpener | None = None,
    ) -> None:
        """Deliver valid messages in order; the first violation closes the connection, and
        so does a newer incarnation of the sender (what a process that lost its disk said
        before must not count as said by the one that replaced it). With an `opener`
        (secret set) every frame is a seal whose tag is checked before anything in it is
        decoded."""
        decoder = FrameDecoder(
            self.max_frame_bytes if opener is None else sealed_frame_limit(self.max_frame_bytes)
        )
        node_id = self.node_id
        on_message = self._on_message
        with_incarnation = self._with_incarnation
        incarnations = self.peer_incarnations
        loop = asyncio.get_running_loop()
        frame_started = 0.0  # when the first byte of the frame now arriving came
        while True:
            pending = decoder.pending_bytes()
            deadline = loop.time() + self.idle_timeout_s
            if pending:
                due = frame_started + self.read_timeout_s
                deadline = min(
                    deadline, due + decoder.pending_frame_bytes() / MIN_FRAME_BYTES_PER_S
                )
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await reader.read(READ_CHUNK_BYTES)
            except TimeoutError:
                if pending:
                    took_s = loop.time() - frame_started
                    detail = f"{pending} bytes of a frame in {took_s:.1f}s, then no more in time"
                    self._bad_frame("slow_frame", detail, sender, remote_s)
                else:
                    self._log.info(
                        "raft.transport.idle_closed", peer=sender, idle_s=self.idle_timeout_s
                    )
                return
            except (OSError, ConnectionError) as exc:
                self._log.info("raft.transport.inbound_closed", peer=sender, reason=repr(exc))
                return
            if not chunk:
                if decoder.pending_bytes():
                    self._bad_frame(
                        "truncated_frame", f"{decoder.pending_bytes()} bytes", sender, remote_s
                    )
                else:
                    self._log.info("raft.transport.inbound_closed", peer=sender, reason="eof")
                return
            try:
                bodies = decoder.feed(chunk)
            except FrameError as exc:
                self._bad_frame(exc.reason, exc.detail, sender, remote_s)
                return
            if decoder.pending_bytes() and (bodies or not pending):
                frame_started = loop.time()  # a new frame began in this chunk
            bad_seal: FrameError | None = None
            if opener is not None:
                sealed, bodies = bodies, []
                for one in sealed:
                    try:
                        bodies.extend(opener.open(one))
                    except FrameError as exc:
                        bad_seal = exc  # deliver what came before it, then close
                        break
            for body in bodies:
                if not body:
                    continue  # a keep-alive (see _keepalive)
                try:
                    msg = decode_message(body)
                except InvalidMessage as exc:
                    self._bad_frame("invalid_message", str(exc)[:200], sender, remote_s)
                    return
                except Exception as exc:  # a decoder bug must not take the node down
                    self._bad_frame("invalid_message", repr(exc)[:200], sender, remote_s)
                    return
                if msg.frm != sender:
                    self._bad_frame("frm_mismatch", f"frm={msg.frm}", sender, remote_s)
                    return
                if msg.to != node_id:
                    self._bad_frame("to_mismatch", f"to={msg.to}", sender, remote_s)
                    return
                if incarnation and incarnations.get(sender, incarnation) != incarnation:
                    self._log.info(
                        "raft.transport.superseded",
                        peer=sender,
                        incarnation=incarnation,
                        by=incarnations.get(sender),
                    )
                    return
                self.received += 1
                try:
                    if with_incarnation:
                        on_message(msg, incarnation)
                    else:
                        on_message(msg)
                except Exception as exc:  # the receiver's bug, not the peer's: keep the link
                    self._log.error(
                        "raft.transport.on_message_failed", peer=sender, error=repr(exc)
                    )
            if bad_seal is not None:
                self._bad_frame(bad_seal.reason, bad_seal.detail, sender, remote_s)
                return
