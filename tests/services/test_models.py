from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from streams import services
from streams.core.validation import validate_stream_params
from streams.models import Account, Call, Stream

URL = "wss://bot.example.com/ws"


@pytest.fixture
def call(account: Account) -> Call:
    return services.call_open(account=account, call_uuid="0d6a2b8e-5d7c-4b1a-9a63-1f0c2e9d4b10")


def make_stream(call: Call, **params: object) -> Stream:
    return services.stream_create(
        call=call, params=validate_stream_params({"service_url": URL, **params}), notify_session=False
    )


def test_accounts_get_plivo_style_credentials(account: Account) -> None:
    assert re.fullmatch(r"MA[A-Z0-9]{18}", account.auth_id)
    assert len(account.auth_token) == 40
    assert account.auth_token not in repr(account) and account.auth_token not in str(account)
    assert account.auth_token not in account.masked_token


def test_a_second_active_stream_to_the_same_url_is_refused(call: Call) -> None:
    make_stream(call)
    with pytest.raises(services.StreamConflict):
        make_stream(call)
    make_stream(call, service_url="wss://other.example.com/ws")


def test_a_call_has_at_most_the_configured_number_of_active_streams(call: Call, settings: Any) -> None:
    assert settings.STREAMHUB_MAX_STREAMS_PER_CALL == 5  # the documented default
    streams = [make_stream(call, service_url=f"{URL}?n={n}") for n in range(5)]
    with pytest.raises(services.TooManyStreams, match="already has 5 active streams"):
        make_stream(call, service_url=f"{URL}?n=5")
    assert Stream.objects.filter(call=call).count() == 5
    services.stream_end(stream=streams[0], reason=Stream.Reason.API_REQUEST, notify_session=False)
    make_stream(call, service_url=f"{URL}?n=5")  # an ended stream frees its place
    settings.STREAMHUB_MAX_STREAMS_PER_CALL = 1
    with pytest.raises(services.TooManyStreams, match="already has 1 active streams"):
        make_stream(call, service_url=f"{URL}?n=6")


def test_an_ended_stream_frees_its_url(call: Call) -> None:
    first = make_stream(call)
    assert services.stream_end(stream=first, reason=Stream.Reason.API_REQUEST, notify_session=False)
    second = make_stream(call)
    assert second.pk != first.pk


def test_a_stream_ends_exactly_once(call: Call) -> None:
    stream = make_stream(call)
    assert services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
    assert not services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    stream.refresh_from_db()
    assert stream.hangup_reason == "Call hangup"
    assert stream.status == "stopped"
    assert [e.event for e in stream.events.all()] == ["StreamCreated", "StopStream"]


def test_connection_errors_fail_the_stream_and_others_stop_it(call: Call) -> None:
    failed = make_stream(call)
    services.stream_end(stream=failed, reason=Stream.Reason.CONNECTION_ERROR, error="refused", notify_session=False)
    failed.refresh_from_db()
    assert (failed.status, failed.hangup_reason, failed.last_error) == ("failed", "Connection error", "refused")
    assert failed.events.last().event == "DroppedStream"
    assert failed.events.last().params["Error"] == "refused"


def test_ending_fills_billing_from_the_start_time(call: Call) -> None:
    stream = make_stream(call)
    assert services.stream_mark_started(stream=stream)
    Stream.objects.filter(pk=stream.pk).update(start_time=timezone.now() - timedelta(seconds=27))
    services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    stream.refresh_from_db()
    assert stream.bill_duration in (27, 28)
    assert stream.rounded_bill_duration == 60
    assert stream.billed_amount == Decimal("0.00300")
    assert stream.end_time is not None and stream.duration is not None


def test_a_stream_that_never_started_bills_zero(call: Call) -> None:
    stream = make_stream(call)
    services.stream_end(stream=stream, reason=Stream.Reason.CONNECTION_ERROR, notify_session=False)
    stream.refresh_from_db()
    assert (stream.bill_duration, stream.rounded_bill_duration, stream.billed_amount) == (0, 0, Decimal(0))


def test_the_database_refuses_an_ended_stream_without_a_reason(call: Call) -> None:
    stream = make_stream(call)
    with pytest.raises(IntegrityError), transaction.atomic():
        Stream.objects.filter(pk=stream.pk).update(status="stopped", end_time=timezone.now())


def test_the_database_refuses_bidirectional_outbound(call: Call) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Stream.objects.create(call=call, account=call.account, service_url=URL, bidirectional=True, audio_track="both")


def test_the_database_refuses_a_live_call_with_an_end(call: Call) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Call.objects.filter(pk=call.pk).update(ended_at=timezone.now())


def test_hangup_ends_every_active_stream_then_the_call(call: Call) -> None:
    a = make_stream(call)
    b = make_stream(call, service_url="wss://b.example.com/ws")
    services.stream_end(stream=b, reason=Stream.Reason.API_REQUEST, notify_session=False)
    ended = services.call_end(call=call, notify_session=False)
    assert [s.pk for s in ended] == [a.pk]
    call.refresh_from_db()
    assert call.status == "ended" and call.ended_at is not None
    with pytest.raises(services.CallNotLive):
        make_stream(call, service_url="wss://c.example.com/ws")


def test_debug_log_params_carry_the_seed_fields(call: Call) -> None:
    stream = make_stream(call, status_callback_url="https://app.example.com/cb")
    services.stream_mark_started(stream=stream)
    params = stream.events.get(event="StartStream").params
    for key in (
        "CallUUID",
        "Event",
        "From",
        "ParentAuthID",
        "ServiceURL",
        "StreamID",
        "Timestamp",
        "To",
        "status_callback_method",
        "status_callback_url",
    ):
        assert key in params
    assert params["ParentAuthID"] == call.account.auth_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", params["Timestamp"])
