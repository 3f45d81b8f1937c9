"""Console actions: each confirms first, acts through streams.services, and says what it did.

A read-only viewer (view permissions only) is offered none of them and is refused when it
posts them anyway; an operator (change permissions) can use them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse

from callbacks.models import CallbackDelivery
from streams.console.views import MAX_ACTION_OBJECTS
from streams.models import Account, Call, Stream
from tests.callbacks.receiver import Receiver, running_receiver
from tests.conftest import Proc
from tests.console.conftest import PASSWORD, bulk_streams, open_call, start_stream

STREAMS = reverse("admin:streams_stream_changelist")
CALLS = reverse("admin:streams_call_changelist")
DELIVERIES = reverse("admin:callbacks_callbackdelivery_changelist")


def texts(response: HttpResponse) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def act(client: Client, url: str, action: str, pks: list[int], *, confirm: bool) -> HttpResponse:
    data: dict[str, object] = {"action": action, "_selected_action": [str(pk) for pk in pks]}
    if confirm:
        data["post"] = "yes"
    return client.post(url, data, follow=confirm)


# --- stop streams -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_stopping_streams_asks_first_then_stops_the_live_ones(
    operator_client: Client, live_stream: Stream, ended_stream: Stream
) -> None:
    asked = act(operator_client, STREAMS, "stop_selected", [live_stream.pk, ended_stream.pk], confirm=False)
    assert asked.status_code == 200
    html = asked.content.decode()
    assert "Stop these streams?" in html and "will be left alone" in html
    assert Stream.objects.get(pk=live_stream.pk).status == "in-progress"

    done = act(operator_client, STREAMS, "stop_selected", [live_stream.pk, ended_stream.pk], confirm=True)
    live_stream.refresh_from_db()
    assert live_stream.status == "stopped" and live_stream.hangup_reason == "API request"
    assert live_stream.end_time is not None and live_stream.rounded_bill_duration == 60
    assert [e.event for e in live_stream.events.all()][-1] == "StopStream"
    messages = texts(done)
    assert f"Stopped 1 stream (reason “API request”): {live_stream.stream_id}." in messages
    assert f"1 stream had already ended and was left alone: {ended_stream.stream_id}." in messages
    assert LogEntry.objects.filter(object_id=str(live_stream.pk), change_message__contains="Stopped").count() == 1


@pytest.mark.django_db
def test_the_stream_page_stop_button_confirms_then_stops(operator_client: Client, live_stream: Stream) -> None:
    page = operator_client.get(reverse("admin:streams_stream_change", args=[live_stream.pk])).content.decode()
    stop_url = reverse("admin:streams_stream_stop", args=[live_stream.pk])
    assert f'href="{stop_url}"' in page
    assert "Stop this stream?" in operator_client.get(stop_url).content.decode()
    assert Stream.objects.get(pk=live_stream.pk).is_active
    done = operator_client.post(stop_url, {"post": "yes"}, follow=True)
    assert Stream.objects.get(pk=live_stream.pk).hangup_reason == "API request"
    assert any("Stopped 1 stream" in m for m in texts(done))
    assert "stop-stream-link" not in done.content.decode()  # an ended stream has no Stop button


@pytest.mark.django_db
def test_a_viewer_cannot_stop_streams(viewer_client: Client, live_stream: Stream) -> None:
    forged = act(viewer_client, STREAMS, "stop_selected", [live_stream.pk], confirm=True)
    assert forged.status_code == 200 and texts(forged) == []  # no actions at all: the post is just a list view
    stop_url = reverse("admin:streams_stream_stop", args=[live_stream.pk])
    assert viewer_client.get(stop_url).status_code == 403
    assert viewer_client.post(stop_url, {"post": "yes"}).status_code == 403
    assert Stream.objects.get(pk=live_stream.pk).is_active


# --- hang up calls ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_hanging_up_a_call_ends_its_streams_with_call_hangup(operator_client: Client, account: Account) -> None:
    call = open_call(account)
    first = start_stream(call)
    second = start_stream(call, service_url="wss://other.example.com/ws", started=False)
    ended = open_call(account)
    Call.objects.filter(pk=ended.pk).update(status="ended", ended_at=ended.started_at)

    asked = act(operator_client, CALLS, "hangup_selected", [call.pk, ended.pk], confirm=False)
    assert "Hang up these calls?" in asked.content.decode()
    assert Call.objects.get(pk=call.pk).status == "live"

    done = act(operator_client, CALLS, "hangup_selected", [call.pk, ended.pk], confirm=True)
    assert Call.objects.get(pk=call.pk).status == "ended"
    for stream in (first, second):
        stream.refresh_from_db()
        assert stream.hangup_reason == "Call hangup" and not stream.is_active
    messages = texts(done)
    assert f"Hung up 1 call: {call.call_uuid}; 2 streams ended with “Call hangup”." in messages
    assert f"1 call had already ended and was left alone: {ended.call_uuid}." in messages


@pytest.mark.django_db
def test_the_call_page_hang_up_button_confirms_then_hangs_up(operator_client: Client, call: Call) -> None:
    url = reverse("admin:streams_call_hangup", args=[call.pk])
    assert f'href="{url}"' in operator_client.get(reverse("admin:streams_call_change", args=[call.pk])).content.decode()
    assert "Hang up this call?" in operator_client.get(url).content.decode()
    done = operator_client.post(url, {"post": "yes"}, follow=True)
    assert Call.objects.get(pk=call.pk).status == "ended"
    assert any(m.startswith("Hung up 1 call") for m in texts(done))


@pytest.mark.django_db
def test_a_viewer_cannot_hang_up(viewer_client: Client, call: Call) -> None:
    assert texts(act(viewer_client, CALLS, "hangup_selected", [call.pk], confirm=True)) == []
    page = viewer_client.get(reverse("admin:streams_call_change", args=[call.pk])).content.decode()
    assert "hangup-link" not in page and "start-stream-link" not in page
    assert viewer_client.post(reverse("admin:streams_call_hangup", args=[call.pk]), {"post": "yes"}).status_code == 403
    assert Call.objects.get(pk=call.pk).status == "live"


# --- start a stream ---------------------------------------------------------------------------


def form_data(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "service_url": "wss://new.example.com/ws",
        "audio_track": "inbound",
        "content_type": "audio/x-mulaw;rate=8000",
        "stream_timeout": "120",
        "status_callback_url": "",
        "status_callback_method": "POST",
        "extra_headers": "",
        "noise_cancellation_level": "85",
    }
    data.update(overrides)
    return data


@pytest.mark.django_db
def test_starting_a_stream_from_the_call_page_creates_it_through_the_service(
    operator_client: Client, call: Call
) -> None:
    url = reverse("admin:streams_call_start_stream", args=[call.pk])
    assert 'id="start_stream_form"' in operator_client.get(url).content.decode()
    done = operator_client.post(url, form_data(bidirectional="on", extra_headers="tenant=acme"), follow=True)
    stream = Stream.objects.get(call=call)
    assert done.redirect_chain[-1][0] == reverse("admin:streams_stream_change", args=[stream.pk])
    assert stream.status == "initiated" and stream.bidirectional and stream.extra_headers == "tenant=acme"
    assert stream.content_type == "audio/x-mulaw;rate=8000" and stream.stream_timeout == 120
    assert [e.event for e in stream.events.all()] == ["StreamCreated"]
    assert f"Started stream {stream.stream_id} to wss://new.example.com/ws on call {call.call_uuid}" in texts(done)[0]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"service_url": "https://bot.example.com/"}, "service_url must be a ws:// or wss:// URL"),
        ({"bidirectional": "on", "audio_track": "both"}, "audio_track must be inbound when bidirectional is true"),
        ({"stream_timeout": "0"}, "stream_timeout must be a positive integer"),
        ({"extra_headers": "a=b;c"}, "keys and values may contain only A-Z, a-z and 0-9"),
        ({"noise_cancellation_level": "101"}, "noise_cancellation_level must be between 60 and 100"),
        ({"status_callback_url": "ftp://x"}, "status_callback_url must be an http:// or https:// URL"),
    ],
)
def test_the_start_form_uses_the_apis_validation(
    operator_client: Client, call: Call, overrides: dict[str, str], message: str
) -> None:
    response = operator_client.post(reverse("admin:streams_call_start_stream", args=[call.pk]), form_data(**overrides))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Stream.objects.filter(call=call).exists()


@pytest.mark.django_db
def test_the_start_form_refuses_a_second_active_stream_to_the_same_url(operator_client: Client, call: Call) -> None:
    start_stream(call, service_url="wss://new.example.com/ws")
    response = operator_client.post(reverse("admin:streams_call_start_stream", args=[call.pk]), form_data())
    assert "A stream to this URL is already active on this call." in response.content.decode()
    assert Stream.objects.filter(call=call).count() == 1


@pytest.mark.django_db
def test_the_start_form_refuses_a_stream_beyond_the_per_call_limit(operator_client: Client, call: Call) -> None:
    for n in range(5):
        start_stream(call, service_url=f"wss://new.example.com/ws?n={n}")
    response = operator_client.post(reverse("admin:streams_call_start_stream", args=[call.pk]), form_data())
    assert (
        "No stream was started: this call already has 5 active streams, the most one call may have; "
        "stop one before starting another." in response.content.decode()
    )
    assert Stream.objects.filter(call=call).count() == 5


@pytest.mark.django_db
def test_no_stream_starts_on_an_ended_call(operator_client: Client, call: Call) -> None:
    Call.objects.filter(pk=call.pk).update(status="ended", ended_at=call.started_at)
    response = operator_client.post(
        reverse("admin:streams_call_start_stream", args=[call.pk]), form_data(), follow=True
    )
    assert f"Call {call.call_uuid} has ended; no stream can start on it." in texts(response)
    assert not Stream.objects.filter(call=call).exists()


@pytest.mark.django_db
def test_a_viewer_cannot_start_a_stream(viewer_client: Client, call: Call) -> None:
    url = reverse("admin:streams_call_start_stream", args=[call.pk])
    assert viewer_client.get(url).status_code == 403
    assert viewer_client.post(url, form_data()).status_code == 403
    assert not Stream.objects.filter(call=call).exists()


# --- redeliver callbacks ----------------------------------------------------------------------


@pytest.mark.django_db
def test_redelivering_resets_failed_deliveries_and_queues_them_after_commit(
    operator_client: Client, ended_stream: Stream, django_capture_on_commit_callbacks: Callable
) -> None:
    rows = {d.state: d for d in CallbackDelivery.objects.filter(stream=ended_stream)}
    failed, delivered = rows["failed"], rows["delivered"]
    asked = act(operator_client, DELIVERIES, "redeliver_selected", [failed.pk, delivered.pk], confirm=False)
    assert "Redeliver these callbacks?" in asked.content.decode()
    assert CallbackDelivery.objects.get(pk=failed.pk).state == "failed"

    with django_capture_on_commit_callbacks(execute=False) as queued:
        done = act(operator_client, DELIVERIES, "redeliver_selected", [failed.pk, delivered.pk], confirm=True)
    failed.refresh_from_db()
    assert failed.state == "pending" and failed.attempt_count == 2 and failed.claimed_at is None
    assert failed.budget_offset == 2 and failed.budget_attempts == 0  # a fresh retry budget
    assert failed.attempts.count() == 2  # the history stays
    assert CallbackDelivery.objects.get(pk=delivered.pk).state == "delivered"
    assert len(queued) == 1
    messages = texts(done)
    assert f"Queued 1 callback for redelivery: #{failed.pk}." in messages
    assert f"1 callback had not failed and was left alone: #{delivered.pk}." in messages


@pytest.mark.django_db
def test_redelivering_a_start_after_its_delivered_stop_is_refused_with_the_reason(
    operator_client: Client, ended_stream: Stream
) -> None:
    start, _degraded, stop = CallbackDelivery.objects.filter(stream=ended_stream).order_by("pk")
    CallbackDelivery.objects.filter(pk=start.pk).update(state="failed")
    CallbackDelivery.objects.filter(pk=stop.pk).update(state="delivered")
    done = act(operator_client, DELIVERIES, "redeliver_selected", [start.pk], confirm=True)
    assert texts(done) == [
        f"#{start.pk} was not redelivered: #{stop.pk} StopStream of the same stream was already delivered; "
        f"sent now, #{start.pk} StartStream would reach the receiver after it."
    ]
    assert CallbackDelivery.objects.get(pk=start.pk).state == "failed"


@pytest.mark.django_db
def test_a_viewer_cannot_redeliver(viewer_client: Client, ended_stream: Stream) -> None:
    failed = CallbackDelivery.objects.get(stream=ended_stream, state="failed")
    response = act(viewer_client, DELIVERIES, "redeliver_selected", [failed.pk], confirm=True)
    assert texts(response) == []
    assert CallbackDelivery.objects.get(pk=failed.pk).state == "failed"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_redelivered_callback_reaches_the_customer_once_through_the_worker(
    account: Account, operator: object, celery_worker_proc: Proc
) -> None:
    with running_receiver() as receiver:
        url = receiver.url("/status", account.auth_token, default=200)
        call = open_call(account)
        stream = start_stream(call, status_callback_url=url)
        receiver.wait(lambda: len(receiver.hits_for("/status")) == 1, 20, "the StartStream callback")
        delivery = CallbackDelivery.objects.get(stream=stream, event="StartStream")
        _wait_for(lambda: CallbackDelivery.objects.get(pk=delivery.pk).state == "delivered")
        # As if every try had failed: the operator fixed the endpoint and sends it again.
        CallbackDelivery.objects.filter(pk=delivery.pk).update(state="failed", last_error="HTTP 500")

        client = Client()
        assert client.login(username="operator", password=PASSWORD)
        act(client, DELIVERIES, "redeliver_selected", [delivery.pk], confirm=True)
        receiver.wait(lambda: len(receiver.hits_for("/status")) == 2, 20, "the redelivered callback")
        _wait_for(lambda: CallbackDelivery.objects.get(pk=delivery.pk).state == "delivered")
        hits = receiver.hits_for("/status")
        assert hits[1].params["Event"] == "StartStream" and hits[1].signature_ok
        assert hits[1].webhook_id == hits[0].webhook_id == str(delivery.idempotency_id)
        assert [a.number for a in CallbackDelivery.objects.get(pk=delivery.pk).attempts.all()] == [1, 2]
        assert isinstance(receiver, Receiver)


def _wait_for(check: Callable[[], bool], timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


# --- accounts ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_account_pages_never_show_a_token_in_full(su_client: Client, account: Account) -> None:
    for url in (
        reverse("admin:streams_account_changelist"),
        reverse("admin:streams_account_change", args=[account.pk]),
    ):
        html = su_client.get(url).content.decode()
        assert account.auth_token not in html and account.ingest_token not in html
        assert account.masked_token in html


@pytest.mark.django_db
def test_the_account_form_cannot_set_a_token(su_client: Client, account: Account) -> None:
    su_client.post(
        reverse("admin:streams_account_change", args=[account.pk]),
        {"name": "Acme 2", "rate_per_minute": "0.004", "is_active": "on", "auth_token": "chosen-by-hand"},
    )
    fresh = Account.objects.get(pk=account.pk)
    assert fresh.name == "Acme 2" and fresh.auth_token == account.auth_token


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["auth_token", "ingest_token"])
def test_rotating_a_token_replaces_it_and_shows_only_the_masked_value(
    su_client: Client, account: Account, other_account: Account, field: str
) -> None:
    old = getattr(account, field)
    asked = act(su_client, reverse("admin:streams_account_changelist"), f"rotate_{field}", [account.pk], confirm=False)
    assert "Rotate the" in asked.content.decode()
    assert getattr(Account.objects.get(pk=account.pk), field) == old

    done = act(su_client, reverse("admin:streams_account_changelist"), f"rotate_{field}", [account.pk], confirm=True)
    new = getattr(Account.objects.get(pk=account.pk), field)
    assert new != old and len(new) >= 32
    assert getattr(Account.objects.get(pk=other_account.pk), field) == getattr(other_account, field)
    html = done.content.decode()
    assert new not in html and old not in html
    message = texts(done)[0]
    assert f"now {new[:4]}…{new[-2:]}" in message and new not in message
    assert "manage.py account_credentials" in message


@pytest.mark.django_db
def test_operators_cannot_rotate_tokens(operator_client: Client, account: Account) -> None:
    url = reverse("admin:streams_account_changelist")
    assert "rotate_auth_token" not in operator_client.get(url).content.decode()
    response = act(operator_client, url, "rotate_auth_token", [account.pk], confirm=True)
    assert response.status_code == 200 and texts(response) == []
    assert Account.objects.get(pk=account.pk).auth_token == account.auth_token


@pytest.mark.django_db
def test_an_action_on_too_many_streams_is_refused(operator_client: Client, account: Account) -> None:
    bulk_streams(account, MAX_ACTION_OBJECTS, calls=10)
    live = start_stream(open_call(account))
    data = {"action": "stop_selected", "_selected_action": [str(live.pk)], "select_across": "1", "post": "yes"}
    response = operator_client.post(STREAMS, data, follow=True)
    assert (
        f"{MAX_ACTION_OBJECTS + 1} streams selected; act on at most {MAX_ACTION_OBJECTS} at a time"
        in texts(response)[0]
    )
    assert Stream.objects.get(pk=live.pk).is_active
