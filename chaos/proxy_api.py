"""The control plane: Toxiproxy's HTTP API over a registry of Proxies (aiohttp).

Why one lock: every mutating request may bind or close sockets (awaits), and two requests
interleaving on the same proxy (say, a disable racing a rebind) would leave it half-changed.
The API is an administrative path, so serialising it costs nothing that matters.
Every error is JSON `{"error": "<msg>", "status": <code>}`, and a request that fails changes
nothing (a rebind that fails restores the old address).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from chaos.proxy import Proxy, ProxyError, is_loopback, parse_address
from chaos.toxics import ToxicError, parse_new_toxic, parse_toxic_update

log = structlog.get_logger("chaos.proxy_api")

VERSION = "raftq-chaos-proxy 0.1.0 (toxiproxy-compatible API)"
DEFAULT_LISTEN = "127.0.0.1:0"


def error_response(message: str, status: int) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


class Registry:
    """All proxies of one server, by name, with the operations the API exposes."""

    def __init__(self, rng: random.Random, allow_remote: bool = False) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()
        self._rng = rng
        self._allow_remote = allow_remote

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ProxyError(f"proxy not found: {name}", 404)
        return proxy

    def _check_listen(self, listen: Any) -> str:
        host, _port = parse_address(listen, "listen")
        if not self._allow_remote and not is_loopback(host):
            raise ProxyError(
                f"listen {listen!r} is not a loopback address (start with --allow-remote)", 400
            )
        return listen

    def parse_new_proxy(self, body: Any) -> dict[str, Any]:
        """Validate a create body: name, upstream required; listen, enabled optional."""
        if not isinstance(body, dict):
            raise ProxyError("proxy body must be a JSON object", 400)
        name = body.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise ProxyError(f"proxy name must be a non-empty string without '/': {name!r}", 400)
        upstream = body.get("upstream")
        parse_address(upstream, "upstream")
        listen = self._check_listen(body.get("listen") or DEFAULT_LISTEN)
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ProxyError(f"enabled must be true or false, got {enabled!r}", 400)
        return {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}

    async def create(self, spec: dict[str, Any]) -> Proxy:
        if spec["name"] in self.proxies:
            raise ProxyError(f"proxy already exists: {spec['name']}", 409)
        proxy = Proxy(spec["name"], spec["listen"], spec["upstream"], self._rng)
        if spec["enabled"]:
            await proxy.start()
        self.proxies[proxy.name] = proxy
        log.info("proxy.created", proxy=proxy.name, listen=proxy.listen, upstream=proxy.upstream)
        return proxy

    async def update(self, proxy: Proxy, body: Any) -> None:
        """Apply a partial {listen, upstream, enabled}; a new address restarts the proxy."""
        if not isinstance(body, dict):
            raise ProxyError("proxy update body must be a JSON object", 400)
        listen = self._check_listen(body["listen"]) if "listen" in body else proxy.listen
        upstream = body.get("upstream", proxy.upstream)
        parse_address(upstream, "upstream")
        enabled = body.get("enabled", proxy.enabled)
        if not isinstance(enabled, bool):
            raise ProxyError(f"enabled must be true or false, got {enabled!r}", 400)
        rebind = listen != proxy.listen or upstream != proxy.upstream
        was_enabled = proxy.enabled
        old_listen, old_upstream = proxy.listen, proxy.upstream
        if rebind or not enabled:
            await proxy.stop()
        proxy.listen, proxy.upstream = listen, upstream
        if enabled:
            try:
                await proxy.start()
            except ProxyError:
                proxy.listen, proxy.upstream = old_listen, old_upstream
                if was_enabled:
                    await proxy.start()
                raise
        log.info(
            "proxy.updated",
            proxy=proxy.name,
            listen=proxy.listen,
            upstream=proxy.upstream,
            enabled=proxy.enabled,
        )

    async def delete(self, proxy: Proxy) -> None:
        await proxy.stop()
        self.proxies.pop(proxy.name, None)
        log.info("proxy.deleted", proxy=proxy.name)

    async def populate(self, body: Any) -> list[Proxy]:
        """Create or update every listed proxy; all bodies are validated before any change."""
        if isinstance(body, dict) and isinstance(body.get("proxies"), list):
            body = body["proxies"]
        if not isinstance(body, list):
            raise ProxyError("populate body must be a JSON array of proxies", 400)
        specs = [self.parse_new_proxy(item) for item in body]
        names = [s["name"] for s in specs]
        if len(set(names)) != len(names):
            raise ProxyError("populate body names a proxy more than once", 400)
        result = []
        created: list[Proxy] = []
        try:
            for spec in specs:
                existing = self.proxies.get(spec["name"])
                if existing is None:
                    proxy = await self.create(spec)
                    created.append(proxy)
                else:
                    changes = {k: spec[k] for k in ("upstream", "enabled")}
                    if spec["listen"] != DEFAULT_LISTEN:
                        changes["listen"] = spec["listen"]
                    await self.update(existing, changes)
                    proxy = existing
                result.append(proxy)
        except ProxyError:
            for proxy in created:  # undo what this call created
                await self.delete(proxy)
            raise
        return result

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic (Toxiproxy's POST /reset)."""
        errors = []
        for proxy in self.proxies.values():
            proxy.clear_toxics()
            try:
                await proxy.start()
            except ProxyError as exc:
                errors.append(exc.message)
        if errors:
            raise ProxyError("; ".join(errors), 409)

    async def close(self) -> None:
        for proxy in list(self.proxies.values()):
            await proxy.stop()


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ProxyError(f"body is not valid JSON: {exc}", 400) from None


