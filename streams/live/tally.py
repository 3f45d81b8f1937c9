"""This hub process's event counts, as plain ints: what the relay's hooks touch.

The audio path counts nothing here: frames and bytes are counted on each relay (plain int
attributes it already keeps), and `streams.live.metrics` adds the live relays' counts to
the totals folded in here when a relay ends, at scrape time. What is counted here happens
a few times per stream (a connect attempt, a DegradedStream, an end), so one dict update
each is all it costs; prometheus-client is not touched outside a scrape.
"""

from __future__ import annotations

import ssl
from collections import Counter
from typing import Protocol

from picows import WSHandshakeError, WSInvalidStatusError

from streams import services
from streams.models import Stream

CONNECTION_ERROR = str(Stream.Reason.CONNECTION_ERROR)


class StreamRelay(Protocol):
    """What is counted of a relay (live.relay.StreamRelay; not imported: the relay imports this module)."""

    end_reason: str | None
    end_error: str
    frames_sent: int
    bytes_sent: int
    played_ms: int
    gateway_rate: int


class Tally:
    def __init__(self) -> None:
        self.connect_attempts = 0
        self.connect_failures: Counter[str] = Counter()
        self.ends: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.degraded: Counter[int] = Counter()
        # the counts of relays that ended (live ones are read from the relays themselves)
        self.frames_sent = 0
        self.bytes_sent = 0
        self.played_frames = 0
        self.played_bytes = 0


tally = Tally()


def connect_failure_cause(exc: BaseException) -> str:
    """A label for why dialing the customer failed (mirrors relay.describe_connect_error)."""
    if isinstance(exc, WSInvalidStatusError):
        return "http_status"
    if isinstance(exc, WSHandshakeError):
        return "handshake"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError):
        return "network"
    return "other"


def drop_cause(error: str) -> str:
    """Why a stream ended with "Connection error" (the relay's end_error)."""
    if error == services.DROPPED_SLOW:
        return "slow_consumer"
    if error.startswith("could not connect"):
        return "connect_failed"
    if error.startswith("internal error"):
        return "internal"
    return "disconnected"


def connect_attempt() -> None:
    tally.connect_attempts += 1


def connect_failed(exc: BaseException) -> None:
    tally.connect_failures[connect_failure_cause(exc)] += 1


def degraded(usage: int) -> None:
    tally.degraded[usage] += 1


def played_bytes(relay: StreamRelay) -> int:
    return (relay.played_ms // 20) * relay.gateway_rate // 50 * 2


def relay_finished(relay: StreamRelay) -> None:
    """Fold an ending relay's counts into the process totals, once, right before it leaves its call."""
    reason = relay.end_reason or CONNECTION_ERROR
    tally.ends[reason] += 1
    if reason == CONNECTION_ERROR:
        tally.dropped[drop_cause(relay.end_error)] += 1
    tally.frames_sent += relay.frames_sent
    tally.bytes_sent += relay.bytes_sent
    tally.played_frames += relay.played_ms // 20
    tally.played_bytes += played_bytes(relay)
