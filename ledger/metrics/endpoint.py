"""The ``/metrics`` HTTP endpoint of a process: ``--metrics-listen`` / ``LEDGER_METRICS_LISTEN``
(``HOST:PORT``; empty, the default, serves nothing) serves :data:`REGISTRY` from a daemon thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.registry import Collector

from ledger.config import ConfigError
from ledger.metrics.definitions import REGISTRY
from ledger.metrics.projection_lag import ProjectionLagCollector, ProjectionStatus

# The subsystem's name, not the module's: docs/operations.md quotes the "metrics on" line.
log = logging.getLogger("ledger.metrics")


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6; port 0 picks a free one) → (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"metrics listen address must be HOST:PORT, not {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


@dataclass
class MetricsEndpoint:
    """The running ``/metrics`` HTTP server (a daemon thread) and what it registered."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread
    _collectors: list[Collector]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        for collector in self._collectors:
            REGISTRY.unregister(collector)


def start_endpoint(
    listen: str, *, projection_status: Callable[[], ProjectionStatus] | None = None
) -> MetricsEndpoint | None:
    """Serve :data:`REGISTRY` at ``http://HOST:PORT/metrics``; ``None`` when ``listen`` is
    empty. With ``projection_status`` the projection lag gauges are exported too. Logs
    ``metrics on http://HOST:PORT/metrics`` (the real port when PORT was 0)."""
    if not listen:
        return None
    host, port = parse_listen(listen)
    collectors: list[Collector] = []
    if projection_status is not None:
        collector = ProjectionLagCollector(projection_status)
        REGISTRY.register(collector)
        collectors.append(collector)
    try:
        server, thread = start_http_server(port, host, registry=REGISTRY)
    except BaseException as error:
        for registered in collectors:
            REGISTRY.unregister(registered)
        if isinstance(error, OSError):
            raise ConfigError(f"cannot serve metrics on {listen}: {error}") from error
        raise
    endpoint = MetricsEndpoint(host, int(server.server_port), server, thread, collectors)
    log.info("metrics on %s", endpoint.url)
    return endpoint
