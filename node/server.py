"""One node's server: LMDB env + Raft log + queue state machine + driver + HTTP API, wired.

Why this shape: one LMDB environment per node holds both the Raft log and the state, so a
batch's state changes and `applied_index` commit together; the driver owns Raft, the
queue service owns proposals and wakeups, the API owns HTTP. This module wires them and owns the
process lifecycle (graceful SIGTERM: stop accepting, finish in-flight requests, hand
leadership over, close LMDB).
"""

from __future__ import annotations

import asyncio
import os
import signal
import zlib
from dataclasses import replace

import structlog
from aiohttp import web

from node.api import build_app
from node.auth import ALL_PERMISSIONS, credential_for, parse_token
from node.binary_api import BinaryApi
from node.config import NodeConfig
from node.data_dir import DIR_MODE, DataDir, DataDirError
from node.http_limits import HttpLimits, LimitedSite
from node.logging import bind_raft_state
from node.membership import join_cluster
from node.metrics import Metrics, PortFigures
from node.queue_service import QueueService
from node.quota import DiskGuardedEnv, disk_full_cause, node_quota
from node.receipt_key import propose_receipt_key
from node.request_budget import ByteBudget
from node.state.messages import receipt_key_from
from node.state_machine import QueueStateMachine
from node.tls import client_port_context, outgoing_context, peer_tls
from raft.core import SizeLimits
from raft.driver import RaftNode
from raft.errors import StorageCorruption, StorageError
from raft.lmdb_storage import LmdbStorage
from raft.messages import Member, Role

log = structlog.get_logger("node.server")


