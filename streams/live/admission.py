"""Admission control: a hub process takes calls up to a configured capacity, then refuses new
gateway connections on the upgrade so admitted calls keep their latency.

Capacity is counted in weight, not calls: a one-way stream relays 50 frames a second and
weighs 1; a bidirectional one also plays 50 frames a second back into the call and weighs
STREAMHUB_BIDI_STREAM_WEIGHT (2.7 by default: a bidirectional call's 100 frames a second cost
≈ 49 µs each against ≈ 36 µs for a one-way call's 50; bench/RESULTS.md). A call's weight is
only known once its metadata is read, so admission has two steps: a connection takes one unit
on the upgrade (refused: HTTP 503 under uvicorn, close 4503 under daphne), then, before
anything is written to the database, the call grows to its streams' weight or is refused
(close 4503 with a reason). Streams started later over REST add their weight to the call
(they are never refused: the call is already here).

Capacity is an estimate; the event loop's lag is the measurement. The loop-lag guard refuses
new connections (same refusal as at capacity, with its own reason) while the loop's sustained
lag (`looplag.sustained_lag()`: the median of the last second's ticks) is over
STREAMHUB_ADMIT_MAX_LOOP_LAG_SECONDS (50 ms by default), and keeps refusing until it has
recovered to half of that: admitted calls keep their latency when the configured capacity
was too generous for this machine, and a loop near the limit does not flap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from streams.live import looplag

CONNECTION_WEIGHT = 1.0


@dataclass
class Admission:
    limit: int
    bidi_weight: float = 2.7
    live: int = 0  # admitted connections
    used: float = 0.0  # their weight
    admitted_total: int = 0  # since the process started, for /metrics
    refused_total: int = 0  # all refusals, the loop-lag guard's included
    max_lag: float = 0.0  # seconds of sustained loop lag that stop admission; 0 turns the guard off
    lag_source: Callable[[], float] = field(default=looplag.sustained_lag, repr=False)
    lagging: bool = False  # the guard is refusing, until the lag falls under max_lag / 2
    lag_refused_total: int = 0

    def overloaded(self) -> bool:
        """The loop-lag guard: whether the loop lags too much to take another call now."""
        if not self.max_lag:
            return False
        lag = self.lag_source()
        self.lagging = lag > (self.max_lag / 2 if self.lagging else self.max_lag)
        return self.lagging

    def refuse_overloaded(self) -> None:
        """Count a connection refused by the loop-lag guard."""
        self.refused_total += 1
        self.lag_refused_total += 1

    def try_admit(self) -> bool:
        """The first step, on the upgrade: one connection of the smallest weight."""
        if self.used + CONNECTION_WEIGHT > self.limit + 1e-9:
            self.refused_total += 1
            return False
        self.live += 1
        self.used += CONNECTION_WEIGHT
        self.admitted_total += 1
        return True

    def try_grow(self, extra: float) -> bool:
        """The second step, once the metadata is read: the call's weight beyond its connection."""
        if extra > 0 and self.used + extra > self.limit + 1e-9:
            self.refused_total += 1
            return False
        self.used += max(0.0, extra)
        return True

    def grow(self, extra: float) -> None:
        """Weight added to a call already here (a stream started over REST): never refused."""
        self.used += extra

    def release(self, weight: float = CONNECTION_WEIGHT) -> None:
        """A connection ends: its whole weight is free again."""
        self.live = max(0, self.live - 1)
        self.used = max(0.0, self.used - weight)

    def stream_weight(self, bidirectional: bool) -> float:
        return self.bidi_weight if bidirectional else 1.0

    def call_weight(self, bidirectional: Iterable[bool]) -> float:
        """A call weighs its streams (at least one connection's weight: the ingest costs too)."""
        return max(CONNECTION_WEIGHT, sum(self.stream_weight(b) for b in bidirectional))

    @property
    def ready(self) -> bool:
        return self.used + CONNECTION_WEIGHT <= self.limit + 1e-9


def _from_settings() -> Admission:
    from django.conf import settings

    return Admission(
        limit=settings.STREAMHUB_MAX_CALLS,
        bidi_weight=settings.STREAMHUB_BIDI_STREAM_WEIGHT,
        max_lag=settings.STREAMHUB_ADMIT_MAX_LOOP_LAG_SECONDS,
    )


class _Lazy:
    _value: Admission | None = None

    @staticmethod
    def _get() -> Admission:
        if _Lazy._value is None:
            _Lazy._value = _from_settings()
        return _Lazy._value

    def __getattr__(self, name: str) -> object:
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self._get(), name, value)


admission: Admission = _Lazy()  # type: ignore[assignment]
