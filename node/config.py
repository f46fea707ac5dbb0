"""Configuration of one raftq node: flags, an optional TOML file, and the enforced limits.

Why one dataclass: the API, the Raft driver and the launcher must agree on ids, addresses
and limits; parsing happens once, here, and everything else receives a frozen value.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from common.binwire import DEFAULT_PORT_OFFSET, SCHEME, TLS_SCHEME
from common.tokens import parse_token
from node.tls import TlsSettingsError, check_settings


class ConfigError(ValueError):
    """The node configuration is invalid; the message names the offending setting."""


@dataclass(frozen=True, slots=True)
class Peer:
    id: int
    http_url: str  # e.g. http://127.0.0.1:7001
    raft_host: str
    raft_port: int


MIN_ENTRY_BYTES = 64 << 10
MAX_ENTRY_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """Input limits enforced by the API before anything is proposed."""

    max_body_bytes: int = 16 << 20
    # One Raft entry (one request's encoded command) at most; requests over it get 413
    # before anything is proposed. The peer frame limit is derived from it, so every
    # accepted entry can be replicated. All members must use the same value.
    max_entry_bytes: int = 8 << 20
    max_message_bytes: int = 256 << 10  # ceiling; a queue may lower it
    max_batch: int = 1000
    max_receive: int = 1000
    max_wait_s: float = 20.0
    max_attributes: int = 32
    max_attribute_bytes: int = 1024
    max_json_depth: int = 32
    max_dedup_id_chars: int = 128
    # Connections one client address may hold open (the next is closed at once): on the
    # binary port, and on the HTTP port, where a connection carries one request at a time
    # (a client with 300 requests in flight holds 300) and a follower forwards over up to
    # 256 kept-alive connections; behind a proxy every client shares its address.
    max_connections_per_address: int = 256
    max_http_connections_per_address: int = 1024
    # A client port's connection with nothing on its way (no request being answered) for
    # this long is closed; the clients reconnect on their next request.
    idle_timeout_s: float = 300.0
    # Once a request has begun, its HTTP request line and headers, its body, or a binary
    # frame's payload must be in within this (a slow-loris client holds nothing longer).
    read_timeout_s: float = 30.0
    # Receives waiting (wait_s > 0) at once on this node; past it: 503 too_many_long_polls.
    max_long_polls: int = 1024
    # Request bodies read or being served at once over HTTP and the binary port; past it
    # HTTP answers 503 overloaded and the binary port stops reading (TCP pushes back).
    max_inflight_request_bytes: int = 64 << 20


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int
    http_host: str
    http_port: int
    raft_host: str
    raft_port: int
    peers: dict[int, Peer]
    data_dir: str
    cluster_id: str = "raftq"
    log_format: str = "json"  # json | console
    log_level: str = "info"
    fsync: bool = True
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    propose_timeout_s: float = 10.0
    # How long a follower waits for a leader to forward a request to (an election in
    # progress) before answering 503 no_leader.
    forward_wait_s: float = 3.0
    shutdown_grace_s: float = 5.0
    # The cluster's peer secret (read from `secret_file`, never given on the command line):
    # the peer handshake's challenge-response and the tag on every frame (raft/framing.py).
    secret: bytes | None = None
    secret_file: str | None = None
    # While the cluster's secret is rotated (docs/API.md): the previous secret, accepted
    # besides `secret` (and dialed with to peers that do not hold `secret` yet).
    previous_secret: bytes | None = None
    previous_secret_file: str | None = None
    # A node that joins a running cluster: the URL of any of its nodes. It asks to be added
    # (a learner, promoted once caught up) and learns the members from the answer; its
    # --peers is then only itself.
    join: str | None = None
    max_map_bytes: int = 1 << 40  # LMDB map ceiling: a small one simulates a full disk
    # Log compaction: once this many applied entries sit in the log, it is cut to the last
    # `snapshot_trailing` of them (0 turns compaction off); followers behind the cut get
    # the state machine as a snapshot, streamed in chunks.
    snapshot_entries: int = 10_000
    snapshot_trailing: int = 5_000
    # Past this many bytes of live LMDB pages, writes that add data get 507 (node/quota.py).
    # None: 90% of min(max_map_bytes, free disk + the data file), taken at start.
    quota_bytes: int | None = None
    # The binary client port (node/binary_api.py); None: not served. Default: the HTTP
    # host and port + 200 (node i: 7200+i).
    binary_host: str | None = None
    binary_port: int | None = None
    # Given explicitly (flag or TOML): failing to listen there stops the node. The default
    # address only logs `node.binary_unavailable`: the port HTTP + 200 was never asked for
    # and may be taken, and HTTP serves everything the binary port does.
    binary_required: bool = False
    # Client authentication (node/auth.py): bearer tokens and permissions on every route
    # but health and ready. Off only where every client port is loopback-only.
    auth: bool = True
    # The first start's admin token (rq1.USER.SECRET), read from `admin_token_file` or
    # the RAFTQ_ADMIN_TOKEN environment variable: the leader adds its user (every
    # permission on *) once per cluster; also what `--join` authenticates with.
    admin_token: str | None = None
    admin_token_file: str | None = None
    # TLS (node/tls.py, docs/API.md "TLS"): paths of PEM files, never their contents.
    # The client ports (HTTP, binary) serve TLS with tls_cert/tls_key, and with
    # tls_client_ca require client certificates; tls_ca is what this node trusts when it
    # calls other nodes' client ports; peer_* is mutual TLS on the peer port.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_ca: str | None = None
    peer_cert: str | None = None
    peer_key: str | None = None
    peer_ca: str | None = None
    limits: Limits = field(default_factory=Limits)

    @property
    def tls(self) -> bool:
        """Whether the client ports serve TLS (https://, raftqs://)."""
        return self.tls_cert is not None

    @property
    def peer_tls(self) -> bool:
        """Whether the peer port speaks mutual TLS."""
        return self.peer_cert is not None

    @property
    def http_url(self) -> str:
        return self.peers[self.node_id].http_url

    @property
    def binary_url(self) -> str | None:
        """`raftq://host:port` of this node's binary port (`raftqs://` over TLS), None when
        it serves none."""
        if self.binary_host is None or self.binary_port is None:
            return None
        host = f"[{self.binary_host}]" if ":" in self.binary_host else self.binary_host
        return f"{TLS_SCHEME if self.tls else SCHEME}://{host}:{self.binary_port}"

    def raft_peers(self) -> dict[int, tuple[str, int]]:
        return {p.id: (p.raft_host, p.raft_port) for p in self.peers.values()}


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_peers(text: str) -> dict[int, Peer]:
    """Parse `ID=HTTP_URL@RAFT_HOST:PORT,...` (the form API.md gives for `raftq node`)."""
    peers: dict[int, Peer] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        ident, sep, rest = item.partition("=")
        http_url, at, raft_addr = rest.rpartition("@")
        if not sep or not at or not ident.isdigit() or int(ident) <= 0:
            raise ConfigError(f"peer must be ID=HTTP_URL@RAFT_HOST:PORT with ID > 0, got {item!r}")
        if not http_url.startswith(("http://", "https://")):
            raise ConfigError(f"peer {ident}: HTTP URL must start with http:// or https://")
        host, port = parse_hostport(raft_addr, f"peer {ident} raft address")
        pid = int(ident)
        if pid in peers:
            raise ConfigError(f"peer id {pid} listed twice")
        peers[pid] = Peer(pid, http_url.rstrip("/"), host, port)
    return peers


def parse_binary(value: Any, http_host: str, http_port: int) -> tuple[str | None, int | None]:
    """The binary listen address: HOST:PORT, "off"/"0"/false (none), or absent (the HTTP
    host, HTTP port + 200)."""
    if value is None or value is True:
        port = http_port + DEFAULT_PORT_OFFSET
        if port > 65535:
            raise ConfigError(
                f"no default binary port for HTTP port {http_port}: give --binary HOST:PORT "
                "or --binary off"
            )
        return http_host, port
    if value is False or str(value).strip().lower() in ("off", "0", "none", ""):
        return None, None
    return parse_hostport(str(value), "--binary")


MIN_SECRET_BYTES = 16
#: The TLS settings (flags --tls-cert ..., TOML keys tls_cert ...): file paths (node/tls.py).
TLS_SETTINGS = (
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "tls_ca",
    "peer_cert",
    "peer_key",
    "peer_ca",
)


def _is_loopback(host: str) -> bool:
    """Only this machine can reach `host` (a test or `raftq up` cluster)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def read_secret_file(path: str) -> bytes:
    """The peer secret in `path`, without surrounding whitespace (a trailing newline from
    an editor or `echo` is not part of it); at least MIN_SECRET_BYTES."""
    try:
        with open(path, "rb") as fh:
            secret = fh.read(1 << 16).strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file {path}: {exc}") from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the secret in {path} has {len(secret)} bytes; use at least {MIN_SECRET_BYTES} "
            "(e.g. `head -c 32 /dev/urandom | base64 > FILE`)"
        )
    return secret


def read_admin_token(path: str | None) -> str | None:
    """The bootstrap admin token from `path`, else from RAFTQ_ADMIN_TOKEN, else None."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                token = fh.read(4096).strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the admin token file {path}: {exc}") from exc
        where = path
    else:
        token = os.environ.get("RAFTQ_ADMIN_TOKEN", "").strip()
        where = "RAFTQ_ADMIN_TOKEN"
        if not token:
            return None
    if parse_token(token) is None:
        raise ConfigError(
            f"{where} does not hold a raftq token (rq1.USER.SECRET); make one with "
            "`raftq token new admin`"
        )
    return token