class NodeServer:
    """Everything one node runs, opened in order; `start()` serves, `stop()` shuts down."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        if not config.fsync:
            log.warning(
                "node.unsafe_no_fsync",
                detail="fsync is off (benchmarks only): acknowledged writes can be lost",
            )
        # Lock and identity before LMDB: LMDB itself lets a second process in, and
        # whatever it opens, it may write to. Raises DataDirError: the node must not start.
        self.data_dir = DataDir(
            config.data_dir, cluster_id=config.cluster_id, node_id=config.node_id
        )
        self.data_dir.open()
        try:
            self.env = DiskGuardedEnv(
                self.data_dir.lmdb_path,
                sync=config.fsync,
                map_size=min(64 << 20, config.max_map_bytes),
                max_map_size=config.max_map_bytes,
                mode=DIR_MODE,  # data.mdb and lock.mdb owner-only (0o600)
            )
        except BaseException:
            self.data_dir.close()
            raise
        try:
            self.storage = self._open_storage()
            self.data_dir.save_identity()
        except BaseException:
            self.env.close()
            self.data_dir.close()
            raise
        self.incarnation = self.data_dir.identity.incarnation
        self.sm = QueueStateMachine(self.env, receipt_key=receipt_key_from(config.secret))
        self.metrics = Metrics()
        self.raft = RaftNode(
            config.node_id,
            config.raft_peers(),
            self.storage,
            self.sm,
            cluster_id=config.cluster_id,
            shared_txn=True,  # the log and the queue state share one LMDB env
            tick_ms=config.tick_ms,
            election_ticks=config.election_ticks,
            heartbeat_ticks=config.heartbeat_ticks,
            listen=(config.raft_host, config.raft_port),
            on_role_change=self._on_role_change,
            snapshot_dir=os.path.join(config.data_dir, "snapshots"),
            snapshot_entries=config.snapshot_entries,
            snapshot_trailing=config.snapshot_trailing,
            # Python decodes and encodes each entry: a 1 MiB append (thousands of small
            # entries) held the event loop long enough to miss heartbeats while catching a
            # follower up after a partition healed (chaos bridge scenario). Smaller appends
            # keep every step short; the in-flight window still pipelines them.
            size_limits=SizeLimits(
                max_msg_bytes=128 << 10,
                max_inflight_bytes=8 << 20,
                max_entry_bytes=config.limits.max_entry_bytes,
            ),
            secret=config.secret,
            previous_secret=config.previous_secret,
            peer_tls=peer_tls(config.peer_cert, config.peer_key, config.peer_ca),
            members=[
                Member(p.id, p.http_url, f"{p.raft_host}:{p.raft_port}")
                for p in config.peers.values()
            ],
            bootstrap=config.join is None,
            incarnation=self.incarnation,
        )
        self.quota = node_quota(self.env, config.quota_bytes, config.max_map_bytes)
        self.service = QueueService(config, self.raft, self.sm, self.metrics, self.quota)
        self.app = build_app(self.service, self)
        # TLS on the client ports (None: plain TCP); node/tls.py
        self.client_ssl = client_port_context(config.tls_cert, config.tls_key, config.tls_client_ca)
        limits = config.limits
        # One budget of request bytes in flight for both client ports (node/request_budget.py).
        self.request_budget = ByteBudget(limits.max_inflight_request_bytes)
        self.http_limits = HttpLimits(
            self.request_budget,
            max_connections_per_address=limits.max_http_connections_per_address,
            read_timeout_s=limits.read_timeout_s,
            max_body_bytes=limits.max_body_bytes,
        )
        self.app.middlewares.insert(0, self.http_limits.middleware)  # outermost
        self.service.port_figures = self._port_figures
        self._runner: web.AppRunner | None = None
        self._bootstrap: asyncio.Future[None] | None = None
        self._site: LimitedSite | None = None
        self.binary: BinaryApi | None = None
        if config.binary_host is not None and config.binary_port is not None:
            self.binary = BinaryApi(
                self.app,
                config.binary_host,
                config.binary_port,
                limits.max_body_bytes,
                leader_wait_s=config.forward_wait_s,
                ssl_context=self.client_ssl,
                max_connections_per_address=limits.max_connections_per_address,
                idle_timeout_s=limits.idle_timeout_s,
                read_timeout_s=limits.read_timeout_s,
                budget=self.request_budget,
            )
        self._last_leader: int | None = None

    def _port_figures(self) -> PortFigures:
        """What the client ports' limits refused and hold now, for /metrics."""
        return PortFigures(
            http_connections_refused=self.http_limits.cap.refused,
            binary_connections_refused=self.binary.refused_connections if self.binary else 0,
            http_slow_requests=self.http_limits.slow_requests,
            request_bytes_in_flight=self.request_budget.used_bytes,
            request_bytes_refused=self.request_budget.refused,
        )

    def _open_storage(self) -> LmdbStorage:
        """The Raft log, which also records (and checks) the cluster and node id in LMDB.

        That record is what still catches another node's `lmdb/` when IDENTITY is missing
        (adopting a dir an older raftq made) or was copied from elsewhere; a corrupt log
        stays a StorageCorruption (its own repair story), the rest is a refused dir.
        """
        try:
            return LmdbStorage(
                self.env, cluster_id=self.config.cluster_id, node_id=self.config.node_id
            )
        except StorageCorruption:
            raise
        except StorageError as exc:
            raise DataDirError(str(exc)) from exc

    async def _join(self) -> None:
        """Ask the cluster at --join to add this node (a learner, promoted once caught up),
        and learn from the answer how to reach the members before Raft starts.

        Only on a fresh data dir: a node that joined before finds its configuration in its
        own log. Retried until the cluster answers (it may be electing a leader).
        """
        cfg = self.config
        body = {
            "id": cfg.node_id,
            "url": cfg.http_url,
            "raft_addr": f"{cfg.raft_host}:{cfg.raft_port}",
            "voter": True,
            "incarnation": self.incarnation,
        }
        answer = await join_cluster(
            cfg.join or "",
            body,
            deadline_s=cfg.propose_timeout_s * 6,
            ssl_context=outgoing_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca),
            token=cfg.admin_token,
        )
        for member in answer.get("members", []):
            mid, raft_addr = member.get("id"), member.get("raft_addr") or ""
            host, _, port = raft_addr.rpartition(":")
            if isinstance(mid, int) and mid != cfg.node_id and host and port.isdigit():
                self.raft.peers[mid] = (host.strip("[]"), int(port))
        log.info("node.joined", via=cfg.join, members=sorted(self.raft.peers))

    def _on_role_change(self, role: Role, term: int, leader_id: int) -> None:
        bind_raft_state(term, role.label)
        if role == Role.LEADER:  # first, before the requests waiting for a leader wake
            propose_receipt_key(self.raft, self.sm, self.service.stamp_ms)
        if leader_id != self._last_leader:
            self._last_leader = leader_id
            self.metrics.leader_changes += 1
            self.service.wake_all()

    def committed_log(self, lo: int, hi: int | None, limit: int) -> list[list[int]]:
        commit = self.raft.status().commit
        first = self.storage.first_index()
        lo = max(lo, first)
        # The commit index may run ahead of this node's durable log (a leader commits on a
        # follower quorum while its own fsync is in flight): report only stored entries.
        hi = min(hi or commit, commit, self.storage.last_index(), lo + limit - 1)
        if hi < lo:
            return []
        return [
            [e.index, e.term, zlib.crc32(e.data) ^ (int(e.kind) << 1)]
            for e in self.storage.entries(lo, hi + 1)
        ]

    async def start(self) -> None:
        if self.config.join is not None and self.storage.last_index() == 0:
            await self._join()
        await self.raft.start()
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self.config.shutdown_grace_s,
            # aiohttp closes a connection idle this long; never one whose answer is on its way
            keepalive_timeout=self.config.limits.idle_timeout_s,
        )
        await self._runner.setup()
        self._site = LimitedSite(
            self._runner,
            self.config.http_host,
            self.config.http_port,
            self.http_limits,
            reuse_address=True,
            ssl_context=self.client_ssl,
        )
        await self._site.start()
        await self._start_binary()
        self.service.start()
        self._warn_about_auth()
        if self.config.auth and self.config.admin_token is not None:
            self._bootstrap = asyncio.ensure_future(self._bootstrap_admin())
        log.info(
            "node.started",
            http=self.config.http_url,
            binary=self.config.binary_url,
            raft=f"{self.config.raft_host}:{self.config.raft_port}",
            data_dir=self.data_dir.path,
            incarnation=self.incarnation,
            peer_auth=self.config.secret is not None,
            peer_secret_rotating=self.config.previous_secret is not None,
            peer_tls=self.config.peer_tls,
            client_tls=self.config.tls,
            client_certs_required=self.config.tls_client_ca is not None,
        )
        if self.config.secret is None and not self.config.peer_tls:
            log.warning(
                "node.peer_port_unauthenticated",
                raft=f"{self.config.raft_host}:{self.config.raft_port}",
                detail="no --secret-file and no peer TLS: anyone who reaches the peer port "
                "can speak Raft to this node; give every node the same secret file (raftq up "
                "does), or --peer-cert/--peer-key/--peer-ca",
            )

    def _warn_about_auth(self) -> None:
        if not self.config.auth:
            log.warning(
                "node.client_auth_off",
                http=self.config.http_url,
                detail="AUTH IS OFF (--auth off): every client of this node may send, "
                "receive, delete queues and change the cluster; loopback only",
            )
        elif self.config.admin_token is None and not self.service.sm.list_users():
            log.warning(
                "node.no_users",
                detail="auth is on and there are no users yet: give a node "
                "--admin-token-file (make one with `raftq token new admin`) to add the first",
            )

    async def _bootstrap_admin(self) -> None:
        """Add the first start's admin user (the --admin-token-file's) once per cluster.

        Every node given the token runs this; whichever leads proposes, and the state
        machine adds the user only if no bootstrap was applied before (node/state/users.py),
        so two nodes racing, or a node restarted later with the same file, change nothing.
        """
        token = self.config.admin_token
        parsed = parse_token(token or "")
        if parsed is None:
            return
        credential: dict[str, object] | None = None
        while not self.service.closing:
            if self.service.sm.users_bootstrapped():
                return
            if self.service.raft.is_leader:
                if credential is None:
                    credential = await asyncio.to_thread(credential_for, token or "")
                try:
                    result = await self.service.propose(
                        "user_add",
                        name=parsed[0],
                        bootstrap=True,
                        permissions=ALL_PERMISSIONS,
                        **credential,
                    )
                except Exception as exc:  # not leader any more, a timeout: try again
                    log.info("node.admin_bootstrap_retry", error=repr(exc))
                else:
                    log.info("node.admin_bootstrap", user=parsed[0], added=result.get("added"))
                    return
            await asyncio.sleep(0.5)

    async def _start_binary(self) -> None:
        """Listen on the binary port; if only the default address was not free, go on
        without it (HTTP serves every command too) and say so in the log and in
        `/v1/cluster` (`binary_url` null)."""
        if self.binary is None:
            return
        try:
            await self.binary.start()
        except OSError as exc:
            if self.config.binary_required:
                raise
            log.warning(
                "node.binary_unavailable",
                addr=f"{self.binary.host}:{self.binary.port}",
                error=str(exc),
                detail="default binary port not free; serving HTTP only (--binary to choose)",
            )
            self.binary = None
            self.config = replace(self.config, binary_host=None, binary_port=None)
            self.service.config = self.config
            return

    async def stop(self) -> None:
        """Graceful stop: no new requests, in-flight ones finish, leadership moves, LMDB closes."""
        log.info("node.stopping")
        if self._bootstrap is not None:
            self._bootstrap.cancel()
        self.service.closing = True
        self.service.wake_all()
        stopping = []
        if self.binary is not None:  # likewise: no new frames, in-flight ones finish
            stopping.append(self.binary.close(self.config.shutdown_grace_s))
        if self._runner is not None:
            stopping.append(self._runner.cleanup())  # stops listening, waits for in-flight
        await asyncio.gather(*stopping)
        await self.service.stop()
        await self.raft.stop(transfer=True)
        self.env.close()
        self.data_dir.close()  # only now may another process open the dir
        log.info("node.stopped")


