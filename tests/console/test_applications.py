"""Applications in the console: list, add and edit with the API's rules, the one default per account,
and the call page's debug log and hangup request with its attempts."""

from __future__ import annotations

import uuid

from django.test import Client
from django.urls import reverse

from callbacks.models import CallbackAttempt, CallbackDelivery
from streams import services
from streams.core import application as plivo_app
from streams.models import Account, Application, Call

ANSWER = "https://bot.example.com/answer"


def form(account: Account, **fields: str) -> dict[str, str]:
    data = {
        "account": str(account.pk),
        "app_name": "Support line",
        "answer_url": ANSWER,
        "answer_method": "POST",
        "fallback_answer_url": "",
        "fallback_method": "POST",
        "hangup_url": "",
        "hangup_method": "POST",
        "message_url": "",
        "message_method": "POST",
        "log_incoming_messages": "on",
        "subaccount": "",
    }
    data.update(fields)
    return data


def test_an_operator_adds_an_app_with_the_apis_rules_and_marks_the_default(
    operator_client: Client, account: Account
) -> None:
    add = reverse("admin:streams_application_add")
    refused = operator_client.post(add, form(account, answer_url="ftp://nope", hangup_method="POST"))
    assert refused.status_code == 200 and b"must be an http:// or https:// URL" in refused.content
    assert operator_client.post(add, form(account, default_number_app="on")).status_code == 302
    first = Application.objects.get()
    assert first.default_number_app and first.app_id.isdigit()

    sales = operator_client.post(add, form(account, app_name="Sales", default_number_app="on"))
    assert sales.status_code == 302
    second = Application.objects.get(app_name="Sales")
    first.refresh_from_db()
    assert (first.default_number_app, second.default_number_app) == (False, True)

    changelist = reverse("admin:streams_application_changelist")
    done = operator_client.post(changelist, {"action": "mark_default", "_selected_action": [str(first.pk)]})
    assert done.status_code == 302
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.default_number_app, second.default_number_app) == (True, False)
    listing = operator_client.get(changelist).content.decode()
    assert "Support line" in listing and first.app_id in listing


def test_a_viewer_sees_applications_but_cannot_change_them(viewer_client: Client, account: Account) -> None:
    app = Application.objects.create(account=account, app_name="a", answer_url=ANSWER)
    assert viewer_client.get(reverse("admin:streams_application_changelist")).status_code == 200
    assert viewer_client.post(reverse("admin:streams_application_add"), form(account)).status_code == 403
    page = viewer_client.get(reverse("admin:streams_application_change", args=[app.pk]))
    assert page.status_code == 200 and b'name="_save"' not in page.content


def test_the_call_page_shows_the_call_log_and_the_hangup_request_with_its_attempts(
    su_client: Client, account: Account
) -> None:
    app = Application.objects.create(account=account, app_name="bot", answer_url=ANSWER, hangup_url="https://h/x")
    call = services.call_open(account=account, call_uuid=uuid.uuid4(), application=app)
    services.call_log(
        call=call,
        event="AnswerRequest",
        error="answer_url try 1 of 3: HTTP 500 (a 2xx answer with Plivo XML is needed)",
        params={"Try": 1, "Status": 500, "FirstBytes": "<html>oops"},
    )
    services.call_record_hangup(call=call, cause=plivo_app.ANSWER_URL_FAILED, detail="no usable answer after 3 tries")
    services.call_end(call=call, notify_session=False)
    delivery = CallbackDelivery.objects.get(call=call)
    CallbackAttempt.objects.create(delivery=delivery, number=1, status_code=503, latency_ms=12)

    page = su_client.get(reverse("admin:streams_call_change", args=[call.pk])).content.decode()
    assert 'id="call-log"' in page and "AnswerRequest" in page and "HTTP 500 (a 2xx answer" in page
    assert "&lt;html&gt;oops" in page  # the answer's first bytes, escaped
    assert "Answer URL Failed: no usable answer after 3 tries" in page
    assert f"bot ({app.app_id})" in page
    assert 'id="hangup-request"' in page and "HTTP 503" in page and "https://h/x" in page
    deliveries = su_client.get(reverse("admin:callbacks_callbackdelivery_changelist")).content.decode()
    assert f"call {call.call_uuid}" in deliveries
    assert su_client.get(reverse("admin:callbacks_callbackdelivery_change", args=[delivery.pk])).status_code == 200


def test_a_call_without_an_application_looks_as_before(su_client: Client, call: Call) -> None:
    page = su_client.get(reverse("admin:streams_call_change", args=[call.pk])).content.decode()
    assert 'id="call-log"' not in page and 'id="hangup-request"' not in page
