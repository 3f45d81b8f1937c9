"""Real-socket actors for end-to-end tests: a customer WebSocket server and a gateway client.

Both run in the test's event loop on 127.0.0.1; the hub runs as a daphne subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll a sync (ORM) or async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s (last value {last!r})")


def db(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run ORM code from an async test; the worker thread's connection is closed after,
    so PostgreSQL can drop the test database at the end."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    return sync_to_async(run, thread_sensitive=True)


def tone(ms: int, rate: int = 8000, freq: float = 440.0, amp: int = 8000, phase: int = 0) -> bytes:
    n = rate * ms // 1000
    return struct.pack(f"<{n}h", *(int(amp * math.sin(2 * math.pi * freq * (i + phase) / rate)) for i in range(n)))


def ramp(n_samples: int, start: int = 0) -> bytes:
    """Distinct, byte-checkable PCM: sample i = (start + i) mod 65536 as int16."""
    return struct.pack(f"<{n_samples}h", *(((start + i + 32768) % 65536) - 32768 for i in range(n_samples)))


@dataclass
class Customer:
    """A customer service: records every message; behaviour set per test."""

    port: int = 0
    refuse_first: int = 0  # answer the first N upgrades with HTTP 503
    never_read: bool = False
    close_after: int | None = None  # close after N received messages
    reply: Callable[[ServerConnection, dict[str, Any]], Awaitable[None]] | None = None
    attempts: int = 0
    connections: list[list[dict[str, Any]]] = field(default_factory=list)
    headers: list[Headers] = field(default_factory=list)
    server: Server | None = None
    ws: list[ServerConnection] = field(default_factory=list)
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://localhost:{self.port}/ws" if self.tls else f"ws://127.0.0.1:{self.port}/ws"

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [m for conn in self.connections for m in conn]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("event") == name]

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.attempts += 1
        self.headers.append(request.headers)
        if self.attempts <= self.refuse_first:
            return conn.respond(503, "not yet\n")
        return None

    async def _handler(self, conn: ServerConnection) -> None:
        received: list[dict[str, Any]] = []
        self.connections.append(received)
        self.ws.append(conn)
        if self.never_read:  # the library reads max_queue messages, then stops reading the socket
            await conn.wait_closed()
            return
        async for raw in conn:
            message = json.loads(raw)
            received.append(message)
            if self.reply is not None:
                await self.reply(conn, message)
            if self.close_after is not None and len(received) >= self.close_after:
                await conn.close(1000, "enough")
                return

    async def __aenter__(self) -> Customer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.never_read:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = await serve(
            self._handler,
            sock=sock,
            process_request=self._process_request,
            max_queue=1 if self.never_read else 1024,
            max_size=None,
            compression=None,
            ssl=self.tls,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        if self.never_read:  # its closing handshake would wait out the close timeout
            for conn in self.ws:
                conn.transport.abort()
        self.server.close()
        await self.server.wait_closed()


def basic_auth(auth_id: str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{auth_id}:{token}".encode()).decode()}


@dataclass
class Gateway:
    """A mod_audio_fork-style gateway: metadata TEXT, then BINARY L16 frames on a clock.

    By default it offers jambonz's subprotocol, so the hub takes it to play audio back (two-way);
    `subprotocol="audio.drachtio.org"` is FreeSWITCH's default, one-way unless the metadata says
    `"playback": true`.
    """

    url: str
    headers: dict[str, str]
    subprotocol: str | None = "audio.jambonz.org"
    ws: ClientConnection | None = None
    received: list[bytes | str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def open(self, metadata: dict[str, Any] | str | None = None) -> Gateway:
        self.ws = await connect(
            self.url,
            additional_headers=self.headers,
            subprotocols=[self.subprotocol] if self.subprotocol else None,  # type: ignore[list-item]
            max_size=None,
            compression=None,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        if metadata is not None:
            await self.ws.send(metadata if isinstance(metadata, str) else json.dumps(metadata))
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                self.received.append(message)
        except Exception:
            return

    async def send_frames(self, pcm: bytes, frame_bytes: int = 320, interval: float = 0.02) -> None:
        """Send `pcm` cut into frames on an absolute clock (interval 0: as fast as possible)."""
        assert self.ws is not None
        start = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), frame_bytes)):
            if interval:
                delay = start + k * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.ws.send(pcm[i : i + frame_bytes])

    async def send(self, message: bytes | str) -> None:
        assert self.ws is not None
        await self.ws.send(message)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)

    async def closed_by_hub(self, timeout: float = 30) -> int | None:
        """Wait until the hub has closed the connection and every message it sent before is in
        `received` (the close code is set as the close frame arrives, while messages before it may
        still wait for the reader); the close code."""
        assert self.ws is not None and self._reader is not None
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.ws.close_code

    @property
    def audio(self) -> bytes:
        return b"".join(m for m in self.received if isinstance(m, bytes))

    @property
    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in self.received if isinstance(m, str)]


@dataclass
class TimedGateway(Gateway):
    """A Gateway that also records the arrival time of every message from the hub."""

    arrivals: list[tuple[float, bytes | str]] = field(default_factory=list)

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                self.received.append(message)
                self.arrivals.append((time.monotonic(), message))
        except Exception:
            return


class TimedCustomer(Customer):
    """A Customer that also records when each playedStream (by name) and clearedAudio arrived."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.times: dict[str, float] = {}

    async def __aenter__(self) -> TimedCustomer:
        await super().__aenter__()
        return self

    async def _handler(self, conn: ServerConnection) -> None:
        received: list[dict[str, Any]] = []
        self.connections.append(received)
        self.ws.append(conn)
        async for raw in conn:
            message = json.loads(raw)
            received.append(message)
            if message.get("event") in ("playedStream", "clearedAudio"):
                self.times[message.get("name", message["event"])] = time.monotonic()
            if self.reply is not None:
                await self.reply(conn, message)


def scrape(url: str, token: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A /metrics page as {(sample name, sorted labels): value}, parsed with prometheus-client's parser."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(url, headers=headers, timeout=10)
    response.raise_for_status()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