async def run_node(config: NodeConfig) -> int:
    """Serve until SIGTERM/SIGINT (exit 0) or until the Raft driver fails (exit 1).

    A node whose storage failed must not keep answering: it could no longer persist, so
    it exits and lets its supervisor (or the operator) restart it after repair. A data dir
    the node must not use (locked by another process, another node's or cluster's) stops
    it before it opened anything: the reason is logged as one critical event (what
    `raftq up` shows) and DataDirError propagates to `python -m node`, which exits with
    EXIT_DATA_DIR_REFUSED.
    """
    try:
        node = NodeServer(config)
    except DataDirError as exc:
        log.critical("node.data_dir_refused", data_dir=config.data_dir, error=str(exc))
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    stopped = loop.create_task(stop.wait())
    driver_done = loop.create_task(node.raft.wait_closed())
    try:
        await asyncio.wait({stopped, driver_done}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        failure = node.raft.failure
        if failure is not None and disk_full_cause(failure) is None:
            log.critical("node.raft_failed", error=repr(failure))
        # (a full disk was said once, clearly, by node.disk_full: nothing to add)
        stopped.cancel()
        await node.stop()
        driver_done.cancel()
    return 1 if failure is not None else 0


def main_with(config: NodeConfig) -> int:
    return asyncio.run(run_node(config))