def _auth_setting(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ConfigError(f"auth must be on or off, got {value!r}")


def build_config(values: dict[str, Any]) -> NodeConfig:
    """Validate raw settings (from flags or TOML) into a NodeConfig."""
    try:
        node_id = int(values["id"])
        http_host, http_port = parse_hostport(str(values["http"]), "--http")
        raft_host, raft_port = parse_hostport(str(values["raft"]), "--raft")
        data_dir = str(values["data_dir"])
    except KeyError as exc:
        raise ConfigError(f"missing required setting {exc.args[0]!r}") from None
    if node_id <= 0:
        raise ConfigError("id must be a positive integer")
    peers_raw = values.get("peers") or ""
    peers = (
        parse_peers(peers_raw) if isinstance(peers_raw, str) else parse_peers(",".join(peers_raw))
    )
    scheme = "https" if values.get("tls_cert") is not None else "http"
    me = Peer(node_id, f"{scheme}://{http_host}:{http_port}", raft_host, raft_port)
    if node_id in peers and not peers[node_id].http_url.startswith(scheme + "://"):
        raise ConfigError(
            f"--peers gives node {node_id} the URL {peers[node_id].http_url}, but it serves "
            f"{scheme}:// ({'with' if scheme == 'https' else 'without'} --tls-cert)"
        )
    if node_id in peers and (peers[node_id].raft_host, peers[node_id].raft_port) != (
        raft_host,
        raft_port,
    ):
        raise ConfigError(f"--peers gives node {node_id} a raft address different from --raft")
    peers.setdefault(node_id, me)
    limits_raw = values.get("limits") or {}
    known = {f.name for f in fields(Limits)}
    unknown = set(limits_raw) - known
    if unknown:
        raise ConfigError(f"unknown limits: {sorted(unknown)}")
    if values.get("max_entry_bytes") is not None:
        limits_raw = {**limits_raw, "max_entry_bytes": int(values["max_entry_bytes"])}
    binary_host, binary_port = parse_binary(values.get("binary"), http_host, http_port)
    cfg = NodeConfig(
        node_id=node_id,
        http_host=http_host,
        http_port=http_port,
        binary_host=binary_host,
        binary_port=binary_port,
        binary_required=values.get("binary") not in (None, True),
        raft_host=raft_host,
        raft_port=raft_port,
        peers=peers,
        data_dir=data_dir,
        limits=replace(Limits(), **limits_raw),
    )
    simple = {
        "cluster_id": str,
        "log_format": str,
        "log_level": str,
        "fsync": bool,
        "tick_ms": int,
        "election_ticks": int,
        "heartbeat_ticks": int,
        "propose_timeout_s": float,
        "forward_wait_s": float,
        "shutdown_grace_s": float,
        "secret_file": str,
        "previous_secret_file": str,
        "join": str,
        "max_map_bytes": int,
        "snapshot_entries": int,
        "snapshot_trailing": int,
        "quota_bytes": int,
        "admin_token_file": str,
        "auth": _auth_setting,
        **dict.fromkeys(TLS_SETTINGS, str),
    }
    if values.get("secret") is not None or values.get("previous_secret") is not None:
        raise ConfigError(
            "a peer secret is read from a file (secret_file / --secret-file), never given "
            "inline: command lines and config files are readable by others"
        )
    overrides = {k: conv(values[k]) for k, conv in simple.items() if values.get(k) is not None}
    cfg = replace(cfg, **overrides)
    try:
        check_settings(**{name: getattr(cfg, name) for name in TLS_SETTINGS})
    except TlsSettingsError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.previous_secret_file is not None:
        if cfg.secret_file is None:
            raise ConfigError(
                "--previous-secret-file is for rotating a secret: give the new one with "
                "--secret-file"
            )
        cfg = replace(cfg, previous_secret=read_secret_file(cfg.previous_secret_file))
    if cfg.secret_file is not None:
        cfg = replace(cfg, secret=read_secret_file(cfg.secret_file))
    elif not _is_loopback(cfg.raft_host) and not cfg.peer_tls:
        raise ConfigError(
            f"the peer port listens on {cfg.raft_host}, beyond this machine: give every node "
            "the same --secret-file (e.g. `head -c 32 /dev/urandom | base64 > FILE`), or "
            "mutual TLS (--peer-cert, --peer-key, --peer-ca), or anyone who reaches that "
            "port can speak Raft to this node"
        )
    cfg = replace(cfg, admin_token=read_admin_token(cfg.admin_token_file))
    if not cfg.auth and not all(
        _is_loopback(h) for h in (cfg.http_host, cfg.binary_host) if h is not None
    ):
        raise ConfigError(
            "--auth off is only for a node whose client ports listen on loopback: on "
            f"{cfg.http_host} anyone who reaches the port could send, receive and delete"
        )
    if cfg.log_format not in ("json", "console"):
        raise ConfigError("log_format must be json or console")
    if cfg.tick_ms <= 0 or cfg.election_ticks <= cfg.heartbeat_ticks:
        raise ConfigError("need tick_ms > 0 and election_ticks > heartbeat_ticks")
    if cfg.join is not None:
        if not cfg.join.startswith(("http://", "https://")):
            raise ConfigError(f"--join must be an http(s) URL of a cluster node, got {cfg.join!r}")
        if set(cfg.peers) != {cfg.node_id}:
            raise ConfigError("a node that joins takes no --peers: it learns them from the cluster")
    if cfg.snapshot_entries < 0 or cfg.snapshot_trailing < 0:
        raise ConfigError("snapshot_entries and snapshot_trailing must be >= 0")
    if cfg.quota_bytes is not None and cfg.quota_bytes <= 0:
        raise ConfigError(f"quota_bytes must be positive, got {cfg.quota_bytes}")
    _check_connection_limits(cfg.limits)
    if not MIN_ENTRY_BYTES <= cfg.limits.max_entry_bytes <= MAX_ENTRY_BYTES:
        raise ConfigError(
            f"max_entry_bytes must be between {MIN_ENTRY_BYTES} and {MAX_ENTRY_BYTES}, "
            f"got {cfg.limits.max_entry_bytes}"
        )
    return cfg


_POSITIVE_LIMITS = (
    "max_connections_per_address",
    "max_http_connections_per_address",
    "idle_timeout_s",
    "read_timeout_s",
    "max_long_polls",
    "max_inflight_request_bytes",
)


def _check_connection_limits(limits: Limits) -> None:
    """The client ports' limits are positive numbers, and one largest body fits the
    in-flight budget (else such a request could never be served)."""
    for name in _POSITIVE_LIMITS:
        value = getattr(limits, name)
        if type(value) not in (int, float) or value <= 0:
            raise ConfigError(f"limits.{name} must be a positive number, got {value!r}")
    if limits.max_inflight_request_bytes < limits.max_body_bytes:
        raise ConfigError(
            f"limits.max_inflight_request_bytes ({limits.max_inflight_request_bytes}) must be "
            f"at least max_body_bytes ({limits.max_body_bytes})"
        )


def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raftq node", description="Run one raftq node.", allow_abbrev=False
    )
    p.add_argument("--config", help="TOML file; flags override its values")
    p.add_argument("--id", type=int)
    p.add_argument("--http", help="HOST:PORT for the HTTP API")
    p.add_argument("--raft", help="HOST:PORT for Raft peer traffic")
    p.add_argument(
        "--binary",
        help="HOST:PORT for the binary client protocol (raftq:// URLs); default: the HTTP "
        "host and HTTP port + 200; 'off' serves none",
    )
    p.add_argument("--peers", help="ID=HTTP_URL@RAFT_HOST:PORT,... (all members)")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--cluster-id", dest="cluster_id")
    p.add_argument("--log-format", dest="log_format", choices=["json", "console"])
    p.add_argument("--log-level", dest="log_level")
    p.add_argument(
        "--unsafe-no-fsync",
        dest="fsync",
        action="store_false",
        default=None,
        help="benchmarks only: skip fsync, so an acknowledged write can be lost on power failure",
    )
    p.add_argument("--tick-ms", dest="tick_ms", type=int)
    p.add_argument("--election-ticks", dest="election_ticks", type=int)
    p.add_argument(
        "--snapshot-entries",
        dest="snapshot_entries",
        type=int,
        help="compact the log once this many applied entries sit in it (default 10000; 0: never)",
    )
    p.add_argument(
        "--snapshot-trailing",
        dest="snapshot_trailing",
        type=int,
        help="applied entries kept after a compaction for followers a little behind (default 5000)",
    )
    p.add_argument(
        "--max-entry-bytes",
        dest="max_entry_bytes",
        type=int,
        help="largest Raft entry (one request's command); larger requests get 413",
    )
    p.add_argument(
        "--secret-file",
        dest="secret_file",
        help="file holding the cluster's peer secret (at least 16 bytes; the same on every "
        "node): peers prove they hold it and every frame between them is authenticated. "
        "Without it the peer port accepts anyone who can reach it",
    )
    p.add_argument(
        "--auth",
        choices=["on", "off"],
        help="client authentication (default on): bearer tokens and permissions on every "
        "route but /v1/health and /v1/ready; off only when the client ports are loopback",
    )
    p.add_argument(
        "--admin-token-file",
        dest="admin_token_file",
        help="file holding the first start's admin token (rq1.USER.SECRET; make one with "
        "`raftq token new admin`); default: the RAFTQ_ADMIN_TOKEN environment variable",
    )
    p.add_argument(
        "--previous-secret-file",
        dest="previous_secret_file",
        help="while rotating the peer secret: the file of the secret being replaced, "
        "accepted besides --secret-file's (restart every node with both, then every node "
        "with only the new --secret-file)",
    )
    tls = p.add_argument_group(
        "TLS", "PEM file paths (docs/API.md, TLS); the client ports and the peer port apart"
    )
    tls.add_argument(
        "--tls-cert",
        dest="tls_cert",
        metavar="FILE",
        help="certificate (chain) the HTTP and binary client ports serve: https://, raftqs://",
    )
    tls.add_argument("--tls-key", dest="tls_key", metavar="FILE", help="its private key")
    tls.add_argument(
        "--tls-client-ca",
        dest="tls_client_ca",
        metavar="FILE",
        help="require client certificates signed by this CA bundle on the client ports",
    )
    tls.add_argument(
        "--tls-ca",
        dest="tls_ca",
        metavar="FILE",
        help="CA bundle this node trusts when it calls other nodes' client ports (forwarding "
        "to the leader, --join); default: the system's",
    )
    tls.add_argument(
        "--peer-cert",
        dest="peer_cert",
        metavar="FILE",
        help="mutual TLS on the peer port: this node's certificate, naming it by the DNS "
        "SAN raftq-node-<id>; with --peer-key and --peer-ca",
    )
    tls.add_argument("--peer-key", dest="peer_key", metavar="FILE", help="its private key")
    tls.add_argument(
        "--peer-ca", dest="peer_ca", metavar="FILE", help="the cluster CA of peer certificates"
    )
    p.add_argument(
        "--join",
        help="URL of a node of a running cluster: ask it to add this node (a learner, then a "
        "voter once caught up); no --peers needed",
    )
    p.add_argument(
        "--max-map-bytes", dest="max_map_bytes", type=int, help="LMDB size ceiling (default 1 TiB)"
    )
    p.add_argument(
        "--quota-bytes",
        dest="quota_bytes",
        type=int,
        help="disk quota: once this node's data (LMDB's live pages) reaches it, writes that "
        "add data (sends, new queues, producer inits) get 507 insufficient_storage while "
        "receives, acks, deletes and purges still work; the alarm clears below 95%% of it. "
        "Default: 90%% of the smaller of --max-map-bytes and the disk space this node has "
        "at start (free space plus its data file)",
    )
    return p


def load_config(argv: list[str] | None = None) -> NodeConfig:
    args = argument_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, "rb") as fh:
                values.update(tomllib.load(fh))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {args.config}: {exc}") from exc
        values = {k.replace("-", "_"): v for k, v in values.items()}
        if "fsync" in values:
            # A config file is what a deployment runs with: durability is not optional
            # there. Benchmarks turn fsync off with the flag whose name says what it costs.
            raise ConfigError(
                f"{args.config}: fsync cannot be set in a config file; without fsync an "
                "acknowledged write can be lost on power failure (benchmarks only: "
                "--unsafe-no-fsync)"
            )
    for k, v in vars(args).items():
        if k != "config" and v is not None:
            values[k] = v
    return build_config(values)
