"""`DemoCluster`: N demo node processes (`python -m benchmarks.demo.node`) on loopback.

For the Raft integration test and `benchmarks.raft_bench`: it picks free ports, starts and
kills nodes by PID (kill -9 by default, so a test can crash one), and connects control
clients to them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from benchmarks.demo.control_client import ControlClient, ControlError
from cluster.launcher import free_ports


class DemoCluster:
    """N demo node processes on loopback (tests and benchmark); stop() kills them by PID."""

    def __init__(
        self,
        root: str,
        size: int = 3,
        *,
        fsync: bool = True,
        tick_ms: int = 50,
        election_ticks: int = 10,
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.extra_args = tuple(extra_args)
        self.size = size
        ports = free_ports(2 * size)
        self.raft_addrs = {i + 1: ("127.0.0.1", ports[i]) for i in range(size)}
        self.control_addrs = {i + 1: ("127.0.0.1", ports[size + i]) for i in range(size)}
        self.fsync = fsync
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.log_level = log_level
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def command(self, node_id: int) -> list[str]:
        peers = ",".join(f"{i}={h}:{p}" for i, (h, p) in sorted(self.raft_addrs.items()))
        host, port = self.raft_addrs[node_id]
        chost, cport = self.control_addrs[node_id]
        cmd = [
            sys.executable,
            "-P",  # not the caller's cwd first on sys.path
            "-m",
            "benchmarks.demo.node",
            "--id",
            str(node_id),
            "--raft",
            f"{host}:{port}",
            "--peers",
            peers,
            "--data-dir",
            os.path.join(self.root, f"n{node_id}"),
            "--control",
            f"{chost}:{cport}",
            "--tick-ms",
            str(self.tick_ms),
            "--election-ticks",
            str(self.election_ticks),
            "--log-level",
            self.log_level,
        ]
        if not self.fsync:
            cmd.append("--no-fsync")
        cmd.extend(self.extra_args)
        return cmd

    def start_node(self, node_id: int, env: dict[str, str] | None = None) -> None:
        """Start one node; `env` adds variables (e.g. RAFTQ_FAILPOINT) to its environment."""
        os.makedirs(self.root, exist_ok=True)
        proc_env = {**os.environ, **(env or {})}
        with open(os.path.join(self.root, f"n{node_id}.log"), "ab") as log_file:
            self.procs[node_id] = subprocess.Popen(
                self.command(node_id), stdout=log_file, stderr=log_file, env=proc_env
            )

    async def wait_exit(self, node_id: int, timeout_s: float) -> int:
        """Wait (without blocking the loop) for a node to exit on its own; its exit code."""
        proc = self.procs[node_id]
        async with asyncio.timeout(timeout_s):
            while proc.poll() is None:
                await asyncio.sleep(0.02)
        del self.procs[node_id]
        return proc.returncode

    def start(self) -> None:
        for node_id in self.raft_addrs:
            self.start_node(node_id)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(node_id, None)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait(10)

    def stop(self) -> None:
        for node_id in list(self.procs):
            self.kill(node_id)

    async def connect(self, node_id: int, timeout_s: float = 15.0) -> ControlClient:
        """Connect to a node's control port, retrying while the process starts."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    return await ControlClient(self.control_addrs[node_id]).connect()
                except OSError:
                    proc = self.procs.get(node_id)
                    if proc is not None and proc.poll() is not None:
                        raise RuntimeError(
                            f"node {node_id} exited with {proc.returncode}; see {self.root}"
                        ) from None
                    await asyncio.sleep(0.05)

    async def wait_leader(
        self, clients: dict[int, ControlClient], timeout_s: float = 15.0, poll_s: float = 0.02
    ) -> int:
        """Wait until one of `clients` is leader and every one of them agrees; its id."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    sts = await asyncio.gather(
                        *(c.request("status", timeout_s=2.0) for c in clients.values())
                    )
                except (ControlError, ConnectionError, TimeoutError):
                    sts = []
                leaders = [s["id"] for s in sts if s["role"] == "leader"]
                if len(leaders) == 1 and all(s["leader_id"] == leaders[0] for s in sts):
                    return leaders[0]
                await asyncio.sleep(poll_s)
