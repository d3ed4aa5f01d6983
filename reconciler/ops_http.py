"""The controller's metrics port: ``/metrics`` (Prometheus), ``/healthz`` (alive: the loop
went round recently), ``/readyz`` (leading or standing by, manifests loaded, state
reachable; why not, when not), anything else 404.

Probes answer 200 with one line (``ok``, ``ready: leading``) or 503 with the reason, as
plain text. The server runs on its own threads: a slow scrape never holds the loop."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("snapctl.ops_http")

#: /healthz fails when the loop has not gone round for this long (seconds), by default.
DEFAULT_STUCK_AFTER_S = 300.0


def liveness(health: Any, stuck_after_s: float) -> tuple[bool, str]:
    """Alive, or why not: the controller stopped, or its loop has not gone round within
    ``stuck_after_s`` seconds. ``health`` is a :class:`reconciler.controller.Health`."""
    if health.alive(stuck_after_s):
        return True, "ok"
    if health.last_tick_monotonic is None or health.role.value == "stopped":
        return False, f"controller is {health.role.value.replace('_', ' ')}"
    age = time.monotonic() - health.last_tick_monotonic
    return False, f"loop stuck: it last went round {age:.0f}s ago (the bound is {stuck_after_s:g}s)"


class HealthCollector:
    """The probes' verdicts as metrics, judged at each scrape (a Prometheus custom collector):
    ``snapctl_controller_alive`` (1 when /healthz would answer 200) and
    ``snapctl_controller_ready`` (1 when /readyz would)."""

    def __init__(self, health: Callable[[], Any], stuck_after_s: float):
        self._health, self._stuck_after_s = health, stuck_after_s

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        health = self._health()
        alive = GaugeMetricFamily(
            "snapctl_controller_alive",
            "1 when /healthz answers 200 (the loop went round within --stuck-after seconds)",
        )
        alive.add_metric([], 1.0 if liveness(health, self._stuck_after_s)[0] else 0.0)
        yield alive
        ready = GaugeMetricFamily(
            "snapctl_controller_ready",
            "1 when /readyz answers 200 (leading or standing by, manifests loaded, state reachable)",
        )
        ready.add_metric([], 1.0 if health.ready()[0] else 0.0)
        yield ready


class OpsServer:
    """Serves the metrics port on ``host:port`` (0: a free port) until :meth:`close`."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: Any,
        health: Callable[[], Any],
        *,
        stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
    ):
        registry.register(HealthCollector(health, stuck_after_s))
        handler = type(
            "OpsHandler",
            (_Handler,),
            {"registry": registry, "health": staticmethod(health), "stuck_after_s": stuck_after_s},
        )
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("OpsHTTPServer", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
        self.server = server_class((host, port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="snapctl-ops-http", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    registry: Any
    health: Callable[[], Any]
    stuck_after_s: float
    #: A client that sends nothing is dropped after this many seconds.
    timeout = 10

    def version_string(self) -> str:
        return "snapctl"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client.exposition import choose_encoder

            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._answer(200, encoder(self.registry), content_type)
        elif path == "/healthz":
            alive, why = liveness(self.health(), self.stuck_after_s)
            self._answer(200 if alive else 503, f"{why}\n".encode())
        elif path == "/readyz":
            ready, why = self.health().ready()
            self._answer(200 if ready else 503, f"{'ready: ' if ready else 'not ready: '}{why}\n".encode())
        else:
            self._answer(404, b"not found: the metrics port serves /metrics, /healthz and /readyz\n")

    def do_HEAD(self) -> None:
        self._head_only = True
        self.do_GET()

    def _refuse(self) -> None:
        self._answer(405, b"method not allowed: GET or HEAD\n")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not getattr(self, "_head_only", False):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
