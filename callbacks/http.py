"""The one HTTP edge of callback delivery: build the request as it will go on the wire, send it.

Tests that must not touch the network mock `send` here (autospec); everything else
about a delivery is decided from its `HttpResult`.

Two promises live here, in the connection `requests` opens through urllib3:
- **One deadline per try.** `requests` timeouts apply to each socket operation, so a server
  dripping a byte every half second held a 1 s try for 9.5 s. Here the try's whole time —
  resolving the name, connecting, TLS, sending, reading the answer — is bounded by `timeout`:
  a watchdog thread shuts the try's socket down when its deadline passes.
- **The address policy at connect time.** With STREAMHUB_FORBID_PRIVATE_CALLBACKS the name is
  resolved once, every address it resolves to is checked (streams.core.validation.EgressPolicy),
  and the socket connects to one of those checked addresses; TLS (SNI, certificate) and the
  Host header still use the name. No second lookup, so no window for DNS rebinding.
The hub connects to callback URLs itself: HTTP(S)_PROXY environment variables are not used.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import ipaddress
import itertools
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from streams.core.validation import AddressRefused, EgressPolicy

USER_AGENT = "streamhub-callbacks/1"
_local = threading.local()
# Name resolution runs here so that a hung resolver cannot hold a try past its deadline.
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="callback-dns")


@dataclass(frozen=True)
class HttpResult:
    status_code: int | None  # None: no HTTP answer (connection error, timeout)
    latency_ms: int
    error: str = ""
    body_excerpt: str = ""
    retry_after: str | None = None
    permanent: bool = False  # an error no retry can fix (the address policy refused the host)


class _Try:
    """One try: its deadline, its policy, the sockets it opened or reused."""

    def __init__(self, deadline: float, policy: EgressPolicy) -> None:
        self.deadline = deadline
        self.policy = policy
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.active = True
        self.expired = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        with self.lock:
            if not self.active:
                return
            self.sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self.lock:
            if not self.active:
                return
            self.expired = True
            for sock in self.sockets:
                _shutdown(sock)

    def finish(self) -> None:
        with self.lock:
            self.active = False
            self.sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv/send in the try's thread returns at once


class _Watchdog:
    """One daemon thread that expires tries whose deadline has passed."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Try]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, attempt: _Try) -> None:
        with self._changed:
            heapq.heappush(self._heap, (attempt.deadline, next(self._order), attempt))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="callback-deadlines", daemon=True)
                self._thread.start()
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._heap:
                    self._changed.wait()
                deadline, _, attempt = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                heapq.heappop(self._heap)
            attempt.expire()


_watchdog = _Watchdog()


def _current() -> _Try | None:
    attempt: _Try | None = getattr(_local, "attempt", None)
    return attempt


def _resolve(host: str, port: int, timeout: float) -> list[Any]:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        future = _resolver.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        try:
            return future.result(timeout=max(0.0, timeout))
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"resolving {host} took longer than the try's deadline") from None
    return socket.getaddrinfo(host.strip("[]"), port, 0, socket.SOCK_STREAM)


def _open(conn: HTTPConnection) -> socket.socket:
    """urllib3's _new_conn under the try's deadline and address policy."""
    attempt = _current()
    if attempt is None:  # not inside send(): plain urllib3 behaviour
        return HTTPConnection._new_conn(conn)
    host = conn._dns_host
    try:
        infos = _resolve(host, conn.port, attempt.remaining())
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    except TimeoutError as exc:
        raise ConnectTimeoutError(conn, str(exc)) from exc
    if attempt.policy.forbid_private_callbacks:
        refusal = attempt.policy.refusal(conn.host, [info[4][0] for info in infos])
        if refusal is not None:
            raise AddressRefused(refusal)
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        remaining = attempt.remaining()
        if remaining <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            timeout = conn.timeout if isinstance(conn.timeout, int | float) else remaining
            sock.settimeout(min(timeout, remaining))
            attempt.watch(sock)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    if last is None or isinstance(last, TimeoutError):
        raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out (the try's deadline)")
    raise NewConnectionError(conn, f"Failed to establish a new connection: {last}")


class _GuardedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _open(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        attempt = _current()
        if attempt is not None and self.sock is not None:  # a kept-alive connection: this try's now
            attempt.watch(self.sock)
        super().request(*args, **kwargs)


class _GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _open(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        attempt = _current()
        if attempt is not None and self.sock is not None:
            attempt.watch(self.sock)
        super().request(*args, **kwargs)


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def prepare(*, method: str, url: str, params: dict[str, str]) -> requests.PreparedRequest:
    """GET puts the params in the query string, POST in a form-encoded body (spec §6.2)."""
    if method == "GET":
        request = requests.Request("GET", url, params=params)
    else:
        request = requests.Request("POST", url, data=params)
    prepared = request.prepare()
    prepared.headers["User-Agent"] = USER_AGENT
    return prepared


def _session() -> requests.Session:
    # One keep-alive session per worker thread: requests.Session is not thread-safe.
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False  # connect directly: the policy and the deadline apply to our own socket
        adapter = _GuardedAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _local.session = session
    return session


def _drop_session() -> None:
    session: requests.Session | None = getattr(_local, "session", None)
    _local.session = None
    if session is not None:
        session.close()


def send(
    prepared: requests.PreparedRequest,
    *,
    timeout: float,
    excerpt_limit: int,
    policy: EgressPolicy | None = None,
) -> HttpResult:
    """One try, over within `timeout` seconds whatever the server does."""
    started = time.monotonic()
    attempt = _Try(started + timeout, policy or EgressPolicy())
    _local.attempt = attempt
    _watchdog.add(attempt)

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    def timed_out() -> HttpResult:
        _drop_session()  # its connection was shut down mid-try
        return HttpResult(None, elapsed(), error=f"timeout after {timeout:g} s")

    try:
        try:
            response = _session().send(prepared, timeout=(timeout, timeout), allow_redirects=False, stream=True)
        except AddressRefused as exc:
            return HttpResult(None, elapsed(), error=f"refused: {exc}"[:500], permanent=True)
        except requests.Timeout:
            return timed_out()
        except requests.RequestException as exc:
            if attempt.expired:
                return timed_out()
            return HttpResult(None, elapsed(), error=f"connection error: {type(exc).__name__}: {exc}"[:500])
        try:
            # Only the first bytes are kept; a large or endless body must not hold the worker.
            raw = response.raw.read(excerpt_limit, decode_content=True) or b""
        except Exception as exc:  # the status already arrived; a broken body does not change it
            raw = f"<body unreadable: {type(exc).__name__}>".encode()
        finally:
            response.close()
        if attempt.expired:
            _drop_session()
    finally:
        attempt.finish()
        _local.attempt = None
    excerpt = raw.decode("utf-8", errors="replace").replace("\x00", "")[:excerpt_limit]
    return HttpResult(
        response.status_code, elapsed(), body_excerpt=excerpt, retry_after=response.headers.get("Retry-After")
    )
