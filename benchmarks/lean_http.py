"""A minimal HTTP/1.1 keep-alive JSON client: how `raftq bench` loads the cluster."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any


class LeanHttp:
    """A minimal HTTP/1.1 keep-alive client for the load loops.

    Why not aiohttp's client here: on a small machine the load generator shares the cores
    with the nodes it measures, and aiohttp's client costs about as much CPU per request as
    the server does. Like wrk, this sends a fixed request shape on reused connections and
    parses only the status line, Content-Length and the JSON body, so more of the machine
    is left to the cluster. It handles exactly what the bench needs (JSON in and out).
    """

    def __init__(self, base_url: str) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def request(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
        try:
            writer.write(head + payload)
            header = await reader.readuntil(b"\r\n\r\n")
            status = int(header[9:12])
            lower = header.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError(f"{path}: response without Content-Length")
            length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
            data = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if b"connection: close" in lower:
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, json.loads(data) if data else None

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        self._all.clear()
        self._idle.clear()
