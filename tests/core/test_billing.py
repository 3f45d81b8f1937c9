from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from streams.core.billing import bill, stepless_end, whole_seconds

T0 = datetime(2025, 11, 25, 10, 0, 0, tzinfo=UTC)
RATE = Decimal("0.003")


@pytest.mark.parametrize(
    ("seconds", "bill_duration", "rounded", "amount"),
    [
        (0, 0, 60, "0.00300"),
        (1, 1, 60, "0.00300"),
        (0.2, 1, 60, "0.00300"),
        (21, 21, 60, "0.00300"),
        (27, 27, 60, "0.00300"),
        (60, 60, 60, "0.00300"),
        (60.001, 61, 120, "0.00600"),
        (61, 61, 120, "0.00600"),
        (3599, 3599, 3600, "0.18000"),
        (86400, 86400, 86400, "4.32000"),
    ],
)
def test_it_bills_a_connected_stream_per_started_minute(
    seconds: float, bill_duration: int, rounded: int, amount: str
) -> None:
    charge = bill(start=T0, end=T0 + timedelta(seconds=seconds), rate_per_minute=RATE)
    assert (charge.bill_duration, charge.rounded_bill_duration, charge.billed_amount) == (
        bill_duration,
        rounded,
        Decimal(amount),
    )


def test_a_stream_that_never_connected_bills_nothing() -> None:
    charge = bill(start=None, end=T0, rate_per_minute=RATE)
    assert (charge.bill_duration, charge.rounded_bill_duration, charge.billed_amount) == (0, 0, Decimal("0"))


def test_the_interval_is_settable() -> None:
    charge = bill(start=T0, end=T0 + timedelta(seconds=31), rate_per_minute=Decimal("0.006"), interval=30)
    assert charge.rounded_bill_duration == 60
    assert charge.billed_amount == Decimal("0.00600")
    charge = bill(start=T0, end=T0 + timedelta(seconds=29), rate_per_minute=Decimal("0.006"), interval=30)
    assert (charge.rounded_bill_duration, charge.billed_amount) == (30, Decimal("0.00300"))


def test_amount_has_five_decimal_places() -> None:
    charge = bill(start=T0, end=T0 + timedelta(seconds=5), rate_per_minute=Decimal("0.0012345"))
    assert charge.billed_amount.as_tuple().exponent == -5
    assert charge.billed_amount == Decimal("0.00123")


def test_a_zero_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        bill(start=T0, end=T0, rate_per_minute=RATE, interval=0)


def test_whole_seconds_round_up_and_ignore_reversed_times() -> None:
    assert whole_seconds(T0, T0 + timedelta(milliseconds=1001)) == 2
    assert whole_seconds(T0 + timedelta(seconds=5), T0) == 0
    assert whole_seconds(None, T0) == 0


T1 = T0 + timedelta(seconds=10)  # a stream that started at T0 and ran 10 s by the monotonic clock


@pytest.mark.parametrize(
    ("wall_now", "end"),
    [
        (T1, T1),  # no step: the two clocks agree
        (T1 + timedelta(hours=1), T1),  # stepped forward: the hour that never passed is not billed
        (T1 - timedelta(seconds=4), T1 - timedelta(seconds=4)),  # stepped back: never after now
    ],
)
def test_an_end_follows_the_monotonic_clock_but_never_passes_now(wall_now: datetime, end: datetime) -> None:
    assert stepless_end(start=T0, elapsed=10.0, now=wall_now) == end


def test_an_end_is_never_before_its_start() -> None:
    assert stepless_end(start=T0, elapsed=-0.5, now=T1) == T0
