"""Async access to a Toxiproxy(-compatible) server through the real `toxiproxy-python` client.

Why a wrapper: toxiproxy-python is synchronous (requests) and keeps the server address in a
class global (`APIConsumer.host/port`). Every call here runs in a worker thread via
`asyncio.to_thread`, so the event loop never blocks, and every request carries a timeout
(the library's high-level objects send none). The server is chosen by `--toxiproxy-url` or
`TOXIPROXY_URL`, so our own `python -m chaos proxy` and a real Toxiproxy are interchangeable.
One process talks to one server at a time (the library's global allows no more).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from toxiproxy import Proxy, Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.toxic import Toxic

from chaos.proxy_url import resolve_url

REQUEST_TIMEOUT_S = 10.0


class ToxiproxyUrlError(ValueError):
    """The configured Toxiproxy URL cannot be used (toxiproxy-python speaks plain http only)."""


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ToxiproxyUrlError(f"Toxiproxy URL must be http://host:port, got {url!r}")
    return parts.hostname, parts.port or 8474


class ToxiproxyClient:
    """Async facade over toxiproxy-python; methods mirror the HTTP API one to one.

    Errors are the library's own: `toxiproxy.exceptions.NotFound` (404), `ProxyExists` (409),
    `InvalidToxic` (400); other failures surface as `requests` exceptions.
    """

    def __init__(self, url: str | None = None, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = resolve_url(url)
        self.host, self.port = _host_port(self.url)
        self.timeout_s = timeout_s
        self._server = Toxiproxy()

    def _bind(self) -> None:
        # The library's address is a class global: set it before each call so two clients
        # created with different URLs in one process still reach the right server.
        self._server.update_api_consumer(self.host, self.port)

    def _get(self, path: str) -> Any:
        self._bind()
        return APIConsumer.get(path, timeout=self.timeout_s)

    def _post(self, path: str, body: Any = None) -> Any:
        self._bind()
        return APIConsumer.post(path, json=body, timeout=self.timeout_s)

    def _delete(self, path: str) -> Any:
        self._bind()
        return APIConsumer.delete(path, timeout=self.timeout_s)

    async def version(self) -> str:
        response = await asyncio.to_thread(self._get, "/version")
        text = response.text
        try:
            return str(response.json()["version"])
        except (ValueError, KeyError, TypeError):
            return text  # older Toxiproxy servers answer plain text

    async def proxies(self) -> dict[str, Proxy]:
        data = (await asyncio.to_thread(self._get, "/proxies")).json()
        return {name: Proxy(**values) for name, values in data.items()}

    async def get_proxy(self, name: str) -> Proxy:
        return Proxy(**(await asyncio.to_thread(self._get, f"/proxies/{name}")).json())

    async def create_proxy(
        self, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> Proxy:
        body = {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}
        return Proxy(**(await asyncio.to_thread(self._post, "/proxies", body)).json())

    async def populate(self, proxies: list[dict[str, Any]]) -> list[Proxy]:
        data = (await asyncio.to_thread(self._post, "/populate", proxies)).json()
        return [Proxy(**values) for values in data["proxies"]]

    async def update_proxy(self, name: str, **changes: Any) -> Proxy:
        """Partial update: any of listen=, upstream=, enabled=."""
        return Proxy(**(await asyncio.to_thread(self._post, f"/proxies/{name}", changes)).json())

    async def enable(self, name: str) -> Proxy:
        return await self.update_proxy(name, enabled=True)

    async def disable(self, name: str) -> Proxy:
        return await self.update_proxy(name, enabled=False)

    async def delete_proxy(self, name: str) -> None:
        await asyncio.to_thread(self._delete, f"/proxies/{name}")

    async def toxics(self, proxy: str) -> dict[str, Toxic]:
        data = (await asyncio.to_thread(self._get, f"/proxies/{proxy}/toxics")).json()
        return {t["name"]: Toxic(proxy=proxy, **t) for t in data}

    async def add_toxic(
        self,
        proxy: str,
        type: str,
        stream: str = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
        attributes: dict[str, int] | None = None,
    ) -> Toxic:
        body = {
            "name": name or f"{type}_{stream}",
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes or {},
        }
        data = (await asyncio.to_thread(self._post, f"/proxies/{proxy}/toxics", body)).json()
        return Toxic(proxy=proxy, **data)

    async def update_toxic(
        self,
        proxy: str,
        name: str,
        attributes: dict[str, int] | None = None,
        toxicity: float | None = None,
    ) -> Toxic:
        body: dict[str, Any] = {}
        if attributes is not None:
            body["attributes"] = attributes
        if toxicity is not None:
            body["toxicity"] = toxicity
        path = f"/proxies/{proxy}/toxics/{name}"
        return Toxic(proxy=proxy, **(await asyncio.to_thread(self._post, path, body)).json())

    async def remove_toxic(self, proxy: str, name: str) -> None:
        await asyncio.to_thread(self._delete, f"/proxies/{proxy}/toxics/{name}")

    async def reset(self) -> None:
        await asyncio.to_thread(self._post, "/reset")

    async def destroy_all(self) -> None:
        for name in await self.proxies():
            await self.delete_proxy(name)
