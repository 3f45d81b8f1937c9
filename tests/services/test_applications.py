"""Applications in the service layer: which app a call runs, the one default per account, the call's
hangup request written into the outbox with the call's end (and by the orphan sweep)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from callbacks import services as callback_services
from callbacks.models import CallbackDelivery
from streams import orphans, services
from streams.core import application as plivo_app
from streams.models import Account, Application, Call, CallEvent, HubProcess

pytestmark = pytest.mark.django_db
ANSWER = "https://bot.example.com/answer"


def make_app(account: Account, **fields: object) -> Application:
    return services.application_save(
        application=Application(account=account, app_name="a", answer_url=ANSWER, **fields)  # type: ignore[misc]
    )


def test_the_named_app_of_the_account_else_the_default_unless_streams_are_named(
    account: Account, other_account: Account
) -> None:
    named = make_app(account)
    default = make_app(account, default_number_app=True)
    theirs = make_app(other_account, default_number_app=True)
    assert services.application_for_call(account=account, app_id=named.app_id, wants_streams=True) == named
    assert services.application_for_call(account=account, app_id="", wants_streams=False) == default
    assert services.application_for_call(account=account, app_id="", wants_streams=True) is None
    with pytest.raises(services.ApplicationNotFound):
        services.application_for_call(account=account, app_id=theirs.app_id, wants_streams=False)
    assert services.application_for_call(account=other_account, app_id="", wants_streams=False) == theirs


def test_marking_a_default_unmarks_the_other_and_the_database_allows_one(account: Account) -> None:
    first = make_app(account, default_number_app=True, default_endpoint_app=True)
    second = make_app(account, default_number_app=True)
    first.refresh_from_db()
    assert (first.default_number_app, first.default_endpoint_app, second.default_number_app) == (False, True, True)
    with pytest.raises(IntegrityError), transaction.atomic():
        Application.objects.filter(pk=first.pk).update(default_number_app=True)


def ended_with(account: Account, app: Application | None, cause: plivo_app.HangupCause | None) -> Call:
    call = services.call_open(account=account, call_uuid=uuid.uuid4(), from_number="+1555", application=app)
    if cause is not None:
        services.call_record_hangup(call=call, cause=cause, detail="why")
    services.call_end(call=call, notify_session=False)
    return call


def test_the_hangup_request_is_queued_with_the_end_and_reports_the_recorded_cause(
    account: Account, django_capture_on_commit_callbacks: object
) -> None:
    app = make_app(account, hangup_url="https://h.example.com/hangup#rt=2000", hangup_method="GET")
    with django_capture_on_commit_callbacks() as queued:  # type: ignore[operator]
        call = ended_with(account, app, plivo_app.END_OF_XML)
    delivery = CallbackDelivery.objects.get(call=call)
    assert (delivery.stream_id, delivery.event, delivery.url, delivery.method) == (
        None,
        "Hangup",
        "https://h.example.com/hangup",
        "GET",
    )
    assert delivery.params["HangupCauseName"] == "End Of XML Instructions" and delivery.params["From"] == "+1555"
    assert len(queued) == 1
    assert list(CallEvent.objects.filter(call=call).values_list("event", flat=True)) == ["CallHangup", "CallEnded"]
    # a second end is a no-op: one hangup request per call
    services.call_end(call=call, notify_session=False)
    assert CallbackDelivery.objects.filter(call=call).count() == 1


def test_calls_without_an_application_are_as_before(account: Account) -> None:
    call = ended_with(account, None, None)
    assert not CallbackDelivery.objects.filter(call=call).exists() and not CallEvent.objects.filter(call=call).exists()
    assert Call.objects.get(pk=call.pk).hangup_cause_name == ""
    no_url = ended_with(account, make_app(account, hangup_url=""), None)
    assert not CallbackDelivery.objects.filter(call=no_url).exists()
    assert Call.objects.get(pk=no_url.pk).hangup_cause_name == "Normal Hangup"


def test_an_api_hang_up_is_recorded_before_the_end(account: Account) -> None:
    app = make_app(account, hangup_url="https://h.example.com/")
    call = services.call_open(account=account, call_uuid=uuid.uuid4(), application=app)
    assert services.call_hangup(call=call)
    assert CallbackDelivery.objects.get(call=call).params["HangupSource"] == "API Request"


def test_the_orphan_sweep_sends_the_hangup_request_of_a_lost_process(account: Account) -> None:
    app = make_app(account, hangup_url="https://h.example.com/")
    call = services.call_open(account=account, call_uuid=uuid.uuid4(), application=app)
    old = timezone.now() - timedelta(hours=1)
    Call.objects.filter(pk=call.pk).update(started_at=old, server_id="gone")
    # suspected an hour ago and silent since: this sweep fences it and ends its calls
    HubProcess.objects.create(server_id="gone", heartbeat_at=old, suspected_at=old)
    orphans.streams_close_orphaned()
    delivery = CallbackDelivery.objects.get(call=call)
    assert (delivery.params["HangupSource"], delivery.params["HangupCauseName"]) == ("Unknown", "Hub Process Lost")


def test_call_level_deliveries_never_wait_for_nor_hold_up_a_stream(account: Account) -> None:
    from tests.callbacks.conftest import open_stream

    stream = open_stream(account, "https://cb.example.com/")
    services.stream_mark_started(stream=stream)  # StartStream: pending, first of its stream
    app = make_app(account, hangup_url="https://h.example.com/")
    call = ended_with(account, app, None)
    hangup = CallbackDelivery.objects.get(call=call)
    assert callback_services.callback_ready(account_id=account.pk) == CallbackDelivery.objects.get(stream=stream).pk
    assert not callback_services.delivery_is_blocked(hangup.pk)
    assert callback_services.callback_next(stream_id=stream.pk) != hangup.pk
    # the sweep re-queues a lost call-level delivery like any other
    CallbackDelivery.objects.filter(pk=hangup.pk).update(next_attempt_at=timezone.now() - timedelta(hours=1))
    assert callback_services.callbacks_requeue_stale() >= 1
