"""Stream billing (decision D20). Pure: no ORM, no clock.

bill_duration          whole seconds from start to end, rounded up
rounded_bill_duration  bill_duration rounded up to the billing interval, at least one
                       interval for a stream that connected; 0 for one that never did
billed_amount          rounded_bill_duration / 60 × rate per minute, 5 decimal places
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

AMOUNT_PLACES = Decimal("0.00001")


@dataclass(frozen=True)
class Bill:
    bill_duration: int
    rounded_bill_duration: int
    billed_amount: Decimal


def whole_seconds(start: datetime | None, end: datetime | None) -> int:
    if start is None or end is None or end <= start:
        return 0
    return math.ceil((end - start).total_seconds() - 1e-9)


def stepless_end(*, start: datetime, elapsed: float, now: datetime) -> datetime:
    """When a stream that started at `start` (wall clock) ends, `elapsed` seconds later by the
    monotonic clock, with the wall clock reading `now`.

    The wall clock can jump (NTP stepping it, a virtual machine resumed, an operator's `date -s`);
    the monotonic clock does not. A jump forward during the stream would bill seconds that never
    passed, so the end is never later than the monotonic clock allows; a jump back is kept (the
    end is never after `now`, so it never outlives the call or the write that records it).
    """
    return min(now, start + timedelta(seconds=max(0.0, elapsed)))


def bill(*, start: datetime | None, end: datetime, rate_per_minute: Decimal, interval: int = 60) -> Bill:
    if interval <= 0:
        raise ValueError("billing interval must be positive")
    if start is None:
        return Bill(0, 0, Decimal("0.00000"))
    seconds = whole_seconds(start, end)
    rounded = max(1, math.ceil(seconds / interval)) * interval
    amount = (Decimal(rounded) / Decimal(60) * Decimal(rate_per_minute)).quantize(AMOUNT_PLACES, ROUND_HALF_UP)
    return Bill(seconds, rounded, amount)
