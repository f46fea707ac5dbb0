"""The chaos cluster: N raftq nodes whose peer and client traffic flows through the fault proxy.

Why a LocalCluster subclass: process handling (start, kill -9, SIGTERM, PIDs, logs) is the
launcher's job; this class only changes how each node is wired. Node *i* gets its own
`--peers` string in which every other node *j* is reached through the proxy `peer-i-j`
(Raft links are one-way, so disabling that proxy cuts exactly i→j), and clients reach node
*j* through `client-j`. Per-node environment (failpoints) and extra flags (a tiny LMDB map)
are applied at the next start of that node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chaos import proxy
from cluster.launcher import LocalCluster, free_ports

if TYPE_CHECKING:  # toxiproxy-python is optional: imported when a run starts its proxy
    from chaos.proxy_client import ToxiproxyClient

TICK_MS = 50
ELECTION_TICKS = 10
ELECTION_TIMEOUT_S = TICK_MS * ELECTION_TICKS / 1000.0


class ProxyStartError(RuntimeError):
    """The fault proxy process did not come up."""


def peer_proxy(src: int, dst: int) -> str:
    return f"peer-{src}-{dst}"


def client_proxy(node: int) -> str:
    return f"client-{node}"


class ChaosCluster(LocalCluster):
    """LocalCluster whose peer and client traffic flows through one proxy per directed link."""

    def __init__(
        self,
        nodes: int,
        workdir: Path,
        toxiproxy_url: str | None = None,
        proxy_seed: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        # Every port this cluster will listen on (nodes, one proxy per directed peer link, one
        # per client link, the proxy's control port) comes from ONE free_ports call: they are
        # bound together, so distinct. A proxy asking for port 0 later could otherwise be
        # handed a node's port after free_ports released it (seen: a node failing to bind).
        n_links = nodes * (nodes - 1) + nodes
        ports = free_ports(2 * nodes + n_links + 1)
        self._proxy_ports = list(ports[2 * nodes :])
        super().__init__(
            nodes=nodes,
            data_dir=workdir / "data",
            http_port=ports[:nodes],
            raft_port=ports[nodes : 2 * nodes],
            log_dir=workdir / "logs",
            extra_args=(
                "--log-format",
                "json",
                "--tick-ms",
                str(TICK_MS),
                "--election-ticks",
                str(ELECTION_TICKS),
                *extra_args,
            ),
            stop_grace_s=8.0,
        )
        self.workdir = workdir
        self.proxy_seed = proxy_seed
        self._external_proxy = toxiproxy_url is not None
        self.toxiproxy_url = toxiproxy_url
        self._proxy_proc: subprocess.Popen[bytes] | None = None
        self.toxi: ToxiproxyClient | None = None
        self.peer_listen: dict[tuple[int, int], str] = {}
        self.client_listen: dict[int, str] = {}
        self.node_env: dict[int, dict[str, str]] = {}
        self.node_args: dict[int, list[str]] = {}
        self.paused: set[int] = set()

    # --- wiring --------------------------------------------------------------------------

    def peers_for(self, node_id: int) -> str:
        """`--peers` for one node: itself at its real raft address, the others via proxies."""
        items = []
        for s in self.specs.values():
            addr = s.raft_addr if s.id == node_id else self.peer_listen[(node_id, s.id)]
            items.append(f"{s.id}={s.url}@{addr}")
        return ",".join(items)

    def command(self, node_id: int) -> list[str]:
        argv = super().command(node_id)
        argv[argv.index("--peers") + 1] = self.peers_for(node_id)
        argv += self.node_args.get(node_id, [])
        env = self.node_env.get(node_id)
        if env:  # `env` execs the node: the PID we track stays the node's own
            return ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *argv]
        return argv

    @property
    def client_urls(self) -> dict[int, str]:
        return {i: f"http://{addr}" for i, addr in self.client_listen.items()}

    @property
    def real_urls(self) -> dict[str, int]:
        return {s.url: s.id for s in self.specs.values()}

    # --- proxy ---------------------------------------------------------------------------

    async def start_proxy(self) -> None:
        # Here, not at the top: `raftq chaos --list` and `chaos proxy` work without the
        # chaos extra, and the CLI checks for it before a run (chaos.optional.TOXIPROXY).
        from chaos.proxy_client import ToxiproxyClient

        if self.toxiproxy_url is None:
            port = self._proxy_ports.pop()
            self.toxiproxy_url = f"http://127.0.0.1:{port}"
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / "proxy.log", "ab") as fh:
                self._proxy_proc = subprocess.Popen(
                    proxy.process_command(port, self.proxy_seed),
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self.toxi = ToxiproxyClient(self.toxiproxy_url)
        deadline = time.monotonic() + 15.0
        while True:
            if self._proxy_proc is not None and self._proxy_proc.poll() is not None:
                raise ProxyStartError(f"fault proxy exited; see {self.log_dir / 'proxy.log'}")
            try:
                await self.toxi.version()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise ProxyStartError("fault proxy did not answer in 15 s") from None
                await asyncio.sleep(0.1)
        if self._external_proxy:
            await self.toxi.reset()
        for i in self.ids:
            for j in self.ids:
                if i != j:
                    p = await self.toxi.create_proxy(
                        peer_proxy(i, j), self.specs[j].raft_addr, listen=self._proxy_listen()
                    )
                    self.peer_listen[(i, j)] = p.listen
            p = await self.toxi.create_proxy(
                client_proxy(i),
                f"127.0.0.1:{self.specs[i].http_port}",
                listen=self._proxy_listen(),
            )
            self.client_listen[i] = p.listen

    def _proxy_listen(self) -> str:
        """A pre-reserved port for the next proxy; port 0 once they are used up (restarts)."""
        return f"127.0.0.1:{self._proxy_ports.pop() if self._proxy_ports else 0}"

    def stop_proxy(self) -> None:
        if self._proxy_proc is not None and self._proxy_proc.poll() is None:
            self._proxy_proc.send_signal(signal.SIGTERM)
            try:
                self._proxy_proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proxy_proc.kill()
                self._proxy_proc.wait()

    async def delete_proxies(self) -> None:
        """On an external Toxiproxy: remove what we created (ours dies with its process)."""
        if self.toxi is None or not self._external_proxy:
            return
        names = [peer_proxy(i, j) for (i, j) in self.peer_listen] + [
            client_proxy(i) for i in self.client_listen
        ]
        for name in names:
            with contextlib.suppress(Exception):
                await self.toxi.delete_proxy(name)

    # --- async process control (the launcher blocks: run it off the loop) ----------------

    async def astart_node(self, node_id: int) -> None:
        self.paused.discard(node_id)
        await asyncio.to_thread(self.start_node, node_id)

    async def akill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        if sig == signal.SIGKILL:
            self.paused.discard(node_id)
        await asyncio.to_thread(self.kill, node_id, sig)

    async def astop(self, node_id: int) -> None:
        self.paused.discard(node_id)
        await asyncio.to_thread(self.stop, node_id)

    def pid(self, node_id: int) -> int | None:
        return self.pids.get(node_id)

    def shutdown(self) -> None:
        for i in list(self.paused):
            pid = self.pid(i)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        self.paused.clear()
        self.stop_all(grace_s=5.0)
        self.stop_proxy()
