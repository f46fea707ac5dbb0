"""An aiohttp application with what `serve_request` reads, for tests that serve requests
without a node: recording metrics and an authenticator (auth off)."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from aiohttp import web

from node.app_context import AUTH_KEY, SERVICE_KEY
from node.auth import Authenticator
from tests.support.metrics import RecordingMetrics


def serving_app(middlewares: Sequence[Any] = ()) -> web.Application:
    app = web.Application(middlewares=list(middlewares))
    app[SERVICE_KEY] = SimpleNamespace(metrics=RecordingMetrics())  # type: ignore[assignment]
    no_users = SimpleNamespace(users_gen=0, user=lambda _name: None)
    app[AUTH_KEY] = Authenticator(no_users, enabled=False)  # type: ignore[arg-type]
    return app
