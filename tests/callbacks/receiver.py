"""A customer's callback endpoint on 127.0.0.1: scripted answers, Plivo signature checks, webhook-id dedupe.

Each request is checked with the `plivo` SDK's own validator, the way a customer's
server would (full URL as received; for POST the form fields as a dict). A request
whose `webhook-id` was already acknowledged is answered 200 and not counted again,
as an idempotent receiver would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from plivo.utils.signature_v3 import validate_v3_signature


@dataclass(frozen=True)
class Hang:
    """Hold the request open until `release` is set (or `limit` seconds pass), then answer `status`."""

    release: threading.Event
    status: int = 200
    limit: float = 60.0


@dataclass(frozen=True)
class Slow:
    seconds: float
    status: int = 200


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


@dataclass(frozen=True)
class Drip:
    """Answer `status`, one byte every `interval` seconds (each read of the sender gets a byte in time)."""

    interval: float
    status: int = 200


Behaviour = int | Reply | Hang | Slow | Drip


@dataclass
class Hit:
    at: float
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    webhook_id: str
    signature_ok: bool
    status: int
    done: float = 0.0  # when a Drip answer ended (finished, or the sender went away)


class Receiver:
    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.scripts: dict[str, list[Behaviour]] = {}
        self.defaults: dict[str, Behaviour] = {}
        self.hits: list[Hit] = []
        self.acknowledged: dict[str, dict[str, str]] = {}  # webhook-id -> params, first 2xx only
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.closing = threading.Event()  # cuts every Slow answer short at the end of a test
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str, token: str, *behaviours: Behaviour, default: Behaviour = 200) -> str:
        """Register `path` for an account token with scripted answers, then `default`."""
        self.tokens[path] = token
        self.scripts[path] = list(behaviours)
        self.defaults[path] = default
        return f"http://127.0.0.1:{self.port}{path}"

    def hits_for(self, path: str) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if urlsplit(hit.path).path == path]

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self.changed.wait(min(left, 0.2))

    def _next(self, path: str) -> Behaviour:
        with self.lock:
            script = self.scripts.get(path)
            if script:
                return script.pop(0)
            return self.defaults.get(path, 404)

    def _record(self, hit: Hit) -> None:
        with self.changed:
            self.hits.append(hit)
            if 200 <= hit.status < 300 and hit.webhook_id not in self.acknowledged:
                self.acknowledged[hit.webhook_id] = hit.params
            self.changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # one small answer per request: no 40 ms delayed-ACK stalls

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                path = urlsplit(self.path).path
                form = dict(parse_qsl(body, keep_blank_values=True)) if self.command == "POST" else {}
                query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
                token = receiver.tokens.get(path, "")
                try:
                    signature_ok = bool(
                        validate_v3_signature(
                            self.command,
                            f"http://127.0.0.1:{receiver.port}{self.path}",
                            self.headers.get("X-Plivo-Signature-V3-Nonce", ""),
                            token,
                            self.headers.get("X-Plivo-Signature-V3", ""),
                            form if self.command == "POST" else None,
                        )
                    )
                except Exception:
                    signature_ok = False
                behaviour = receiver._next(path)
                status, extra, payload = 200, {}, b"ok"
                if isinstance(behaviour, int):
                    status = behaviour
                elif isinstance(behaviour, Reply):
                    status, extra, payload = behaviour.status, behaviour.headers, behaviour.body
                webhook_id = self.headers.get("webhook-id", "")
                hit = Hit(
                    at=time.monotonic(),
                    method=self.command,
                    path=self.path,
                    params=form or query,
                    headers=dict(self.headers.items()),
                    webhook_id=webhook_id,
                    signature_ok=signature_ok,
                    status=status,
                )
                if isinstance(behaviour, Hang):
                    hit.status = 0  # received, never answered (the sender died or gave up)
                    receiver._record(hit)
                    behaviour.release.wait(behaviour.limit)
                    status = behaviour.status
                    self._answer(status, {}, b"late")
                    return
                if isinstance(behaviour, Drip):
                    hit.status = behaviour.status
                    receiver._record(hit)
                    self._drip(behaviour)
                    with receiver.changed:
                        hit.done = time.monotonic()
                        receiver.changed.notify_all()
                    return
                if isinstance(behaviour, Slow):
                    hit.status = status = behaviour.status
                    receiver._record(hit)  # on arrival: the test looks at who got through when
                    receiver.closing.wait(behaviour.seconds)
                else:
                    receiver._record(hit)
                self._answer(status, extra, payload)

            def _drip(self, drip: Drip) -> None:
                answer = f"HTTP/1.1 {drip.status} OK\r\nContent-Length: 2\r\n\r\nok".encode()
                try:
                    for byte in answer:
                        if receiver.closing.wait(drip.interval):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:
                    pass  # the sender gave up
                self.close_connection = True

            def _answer(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the sender went away (killed worker, timeout)

            do_GET = _serve
            do_POST = _serve

        return Handler

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
