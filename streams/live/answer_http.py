"""The HTTP edge of an application's answer request: one signed try, off the event loop, with a total deadline.

A try is `requests` in a thread of a pool of its own (a burst of calls must not queue behind
the loop's default executor, nor take the database threads). The deadline is total: the
event loop stops waiting at `timeout`, whatever the server does (a slow connect, headers
that never come, a body dripped a byte at a time); the thread itself gives up at the next
read after it. The body is read up to `limit` + 1 bytes, so an oversize answer is known as
such without being held whole. Redirects are not followed: a 3xx is a failed try (the
signature covers the configured URL only).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

from callbacks.signing import new_nonce, sign_callback
from streams.core.application import strip_fragment

USER_AGENT = "streamhub-application/1"
READ_CHUNK = 16 * 1024
FETCH_THREADS = 32
URL_IN_MESSAGE = re.compile(r"url: \S+")
_pool = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="answer-url")
_local = threading.local()


@dataclass(frozen=True)
class AnswerResult:
    status_code: int | None  # None: no HTTP answer (connection error, timeout)
    latency_ms: int
    error: str = ""
    content_type: str = ""
    body: bytes = b""
    oversize: bool = False  # the body (or its Content-Length) is over the limit; `body` is its head
    size: int = 0  # bytes read, or the Content-Length that was over the limit


def prepare(*, method: str, url: str, params: dict[str, str], auth_token: str) -> requests.PreparedRequest:
    """The request as it goes on the wire: GET carries the params in the query, POST as a form; signed (V3)."""
    target = strip_fragment(url)
    if method == "GET":
        request = requests.Request("GET", target, params=params)
    else:
        request = requests.Request("POST", target, data=params)
    prepared = request.prepare()
    prepared.headers["User-Agent"] = USER_AGENT
    prepared.headers["Accept"] = "application/xml, text/xml;q=0.9, */*;q=0.1"
    prepared.headers.update(
        sign_callback(
            method=method,
            url=str(prepared.url),
            params=params if method != "GET" else {},
            auth_token=auth_token,
            nonce=new_nonce(),
        )
    )
    return prepared


def _without_url(exc: Exception) -> str:
    """requests' message names the URL's path and query, where customers keep tokens: not in the logs."""
    return URL_IN_MESSAGE.sub("url: …", str(exc))[:400]


def _session() -> requests.Session:
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False  # no proxy from the environment: the URL is the customer's
        _local.session = session
    return session


def fetch_blocking(prepared: requests.PreparedRequest, *, timeout: float, limit: int) -> AnswerResult:
    started = time.monotonic()
    deadline = started + timeout

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        response = _session().send(prepared, timeout=(timeout, timeout), allow_redirects=False, stream=True)
    except requests.Timeout:  # the same words as the event loop's deadline: whichever fires first
        return AnswerResult(None, elapsed(), error=f"timeout: no complete answer within {timeout:g} s")
    except requests.RequestException as exc:
        return AnswerResult(None, elapsed(), error=f"connection error: {type(exc).__name__}: {_without_url(exc)}")
    content_type = response.headers.get("Content-Type", "")[:200]
    try:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            return AnswerResult(
                response.status_code, elapsed(), content_type=content_type, oversize=True, size=int(declared)
            )
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            if time.monotonic() > deadline:
                return AnswerResult(
                    response.status_code,
                    elapsed(),
                    content_type=content_type,
                    body=b"".join(chunks),
                    error=f"timeout: the body did not end within {timeout:g} s",
                )
            chunk = response.raw.read(READ_CHUNK, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
    except Exception as exc:  # the status arrived; a broken body makes the try fail, not the call
        return AnswerResult(
            response.status_code,
            elapsed(),
            content_type=content_type,
            error=f"the body could not be read: {type(exc).__name__}: {exc}"[:500],
        )
    finally:
        response.close()
    return AnswerResult(
        response.status_code, elapsed(), content_type=content_type, body=body, oversize=size > limit, size=size
    )


async def fetch(
    *, method: str, url: str, params: dict[str, str], auth_token: str, deadline: float, limit: int
) -> AnswerResult:
    """One try, signed, with a total deadline of `deadline` seconds."""
    timeout = deadline
    prepared = prepare(method=method, url=url, params=params, auth_token=auth_token)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    future = loop.run_in_executor(_pool, lambda: fetch_blocking(prepared, timeout=timeout, limit=limit))
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        return AnswerResult(
            None, int((time.monotonic() - started) * 1000), error=f"timeout: no complete answer within {timeout:g} s"
        )
