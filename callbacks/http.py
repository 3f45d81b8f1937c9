"""The one HTTP edge of callback delivery: build the request as it will go on the wire, send it.

Tests that must not touch the network mock `send` here (autospec); everything else
about a delivery is decided from its `HttpResult`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import requests

USER_AGENT = "streamhub-callbacks/1"
_local = threading.local()


@dataclass(frozen=True)
class HttpResult:
    status_code: int | None  # None: no HTTP answer (connection error, timeout)
    latency_ms: int
    error: str = ""
    body_excerpt: str = ""
    retry_after: str | None = None


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
        _local.session = session
    return session


def send(prepared: requests.PreparedRequest, *, timeout: float, excerpt_limit: int) -> HttpResult:
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        response = _session().send(prepared, timeout=(timeout, timeout), allow_redirects=False, stream=True)
    except requests.Timeout:
        return HttpResult(None, elapsed(), error=f"timeout after {timeout:g} s")
    except requests.RequestException as exc:
        return HttpResult(None, elapsed(), error=f"connection error: {type(exc).__name__}: {exc}"[:500])
    try:
        # Only the first bytes are kept; a large or endless body must not hold the worker.
        raw = response.raw.read(excerpt_limit, decode_content=True) or b""
    except Exception as exc:  # the status already arrived; a broken body does not change it
        raw = f"<body unreadable: {type(exc).__name__}>".encode()
    finally:
        response.close()
    excerpt = raw.decode("utf-8", errors="replace").replace("\x00", "")[:excerpt_limit]
    return HttpResult(
        response.status_code, elapsed(), body_excerpt=excerpt, retry_after=response.headers.get("Retry-After")
    )
