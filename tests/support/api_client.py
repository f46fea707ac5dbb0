"""A thin aiohttp wrapper for tests that talk HTTP to real node processes."""

from __future__ import annotations

import json
from typing import Any

import aiohttp


class ApiClient:
    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), headers=headers
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def call_with_headers(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        allow_redirects: bool = True,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        assert self.session is not None
        data = None if payload is None else json.dumps(payload).encode()
        headers = dict(headers or {})
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.request(
            method, self.url + path, data=data, headers=headers, allow_redirects=allow_redirects
        ) as resp:
            raw = await resp.read()
            body = json.loads(raw) if raw else None
            return resp.status, body, dict(resp.headers)

    async def call(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        status, body, _ = await self.call_with_headers(method, path, payload)
        return status, body

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.call("GET", path)

    async def put(self, path: str, payload: Any) -> tuple[int, Any]:
        return await self.call("PUT", path, payload)

    async def post(self, path: str, payload: Any) -> tuple[int, Any]:
        return await self.call("POST", path, payload)

    async def delete(self, path: str) -> tuple[int, Any]:
        return await self.call("DELETE", path)

    async def raw(
        self, method: str, path: str, data: bytes, content_type: str
    ) -> tuple[int, bytes]:
        assert self.session is not None
        async with self.session.request(
            method, self.url + path, data=data, headers={"Content-Type": content_type}
        ) as resp:
            return resp.status, await resp.read()

    async def raw_json(self, method: str, path: str, data: bytes) -> tuple[int, Any]:
        status, raw = await self.raw(method, path, data, "application/json")
        return status, json.loads(raw) if raw else None

    async def text(self, path: str) -> tuple[int, str]:
        assert self.session is not None
        async with self.session.get(self.url + path) as resp:
            return resp.status, await resp.text()
