"""Fixtures for the fault proxy tests: the proxy as its own process, an echo server upstream.

Why a separate process: toxiproxy-python is synchronous and keeps the server address in a
class global, exactly as it would against a real Toxiproxy; running our proxy in-process would
let the test's event loop and the proxy's share fate (a blocked client call would stall both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from toxiproxy import Toxiproxy

from chaos.proxy import process_command as proxy_command
from chaos.proxy_client import ToxiproxyClient
from cluster.launcher import free_ports

STARTUP_TIMEOUT_S = 15.0


def http(method: str, url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """One HTTP call with urllib (status, parsed JSON or None) — errors are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    return status, (json.loads(payload) if payload else None)


@dataclass
class ProxyProcess:
    url: str
    pid: int
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


# Lines that mean an exception escaped or a task leaked inside the proxy process.
FAILURE_MARKERS = (
    "Traceback",
    "never retrieved",
    "Task was destroyed",
    "leftover_tasks",
    '"level": "error"',
)


@contextlib.contextmanager
def run_proxy_process(log_path: Path) -> Iterator[ProxyProcess]:
    """Start `python -m chaos proxy` on a free loopback port; kill it by PID on exit."""
    (port,) = free_ports(1)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TOXIPROXY_URL", None)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            proxy_command(port, seed=7, log_level="debug"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"proxy exited: {log_path.read_text()[-2000:]}")
            try:
                if http("GET", f"{url}/version")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("proxy did not start in time")
            time.sleep(0.05)
        yield ProxyProcess(url=url, pid=proc.pid, log_path=log_path)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def proxy_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One proxy process for the module; at the end its log must show no escaped exception."""
    log_path = tmp_path_factory.mktemp("proxy") / "proxy.log"
    with run_proxy_process(log_path) as process:
        yield process
        text = process.log_text()
        bad = [line for line in text.splitlines() if any(m in line for m in FAILURE_MARKERS)]
        assert not bad, "proxy logged failures:\n" + "\n".join(bad[:20])


@pytest.fixture(scope="module")
def proxy_server(proxy_process: ProxyProcess) -> str:
    return proxy_process.url


@pytest.fixture
def toxi(proxy_server: str) -> Iterator[ToxiproxyClient]:
    """A client bound to the test proxy server, with no proxies before and after the test."""
    client = ToxiproxyClient(proxy_server)
    server = Toxiproxy()  # the library's own sync calls, off any event loop
    server.update_api_consumer(client.host, client.port)
    server.destroy_all()
    try:
        yield client
    finally:
        server.update_api_consumer(client.host, client.port)
        server.destroy_all()


class EchoServer:
    """Echoes every byte back; counts connections so tests can see what reached upstream."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.received = bytearray()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
