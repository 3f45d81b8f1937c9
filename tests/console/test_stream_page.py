from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from callbacks.models import CallbackDelivery
from streams import services
from streams.console.views import EVENTS_ON_STREAM_PAGE, EVENTS_PER_LOG_PAGE
from streams.models import Account, Call, Stream, StreamEvent
from tests.console.conftest import open_call, start_stream

pytestmark = pytest.mark.django_db


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def test_the_stream_page_is_read_only_even_for_a_superuser(su_client: Client, ended_stream: Stream) -> None:
    html = page(su_client, reverse("admin:streams_stream_change", args=[ended_stream.pk]))
    assert "View stream" in html
    form = html.split('id="stream_form"')[1].split("</form>")[0]
    assert 'name="_save"' not in form
    assert re.findall(r'<(?:input(?![^>]*type="hidden")|textarea|select)\b', form) == []
    assert str(ended_stream.stream_id) in html
    before = Stream.objects.values().get(pk=ended_stream.pk)
    response = su_client.post(
        reverse("admin:streams_stream_change", args=[ended_stream.pk]), {"service_url": "wss://evil.example.com/"}
    )
    assert response.status_code == 403
    assert Stream.objects.values().get(pk=ended_stream.pk) == before


def test_the_stream_page_shows_the_stream_log_record_in_utc(su_client: Client, ended_stream: Stream) -> None:
    html = page(su_client, reverse("admin:streams_stream_change", args=[ended_stream.pk]))
    assert f"{ended_stream.end_time:%Y-%m-%d %H:%M:%S} UTC" in html
    assert f"{ended_stream.start_time:%Y-%m-%d %H:%M:%S} UTC" in html
    assert "API request" in html
    assert "6 samples, peak 44 %" in html
    assert ended_stream.resource_uri in html


def test_the_stream_page_shows_the_debug_log_with_parameters(su_client: Client, ended_stream: Stream) -> None:
    html = page(su_client, reverse("admin:streams_stream_change", args=[ended_stream.pk]))
    log = html.split('id="debug-log"')[1]
    events = re.findall(r'data-event="(\w+)"', log)
    assert events == ["StreamCreated", "StartStream", "DegradedStream", "StopStream"]
    assert "<dt>BufferUsage</dt><dd>30</dd>" in log
    assert "<dt>HangupReason</dt><dd>API request</dd>" in log
    assert f"<dt>ServiceURL</dt><dd>{ended_stream.service_url}</dd>" in log
    assert reverse("admin:streams_stream_debug_logs", args=[ended_stream.pk]) in html


def test_errors_in_the_debug_log_are_shown_and_escaped(su_client: Client, live_stream: Stream) -> None:
    services.stream_log(stream=live_stream, event="InvalidMessage", error="<script>alert(1)</script> not JSON")
    html = page(su_client, reverse("admin:streams_stream_change", args=[live_stream.pk]))
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; not JSON" in html
    assert (
        'class="row2 has-error" data-event="InvalidMessage"' in html or 'has-error" data-event="InvalidMessage"' in html
    )


def test_the_stream_page_draws_the_timeline_as_inline_svg(su_client: Client, ended_stream: Stream) -> None:
    html = page(su_client, reverse("admin:streams_stream_change", args=[ended_stream.pk]))
    svg = html.split('<svg xmlns="http://www.w3.org/2000/svg" class="stream-timeline"')[1].split("</svg>")[0]
    assert svg.count('class="mark mark-') == 4
    assert "mark-degraded" in svg and "mark-stop" in svg and "mark-start" in svg
    assert 'class="buffer-fill"' in svg
    assert "<script" not in html.split('id="stream-timeline"')[1].split("</figure>")[0]


def test_the_stream_page_lists_callback_deliveries_with_every_attempt(su_client: Client, ended_stream: Stream) -> None:
    html = page(su_client, reverse("admin:streams_stream_change", args=[ended_stream.pk]))
    section = html.split('id="callback-deliveries"')[1]
    assert section.count('class="delivery"') == 3
    assert section.count('class="attempt"') == 3
    assert "HTTP 503" in section and "HTTP 404" in section and "no such hook" in section
    assert 'class="state-failed">failed' in section and 'class="state-delivered">delivered' in section


def test_a_long_debug_log_is_cut_on_the_stream_page_and_whole_on_its_own(
    su_client: Client, live_stream: Stream
) -> None:
    StreamEvent.objects.bulk_create(
        [
            StreamEvent(stream=live_stream, event="InvalidMessage", error=f"bad {i}")
            for i in range(EVENTS_PER_LOG_PAGE + 50)
        ]
    )
    total = StreamEvent.objects.filter(stream=live_stream).count()
    html = page(su_client, reverse("admin:streams_stream_change", args=[live_stream.pk]))
    assert html.split('id="debug-log"')[1].count("data-event=") == EVENTS_ON_STREAM_PAGE
    assert f"The first {EVENTS_ON_STREAM_PAGE} events" in html

    logs_url = reverse("admin:streams_stream_debug_logs", args=[live_stream.pk])
    first = page(su_client, logs_url)
    assert f"{total} events" in first
    assert first.count("data-event=") == EVENTS_PER_LOG_PAGE
    second = page(su_client, logs_url + "?p=2")
    assert first.count("data-event=") + second.count("data-event=") == total
    assert "page 2 of 2" in second


