"""Plivo applications end to end: a real hub, real gateways (both framings), a real answer server.

The answer server is tests/callbacks/receiver.py's Receiver on 127.0.0.1: it answers with
scripted replies and checks every request's X-Plivo-Signature-V3 with the plivo SDK's own
validator. The XML it returns is built with the plivo SDK's `plivoxml`, as Plivo users write
it. Only what the gateway, the customer, the answer server and the call's debug log observe
is asserted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from plivo import plivoxml

from callbacks.models import CallbackAttempt, CallbackDelivery
from streams.models import Account, Application, Call, CallEvent, Stream
from tests.callbacks.conftest import FAST
from tests.callbacks.receiver import Hit, Receiver, Reply, Slow, running_receiver
from tests.conftest import Proc
from tests.live.asterisk.drivers import DRIVERS, GatewayDriver, make_driver
from tests.live.asterisk.support import payloads, spoken
from tests.support import Customer, db, eventually, ramp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

APP_SETTINGS = {"STREAMHUB_ANSWER_TIMEOUT_SECONDS": "1", "STREAMHUB_ANSWER_RETRY_DELAY_SECONDS": "0.05"}
XML = {"Content-Type": "application/xml"}


def document(*elements: Any) -> bytes:
    response = plivoxml.ResponseElement()
    for element in elements:
        response.add(element)
    return response.to_string().encode()


def stream_element(url: str, **attributes: Any) -> Any:
    return plivoxml.StreamElement(url, **attributes)


def answer(body: bytes, status: int = 200) -> Reply:
    return Reply(status, XML, body)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


@pytest.fixture(params=DRIVERS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app_hub(hub_factory: Callable[..., Proc]) -> Proc:
    return hub_factory(**APP_SETTINGS)


@pytest.fixture
def driver(kind: str, app_hub: Proc, account: Account) -> GatewayDriver:
    return make_driver(kind, app_hub, account)


def make_app(
    account: Account,
    receiver: Receiver,
    *answers: Any,
    default: Any = 404,
    fallback: list[Any] | None = None,
    hangup: Any = None,
    **fields: Any,
) -> Application:
    key = uuid.uuid4().hex[:8]
    app = Application(
        account=account,
        app_name=f"app-{key}",
        answer_url=receiver.url(f"/answer/{key}", account.auth_token, *answers, default=default),
        **fields,
    )
    if fallback is not None:
        app.fallback_answer_url = receiver.url(f"/fallback/{key}", account.auth_token, *fallback, default=404)
    if hangup is not None:
        app.hangup_url = receiver.url(f"/hangup/{key}", account.auth_token, *hangup, default=200)
    app.save()
    return app


def call_log(call: Call) -> list[tuple[str, str, dict[str, Any]]]:
    return list(CallEvent.objects.filter(call=call).order_by("timestamp", "id").values_list("event", "error", "params"))


async def hung_up_call(**filters: Any) -> Call:
    """The call once the hub ended it, with its debug log written."""
    return await eventually(  # type: ignore[no-any-return]
        db(lambda: Call.objects.filter(status=Call.Status.ENDED, **filters).select_related("application").first()),
        timeout=20,
    )


def events(call: Call) -> list[str]:
    return [name for name, _, _ in call_log(call)]


def answer_hits(receiver: Receiver, app: Application, target: str = "answer") -> list[Hit]:
    path = "/" + getattr(app, "answer_url" if target == "answer" else "fallback_answer_url").split("/", 3)[3]
    return receiver.hits_for(path)


# --- the document runs ----------------------------------------------------------------------


async def test_a_held_stream_gets_the_audio_from_the_call_start_and_the_end_of_the_document_hangs_up(
    driver: GatewayDriver, account: Account, receiver: Receiver
) -> None:
    call_id = str(uuid.uuid4())
    pcm = ramp(8000)  # 1 s, every sample distinct: said while the answer URL is still thinking
    async with Customer() as listener, Customer(close_after=51) as held:
        body = document(
            stream_element(listener.url, extraHeaders="role=listener"),
            stream_element(held.url, keepCallAlive=True, contentType="audio/x-l16;rate=8000"),
            plivoxml.SpeakElement("Hello"),
        )
        app = await db(make_app)(account, receiver, Slow(0.6), default=answer(body))
        # the first try answers after 0.6 s with 200 "ok", which is not XML: a failed try
        await driver.open(
            [], call_id=call_id, caller="+14155550100", callee="+14155550199", extra={"appId": app.app_id}
        )
        await driver.talk(pcm)
        assert await asyncio.wait_for(driver.closed_by_hub(), 20)
        call = await hung_up_call(call_uuid=call_id)

    log = await db(call_log)(call)
    names = [name for name, _, _ in log]
    assert names[:2] == ["AnswerRequest", "AnswerRequest"]
    assert "not well-formed XML" in log[0][1]
    assert names[2:] == [
        "StreamStarted",
        "StreamStarted",
        "StreamEnded",
        "UnsupportedElement",
        "EndOfDocument",
        "CallHangup",
        "CallEnded",
    ]
    assert log[1][1] == "" and log[1][2]["Status"] == 200 and log[1][2]["Try"] == 2
    assert log[5][1] == "<Speak> is a Plivo verb streamhub does not execute; skipped"
    assert log[7][2]["HangupCauseName"] == "End Of XML Instructions"
    assert (call.hangup_cause_name, call.application_id) == ("End Of XML Instructions", app.pk)
    # every sample the caller said, from the call's first frame on, reached the first stream
    assert spoken(payloads(listener)) == pcm
    assert listener.messages[0]["event"] == "start" and listener.messages[0]["extra_headers"] == "role=listener"
    rows = await db(lambda: list(Stream.objects.filter(call=call).order_by("created_at")))()
    assert [s.hangup_reason for s in rows] == ["Call hangup", "Connection error"]
    hits = answer_hits(receiver, app)
    assert len(hits) == 2 and all(hit.signature_ok for hit in hits)
    params = hits[1].params
    assert params["CallUUID"] == call_id and params["From"] == "+14155550100" and params["To"] == "+14155550199"
    assert (params["Direction"], params["CallStatus"], params["Event"]) == ("inbound", "in-progress", "StartApp")


async def test_keep_call_alive_holds_the_document_then_wait_and_hangup_run_in_order(
    driver: GatewayDriver, account: Account, receiver: Receiver
) -> None:
    call_id = str(uuid.uuid4())
    async with Customer(close_after=11) as held:
        body = document(
            stream_element(held.url, keepCallAlive=True),
            plivoxml.WaitElement(length=1),
            plivoxml.HangupElement(),
        )
        app = await db(make_app)(account, receiver, answer(body))
        await driver.open([], call_id=call_id, extra={"appId": app.app_id})
        talking = asyncio.ensure_future(driver.talk(ramp(16000)))  # 2 s of caller audio
        assert await asyncio.wait_for(driver.closed_by_hub(), 20)
        talking.cancel()
        call = await hung_up_call(call_uuid=call_id)

    log = await db(call_log)(call)
    assert [name for name, _, _ in log] == [
        "AnswerRequest",
        "StreamStarted",
        "StreamEnded",
        "Wait",
        "Hangup",
        "CallHangup",
        "CallEnded",
    ]
    times = await db(
        lambda: list(CallEvent.objects.filter(call=call).order_by("id").values_list("timestamp", flat=True))
    )()
    assert (times[4] - times[3]).total_seconds() >= 1.0  # <Wait length="1"> waited before <Hangup/>
    assert log[2][2]["HangupReason"] == "Connection error"  # the held stream's customer closed
    assert log[5][2]["HangupSource"] == "Answer XML" and call.hangup_cause_name == "Normal Hangup"
    assert len(held.events("start")) == 1


async def test_without_keep_call_alive_the_next_element_runs_at_once(
    account: Account, receiver: Receiver, app_hub: Proc
) -> None:
    driver = make_driver("audio-fork", app_hub, account)
    call_id = str(uuid.uuid4())
    async with Customer() as first, Customer() as second:
        body = document(
            stream_element(first.url),
            stream_element(second.url, bidirectional=True, contentType="audio/x-mulaw;rate=8000"),
            plivoxml.WaitElement(length=2),
            plivoxml.HangupElement(reason="busy"),
        )
        app = await db(make_app)(account, receiver, answer(body))
        await driver.open([], call_id=call_id, extra={"appId": app.app_id})
        await eventually(lambda: first.events("start") and second.events("start"))
        await driver.talk(ramp(4000))
        assert await asyncio.wait_for(driver.closed_by_hub(), 20)
        call = await hung_up_call(call_uuid=call_id)

    assert await db(events)(call) == [
        "AnswerRequest",
        "StreamStarted",
        "StreamStarted",
        "Wait",
        "Hangup",
        "CallHangup",
        "CallEnded",
    ]
    assert call.hangup_cause_name == "Busy Line"
    rows = await db(lambda: list(Stream.objects.filter(call=call).order_by("created_at")))()
    assert [(s.service_url, s.bidirectional, s.content_type) for s in rows] == [
        (first.url, False, "audio/x-l16;rate=8000"),
        (second.url, True, "audio/x-mulaw;rate=8000"),
    ]
    assert all(s.hangup_reason == "Call hangup" for s in rows)
    assert second.messages[0]["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000}


# --- the fallback and bad answers -----------------------------------------------------------


async def test_the_fallback_answer_url_runs_after_three_failed_tries(
    driver: GatewayDriver, account: Account, receiver: Receiver
) -> None:
    call_id = str(uuid.uuid4())
    async with Customer() as customer:
        body = document(stream_element(customer.url), plivoxml.HangupElement())
        app = await db(make_app)(account, receiver, 500, 503, Slow(3), fallback=[answer(body)])
        await driver.open([], call_id=call_id, extra={"appId": app.app_id})
        assert await asyncio.wait_for(driver.closed_by_hub(), 30)
        call = await hung_up_call(call_uuid=call_id)

    log = await db(call_log)(call)
    requests_ = [(p["Target"], p["Try"], p["Status"], error) for name, error, p in log if name == "AnswerRequest"]
    assert requests_ == [
        ("answer_url", 1, 500, "answer_url try 1 of 3: HTTP 500 (a 2xx answer with Plivo XML is needed)"),
        ("answer_url", 2, 503, "answer_url try 2 of 3: HTTP 503 (a 2xx answer with Plivo XML is needed)"),
        ("answer_url", 3, "", "answer_url try 3 of 3: timeout: no complete answer within 1 s"),
        ("fallback_answer_url", 1, 200, ""),
    ]
    assert [name for name, _, _ in log][4:] == ["StreamStarted", "Hangup", "CallHangup", "CallEnded"]
    assert len(answer_hits(receiver, app)) == 3
    fallback = answer_hits(receiver, app, "fallback")
    assert len(fallback) == 1 and fallback[0].signature_ok and fallback[0].params["CallUUID"] == call_id


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">'.encode() for i in range(1, 10))
    + b"]><Response><Stream>wss://x.example.com/&lol9;</Stream></Response>"
)
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY secret SYSTEM "file:///etc/passwd">]>'
    b"<Response><Stream>wss://x.example.com/&secret;</Stream></Response>"
)
BAD_ANSWERS = {
    "non-2xx": (
        Reply(404, XML, b"<Response/>"),
        "HTTP 404 (a 2xx answer with Plivo XML is needed)",
        "Answer URL Failed",
    ),
    "timeout": (Slow(3), "timeout: no complete answer within 1 s", "Answer URL Failed"),
    "not XML": (
        Reply(200, {"Content-Type": "text/html"}, b"<html><body>Oops"),
        "not well-formed XML",
        "Invalid Answer XML",
    ),
    "empty": (Reply(200, XML, b""), "the answer is empty", "Invalid Answer XML"),
    "no Response": (
        answer(b"<Document><Stream>wss://x.example.com/ws</Stream></Document>"),
        "the root element is <Document>, not <Response>",
        "Invalid Answer XML",
    ),
    "invalid Stream": (
        answer(document(stream_element("wss://x.example.com/ws", bidirectional=True, audioTrack="both"))),
        "element 1 <Stream>, attribute audioTrack: must be inbound when bidirectional is true",
        "Invalid Answer XML",
    ),
    "Stream URL": (
        answer(b"<Response><Stream>https://x.example.com/ws</Stream></Response>"),
        "element 1 <Stream>, the URL (element text): must be a ws:// or wss:// URL",
        "Invalid Answer XML",
    ),
    "oversize": (
        answer(b"<Response>" + b" " * 110_000 + b"</Response>"),
        "the answer is 110021 bytes, over Plivo's 102400-byte limit",
        "Invalid Answer XML",
    ),
    "billion laughs": (answer(BILLION_LAUGHS), "DTDs and entity declarations are refused", "Invalid Answer XML"),
    "external entity": (answer(EXTERNAL_ENTITY), "DTDs and entity declarations are refused", "Invalid Answer XML"),
}


@pytest.mark.parametrize("bad", sorted(BAD_ANSWERS))
async def test_a_bad_answer_is_logged_precisely_and_the_call_is_hung_up(
    bad: str, account: Account, receiver: Receiver, app_hub: Proc
) -> None:
    reply, message, cause = BAD_ANSWERS[bad]
    driver = make_driver("audio-fork", app_hub, account)
    call_id = str(uuid.uuid4())
    app = await db(make_app)(account, receiver, default=reply)
    await driver.open([], call_id=call_id, extra={"appId": app.app_id})
    assert await asyncio.wait_for(driver.closed_by_hub(), 30)
    call = await hung_up_call(call_uuid=call_id)

    log = await db(call_log)(call)
    tries = [(p["Try"], error) for name, error, p in log if name == "AnswerRequest"]
    assert [n for n, _ in tries] == [1, 2, 3]
    assert all(message in error for _, error in tries), tries
    assert [name for name, _, _ in log][3:] == ["CallHangup", "CallEnded"]
    assert message in log[3][1] and log[3][2]["HangupSource"] == "Error"
    assert call.hangup_cause_name == cause
    assert not await db(lambda: Stream.objects.filter(call=call).exists())()
    assert "Traceback" not in app_hub.log()


async def test_bad_answers_through_asterisk_hang_up_with_the_hangup_command(
    account: Account, receiver: Receiver, app_hub: Proc
) -> None:
    driver = make_driver("asterisk", app_hub, account)
    call_id = str(uuid.uuid4())
    app = await db(make_app)(account, receiver, default=answer(BILLION_LAUGHS))
    await driver.open([], call_id=call_id, extra={"appId": app.app_id})
    assert await asyncio.wait_for(driver.closed_by_hub(), 30)  # HANGUP, then the close
    call = await hung_up_call(call_uuid=call_id)
    assert call.hangup_cause_name == "Invalid Answer XML"
    assert "Traceback" not in app_hub.log()


# --- the hangup request -------------------------------------------------------------------------


async def test_the_hangup_url_hears_the_end_signed_and_retried_until_it_answers(
    driver: GatewayDriver, account: Account, receiver: Receiver, worker_factory: Callable[..., Proc]
) -> None:
    worker_factory(**FAST)
    call_id = str(uuid.uuid4())
    async with Customer() as customer:
        body = document(stream_element(customer.url, keepCallAlive=True))
        app = await db(make_app)(account, receiver, answer(body), hangup=[503, 503, 200])
        await driver.open(
            [], call_id=call_id, caller="+14155550100", callee="+14155550199", extra={"appId": app.app_id}
        )
        await eventually(lambda: customer.events("start"))
        await driver.talk(ramp(4000))
        await driver.hang_up()  # the caller hangs up
        call = await hung_up_call(call_uuid=call_id)

    hangup_path = "/" + app.hangup_url.split("/", 3)[3]
    receiver.wait(lambda: any(hit.status == 200 for hit in receiver.hits_for(hangup_path)), 30, "the hangup request")
    hits = receiver.hits_for(hangup_path)
    assert [hit.status for hit in hits] == [503, 503, 200]
    assert all(hit.signature_ok and hit.method == "POST" for hit in hits)
    assert len({hit.webhook_id for hit in hits}) == 1  # one delivery, retried
    params = hits[-1].params
    assert params["CallUUID"] == call_id and (params["From"], params["To"]) == ("+14155550100", "+14155550199")
    assert (params["CallStatus"], params["Event"], params["Direction"]) == ("completed", "Hangup", "inbound")
    assert (params["HangupCause"], params["HangupSource"]) == ("NORMAL_CLEARING", "Caller")
    assert (params["HangupCauseName"], params["HangupCauseCode"]) == ("Normal Hangup", "4000")
    assert int(params["Duration"]) >= 1 and params["BillDuration"] == "60"
    assert params["StartTime"] == call.started_at.strftime("%Y-%m-%d %H:%M:%S")  # UTC
    assert params["EndTime"] == call.ended_at.strftime("%Y-%m-%d %H:%M:%S")
    delivery = await eventually(db(lambda: CallbackDelivery.objects.filter(call=call, state="delivered").first()))
    assert (delivery.stream_id, delivery.event, delivery.state, delivery.attempt_count) == (
        None,
        "Hangup",
        "delivered",
        3,
    )
    attempts = await db(
        lambda: list(CallbackAttempt.objects.filter(delivery=delivery).values_list("status_code", flat=True))
    )()
    assert attempts == [503, 503, 200]


async def test_a_rest_hang_up_is_reported_as_an_api_request(
    account: Account, receiver: Receiver, app_hub: Proc, worker_factory: Callable[..., Proc]
) -> None:
    import requests

    worker_factory(**FAST)
    driver = make_driver("asterisk", app_hub, account)
    call_id = str(uuid.uuid4())
    async with Customer() as customer:
        app = await db(make_app)(
            account, receiver, answer(document(stream_element(customer.url, keepCallAlive=True))), hangup=[200]
        )
        await driver.open([], call_id=call_id, extra={"appId": app.app_id})
        await eventually(lambda: customer.events("start"))
        url = f"{app_hub.http}/v1/Account/{account.auth_id}/Call/{call_id}/"
        response = await asyncio.to_thread(requests.delete, url, auth=(account.auth_id, account.auth_token), timeout=10)
        assert response.status_code == 204
        assert await asyncio.wait_for(driver.closed_by_hub(), 20)
        await hung_up_call(call_uuid=call_id)
    hangup_path = "/" + app.hangup_url.split("/", 3)[3]
    receiver.wait(lambda: bool(receiver.hits_for(hangup_path)), 30, "the hangup request")
    params = receiver.hits_for(hangup_path)[0].params
    assert (params["HangupSource"], params["HangupCauseName"]) == ("API Request", "Normal Hangup")


# --- which application runs -------------------------------------------------------------------


async def test_an_application_of_another_account_is_never_run(
    driver: GatewayDriver, account: Account, other_account: Account, receiver: Receiver
) -> None:
    theirs = await db(make_app)(other_account, receiver, answer(document(plivoxml.WaitElement(length=5))))
    call_id = str(uuid.uuid4())
    await driver.open([], call_id=call_id, extra={"appId": theirs.app_id})
    assert await asyncio.wait_for(driver.closed_by_hub(), 20)
    call = await hung_up_call(call_uuid=call_id)
    assert receiver.hits_for("/" + theirs.answer_url.split("/", 3)[3]) == []
    log = await db(call_log)(call)
    assert [name for name, _, _ in log] == ["ApplicationNotFound", "CallHangup", "CallEnded"]
    assert log[0][1] == f"appId {theirs.app_id!r} is not an application of account {account.auth_id}"
    assert (call.application_id, call.hangup_cause_name) == (None, "Application Not Found")


async def test_the_default_application_runs_calls_that_name_nothing(
    account: Account, other_account: Account, receiver: Receiver, app_hub: Proc
) -> None:
    async with Customer() as customer:
        # the other account's default must not run for this account's calls
        await db(make_app)(
            other_account, receiver, default=answer(document(plivoxml.HangupElement())), default_number_app=True
        )
        mine = await db(make_app)(
            account,
            receiver,
            default=answer(document(stream_element(customer.url), plivoxml.HangupElement())),
            default_number_app=True,
        )
        driver = make_driver("audio-fork", app_hub, account)
        call_id = str(uuid.uuid4())
        await driver.open([], call_id=call_id)
        assert await asyncio.wait_for(driver.closed_by_hub(), 20)
        call = await hung_up_call(call_uuid=call_id)
        assert call.application_id == mine.pk
        assert await db(lambda: Stream.objects.get(call=call).service_url)() == customer.url

        # a call that names its streams keeps today's behaviour: no application
        direct = make_driver("asterisk", app_hub, account)
        direct_id = str(uuid.uuid4())
        await direct.open([{"serviceUrl": customer.url}], call_id=direct_id)
        await eventually(lambda: [m for m in customer.events("start") if m["start"]["callId"] == direct_id])
        await direct.hang_up()
        call = await hung_up_call(call_uuid=direct_id)
    assert call.application_id is None and await db(call_log)(call) == []
    assert len(answer_hits(receiver, mine)) == 1


async def test_app_id_in_the_query_string_for_gateways_without_metadata(
    account: Account, receiver: Receiver, app_hub: Proc
) -> None:
    from tests.support import Gateway, basic_auth

    app = await db(make_app)(account, receiver, default=answer(document(plivoxml.HangupElement(reason="rejected"))))
    gateway = Gateway(
        f"{app_hub.ws}/ingest/audio-fork?appId={app.app_id}", basic_auth(account.auth_id, account.auth_token)
    )
    await gateway.open()  # no metadata frame: the first frame is audio
    await gateway.send_frames(ramp(1600), interval=0)
    assert gateway.ws is not None
    await asyncio.wait_for(gateway.ws.wait_closed(), 20)
    call = await hung_up_call(application=app)
    assert call.hangup_cause_name == "Rejected"


async def test_a_refused_connection_is_logged_without_the_urls_secrets(
    account: Account, receiver: Receiver, app_hub: Proc
) -> None:
    from tests.conftest import free_port

    secret_url = f"http://127.0.0.1:{free_port()}/answer?token=SECRET-in-the-query"
    app = await db(Application.objects.create)(account=account, app_name="down", answer_url=secret_url)
    driver = make_driver("audio-fork", app_hub, account)
    call_id = str(uuid.uuid4())
    await driver.open([], call_id=call_id, extra={"appId": app.app_id})
    assert await asyncio.wait_for(driver.closed_by_hub(), 30)
    call = await hung_up_call(call_uuid=call_id)
    log = await db(call_log)(call)
    errors = [error for name, error, _ in log if name == "AnswerRequest"]
    assert len(errors) == 3 and all(
        "connection error: ConnectionError" in e and "Connection refused" in e for e in errors
    )
    assert not any("SECRET" in error for _, error, _ in log)
    assert "SECRET" not in app_hub.log() and call.hangup_cause_name == "Answer URL Failed"
