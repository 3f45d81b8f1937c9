"""Weighted admission, the accounting alone (streams/live/admission.py)."""

from __future__ import annotations

from streams.live.admission import Admission


def test_two_steps_a_connection_unit_then_the_calls_weight() -> None:
    adm = Admission(limit=4, bidi_weight=2.0)
    assert adm.try_admit() and adm.used == 1  # the upgrade: one unit
    assert adm.try_grow(adm.call_weight([True, False]) - 1)  # bidirectional + one-way: 3
    assert adm.used == 3 and adm.ready
    assert adm.try_admit() and adm.used == 4 and not adm.ready
    assert not adm.try_admit()  # no unit left for a third connection
    assert not adm.try_grow(1.0)  # nor for the second call's bidirectional stream
    adm.release(1.0)
    adm.release(3.0)
    assert adm.used == 0 and adm.live == 0


def test_a_call_weighs_at_least_its_connection_and_streams_over_rest_always_count() -> None:
    adm = Admission(limit=1, bidi_weight=2.5)
    assert adm.call_weight([]) == 1.0 and adm.call_weight([True]) == 2.5 and adm.call_weight([False, False]) == 2
    assert adm.try_admit() and adm.try_grow(adm.call_weight([]) - 1)
    adm.grow(adm.stream_weight(True))  # started over REST: the call is here, never refused
    assert adm.used == 3.5 and not adm.ready
    adm.release(3.5)
    assert adm.ready


def test_the_loop_lag_guard_refuses_over_its_limit_and_until_the_lag_is_half_of_it() -> None:
    lag = [0.0]
    adm = Admission(limit=10, max_lag=0.05, lag_source=lambda: lag[0])
    assert not adm.overloaded()
    lag[0] = 0.049
    assert not adm.overloaded()  # under the limit
    lag[0] = 0.051
    assert adm.overloaded() and adm.lagging
    lag[0] = 0.03
    assert adm.overloaded()  # recovering, not yet recovered: no flapping around the limit
    lag[0] = 0.024
    assert not adm.overloaded() and not adm.lagging
    adm.refuse_overloaded()
    assert adm.refused_total == adm.lag_refused_total == 1 and adm.used == 0  # a refusal holds no capacity


def test_the_loop_lag_guard_is_off_at_zero() -> None:
    adm = Admission(limit=1, max_lag=0.0, lag_source=lambda: 10.0)
    assert not adm.overloaded() and adm.try_admit()