def test_the_debug_logs_page_has_the_stream_summary_and_timeline(su_client: Client, ended_stream: Stream) -> None:
    html = page(su_client, reverse("admin:streams_stream_debug_logs", args=[ended_stream.pk]))
    assert "<dt>Rounded bill duration</dt><dd>60 s</dd>" in html
    assert "<dt>Hangup reason</dt><dd>API request</dd>" in html
    assert 'class="stream-timeline"' in html
    assert re.findall(r'data-event="(\w+)"', html) == ["StreamCreated", "StartStream", "DegradedStream", "StopStream"]


def test_the_debug_logs_page_of_an_unknown_stream_is_404(su_client: Client) -> None:
    assert su_client.get(reverse("admin:streams_stream_debug_logs", args=[999999])).status_code == 404


def test_a_viewer_sees_the_stream_page_and_debug_logs(viewer_client: Client, ended_stream: Stream) -> None:
    html = page(viewer_client, reverse("admin:streams_stream_change", args=[ended_stream.pk]))
    assert 'id="debug-log"' in html and "stop-stream-link" not in html
    page(viewer_client, reverse("admin:streams_stream_debug_logs", args=[ended_stream.pk]))


def test_staff_without_permissions_cannot_read_debug_logs(ended_stream: Stream, django_user_model: type) -> None:
    user = django_user_model.objects.create_user(username="bare", password="x", is_staff=True)
    client = Client()
    client.force_login(user)
    assert client.get(reverse("admin:streams_stream_debug_logs", args=[ended_stream.pk])).status_code == 403
    assert client.get(reverse("admin:streams_stream_change", args=[ended_stream.pk])).status_code == 403


def test_non_staff_are_sent_to_the_login_page(ended_stream: Stream, django_user_model: type) -> None:
    user = django_user_model.objects.create_user(username="customer", password="x", is_staff=False)
    client = Client()
    client.force_login(user)
    for url in (
        reverse("admin:streams_stream_changelist"),
        reverse("admin:streams_stream_change", args=[ended_stream.pk]),
        reverse("admin:streams_stream_debug_logs", args=[ended_stream.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_a_delivery_page_shows_its_attempts(su_client: Client, ended_stream: Stream, account: Account) -> None:
    failed = CallbackDelivery.objects.get(stream=ended_stream, state="failed")
    html = page(su_client, reverse("admin:callbacks_callbackdelivery_change", args=[failed.pk]))
    assert "View callback delivery" in html
    assert "no such hook" in html and "503" in html
    assert "<dt>Event</dt><dd>StopStream</dd>" in html
    assert account.auth_token not in html


def noise_field(html: str) -> str:
    return html.split("field-noise_suppression")[1].split('<div class="readonly">')[1].split("</div>")[0]


def test_the_stream_page_says_noise_cancellation_is_off(su_client: Client, ended_stream: Stream) -> None:
    html = page(su_client, reverse("admin:streams_stream_change", args=[ended_stream.pk]))
    assert noise_field(html).strip() == "off"


def test_the_stream_page_shows_what_noise_cancellation_did(su_client: Client, call: Call) -> None:
    stream = start_stream(call, noise_cancellation=True, noise_cancellation_level=90)
    url = reverse("admin:streams_stream_change", args=[stream.pk])
    assert noise_field(page(su_client, url)).strip() == "requested at level 90; no audio relayed yet"

    services.stream_log(
        stream=stream,
        event="NoiseCancellation",
        extra={
            "Level": 90,
            "MaxAttenuationDb": -38,
            "Tracks": "inbound",
            "SampleRate": 8000,
            "DelayMs": 10.125,
            "Engine": "pyspeex-noise 2.0.1 (Speex preprocessor)",
        },
    )
    running = noise_field(page(su_client, url))
    assert running.strip() == (
        "on: level 90, at most -38 dB on the inbound track at 8000 Hz, 10.125 ms delay "
        "(pyspeex-noise 2.0.1 (Speex preprocessor)); running"
    )
    summary = {"Level": 90, "Frames": 425, "InboundOutputLevelDb": -4.2}
    services.stream_log(stream=stream, event="NoiseCancellationSummary", extra=summary)
    services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
    html = page(su_client, url)
    assert noise_field(html).strip().endswith("; 425 frames suppressed, output against input: inbound -4.2 dB")
    # and the debug log shows both rows with their parameters
    log = html.split('id="debug-log"')[1]
    assert 'data-event="NoiseCancellation"' in log and 'data-event="NoiseCancellationSummary"' in log
    assert "<dt>Level</dt><dd>90</dd>" in log


def test_a_stream_that_asked_for_noise_cancellation_but_never_ran_says_so(su_client: Client, call: Call) -> None:
    stream = start_stream(call, started=False, noise_cancellation=True)
    services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
    html = page(su_client, reverse("admin:streams_stream_change", args=[stream.pk]))
    assert noise_field(html).strip() == "requested at level 85; never ran (no audio was relayed)"


def test_the_stream_page_shows_a_resumed_stream_its_setting_drops_and_resumes(
    su_client: Client, account: Account
) -> None:

    stream = start_stream(open_call(account), reconnect=True, reconnect_window=15)
    services.stream_log_batch(
        stream=stream,
        entries=[
            (
                "DegradedStream",
                "connection closed by the remote service with code 1001",
                {"ConnectionState": "reconnecting"},
            ),
            ("ReconnectAttemptFailed", "server answered HTTP 503 instead of switching protocols", {"Attempt": 1}),
            ("DegradedStream", "", {"ConnectionState": "resumed", "Attempt": 2}),
        ],
    )
    services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False, stats={"resumes": 1})
    html = page(su_client, reverse("admin:streams_stream_change", args=[stream.pk]))
    assert "Reconnect window" in html and "Resumes" in html
    assert "DegradedStream reconnecting" in html and "DegradedStream resumed" in html
    assert "ReconnectAttemptFailed" in html
