"""What every streamhub metrics endpoint shares: the bearer token, the text format, the worker's exporter.

Which process exposes what (docs/operations.md says the same):
- each hub server process serves its own registry at `/metrics` on its own port
  (`streams.live.metrics`): its calls, relays, loop lag and database executor live in
  its memory, so every hub process is scraped as a target of its own;
- the Celery worker serves `callbacks.metrics` (deliveries, latency, the outbox) from a
  small HTTP server it starts on STREAMHUB_WORKER_METRICS_PORT (`start_worker_exporter`,
  from the worker_init signal in streamhub/celery.py). With the threads pool (the
  deployment's choice) there is one process and one registry. With the prefork pool the
  children count in PROMETHEUS_MULTIPROC_DIR and the exporter adds them up (prometheus-
  client's multiprocess mode);
- beat exposes nothing: it only schedules tasks, which the worker runs and counts.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """No token configured: open. Otherwise `Authorization: Bearer <token>`, compared in constant time."""
    if not token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def process_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry with the process/GC/platform collectors plus `collectors`."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


def _with_bearer(app: Callable[..., Iterable[bytes]], token: str | None) -> Callable[..., Iterable[bytes]]:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not bearer_ok(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"metrics need a bearer token\n"]
        return app(environ, start_response)

    return guarded


def start_worker_exporter(*, port: int, addr: str, token: str | None) -> ThreadingWSGIServer | None:
    """Serve the worker's metrics on addr:port in a daemon thread; None when it cannot bind (logged)."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from callbacks.metrics import OutboxCollector, deliveries, latency

    class Handler(WSGIRequestHandler):
        # no access log line per scrape in the worker's log
        def log_message(self, format: str, *args: Any) -> None:
            return

    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc_dir:
        from prometheus_client import multiprocess

        registry = CollectorRegistry(auto_describe=True)
        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
        registry.register(OutboxCollector())
    else:
        registry = process_registry(OutboxCollector(), deliveries, latency)
    app = _with_bearer(make_wsgi_app(registry), token)
    try:
        server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=Handler)
    except OSError as exc:
        log.error("worker metrics: cannot listen on %s:%d (%s); metrics are not exported", addr, port, exc)
        return None
    thread = threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True)
    thread.start()
    log.info("worker metrics on http://%s:%d/metrics", addr, server.server_port)
    return server
