"""A stand-in for the node's Metrics where a test serves requests without a node."""

from __future__ import annotations


class RecordingMetrics:
    """Records (method, route, status) of every request `serve_request` observed."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def observe_request(self, method: str, route: str, status: int, _s: float) -> None:
        self.seen.append((method, route, status))