@web.middleware
async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into Toxiproxy's JSON error shape (also aiohttp's 404/405)."""
    try:
        return await handler(request)
    except ProxyError as exc:
        return error_response(exc.message, exc.status)
    except ToxicError as exc:
        return error_response(str(exc), exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.reason, exc.status)
    except Exception as exc:  # a bug: answer 500 and keep serving
        log.exception("proxy_api.internal_error", path=request.path)
        return error_response(f"internal error: {exc}", 500)


def build_app(registry: Registry) -> web.Application:
    """The aiohttp application for `registry` (routes as in Toxiproxy's HTTP API)."""
    routes = web.RouteTableDef()

    @routes.get("/version")
    async def version(_request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    @routes.get("/proxies")
    async def list_proxies(_request: web.Request) -> web.Response:
        return web.json_response({n: p.to_json() for n, p in registry.proxies.items()})

    @routes.post("/proxies")
    async def create_proxy(request: web.Request) -> web.Response:
        spec = registry.parse_new_proxy(await _json_body(request))
        async with registry.lock:
            proxy = await registry.create(spec)
            return web.json_response(proxy.to_json(), status=201)

    @routes.post("/populate")
    async def populate(request: web.Request) -> web.Response:
        body = await _json_body(request)
        async with registry.lock:
            proxies = await registry.populate(body)
            return web.json_response({"proxies": [p.to_json() for p in proxies]}, status=201)

    @routes.post("/reset")
    async def reset(_request: web.Request) -> web.Response:
        async with registry.lock:
            await registry.reset()
        return web.Response(status=204)

    @routes.get("/proxies/{proxy}")
    async def get_proxy(request: web.Request) -> web.Response:
        return web.json_response(registry.get(request.match_info["proxy"]).to_json())

    @routes.post("/proxies/{proxy}")
    @routes.patch("/proxies/{proxy}")
    async def update_proxy(request: web.Request) -> web.Response:
        body = await _json_body(request)
        async with registry.lock:
            proxy = registry.get(request.match_info["proxy"])
            await registry.update(proxy, body)
            return web.json_response(proxy.to_json())

    @routes.delete("/proxies/{proxy}")
    async def delete_proxy(request: web.Request) -> web.Response:
        async with registry.lock:
            await registry.delete(registry.get(request.match_info["proxy"]))
        return web.Response(status=204)

    @routes.get("/proxies/{proxy}/toxics")
    async def list_toxics(request: web.Request) -> web.Response:
        proxy = registry.get(request.match_info["proxy"])
        return web.json_response([t.to_json() for t in proxy.toxics.values()])

    @routes.post("/proxies/{proxy}/toxics")
    async def add_toxic(request: web.Request) -> web.Response:
        body = await _json_body(request)
        async with registry.lock:
            proxy = registry.get(request.match_info["proxy"])
            toxic = parse_new_toxic(body)
            if toxic.name in proxy.toxics:
                raise ToxicError(f"toxic already exists: {toxic.name}", 409)
            proxy.set_toxic(toxic)
            log.info("proxy.toxic_added", proxy=proxy.name, **toxic.to_json())
            return web.json_response(toxic.to_json())

    def _toxic(proxy: Proxy, name: str) -> Any:
        toxic = proxy.toxics.get(name)
        if toxic is None:
            raise ProxyError(f"toxic not found: {name}", 404)
        return toxic

    @routes.get("/proxies/{proxy}/toxics/{toxic}")
    async def get_toxic(request: web.Request) -> web.Response:
        proxy = registry.get(request.match_info["proxy"])
        return web.json_response(_toxic(proxy, request.match_info["toxic"]).to_json())

    @routes.post("/proxies/{proxy}/toxics/{toxic}")
    @routes.patch("/proxies/{proxy}/toxics/{toxic}")
    async def update_toxic(request: web.Request) -> web.Response:
        body = await _json_body(request)
        async with registry.lock:
            proxy = registry.get(request.match_info["proxy"])
            toxic = _toxic(proxy, request.match_info["toxic"])
            toxicity, attributes = parse_toxic_update(toxic, body)
            toxic.toxicity, toxic.attributes = toxicity, attributes
            proxy.set_toxic(toxic)
            log.info("proxy.toxic_updated", proxy=proxy.name, **toxic.to_json())
            return web.json_response(toxic.to_json())

    @routes.delete("/proxies/{proxy}/toxics/{toxic}")
    async def delete_toxic(request: web.Request) -> web.Response:
        async with registry.lock:
            proxy = registry.get(request.match_info["proxy"])
            _toxic(proxy, request.match_info["toxic"])
            proxy.remove_toxic(request.match_info["toxic"])
            log.info("proxy.toxic_removed", proxy=proxy.name, toxic=request.match_info["toxic"])
        return web.Response(status=204)

    app = web.Application(middlewares=[_errors_as_json])
    app.add_routes(routes)

    async def _close_registry(_app: web.Application) -> None:
        await registry.close()

    app.on_shutdown.append(_close_registry)
    return app


async def serve(
    host: str, port: int, rng: random.Random, allow_remote: bool = False
) -> tuple[web.AppRunner, Registry, int]:
    """Start the control API; returns the runner (call `cleanup()`), registry and real port."""
    registry = Registry(rng, allow_remote=allow_remote)
    runner = web.AppRunner(build_app(registry), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    real_port = runner.addresses[0][1]
    return runner, registry, real_port
