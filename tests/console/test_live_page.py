"""The live view (DB rows + the hub processes' snapshots) and the 24-hour overview, through the admin."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from callbacks.models import CallbackDelivery
from streams import services
from streams.models import Account, Call, HubProcess, Stream
from tests.console.conftest import client_for, open_call, start_stream

pytestmark = pytest.mark.django_db


def test_the_live_page_joins_live_rows_with_the_hub_snapshot(viewer_client: Client, account: Account) -> None:
    call = open_call(account, from_number="+14155550100", to_number="+14155550199")
    streaming = start_stream(call, service_url="wss://bot.example.com/a", bidirectional=True)
    unpublished = start_stream(call, service_url="wss://bot.example.com/b", started=False)
    Call.objects.filter(pk=call.pk).update(server_id="hub-1")
    services.hub_publish_snapshot(
        server_id="hub-1", snapshot={str(streaming.stream_id): ["streaming", 42.5, 1.24, 900]}
    )
    HubProcess.objects.create(
        server_id="hub-dead",
        snapshot_at=timezone.now() - timedelta(minutes=5),
        live_snapshot={str(unpublished.stream_id): ["streaming", 99.0, None, 1]},
    )
    ended = open_call(account)
    services.call_end(call=ended, notify_session=False)

    page = viewer_client.get("/admin/streams/call/live/")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('class="live-call"') == 1 and str(ended.call_uuid) not in html
    row = re.search(
        rf'<tr class="stream-row state-streaming" data-stream="{streaming.stream_id}">(.*?)</tr>', html, re.S
    )
    assert row is not None
    assert "42.5 %" in row.group(1) and "1.24 s" in row.group(1) and "StartStream" in row.group(1)
    assert f"/admin/streams/stream/{streaming.pk}/change/" in row.group(1)
    # no fresh snapshot of this one (its process's is five minutes old): the database's status, no figures
    stale = re.search(rf'data-stream="{unpublished.stream_id}">(.*?)</tr>', html, re.S)
    assert stale is not None and "connecting" in stale.group(1) and "(db)" in stale.group(1)
    assert "99.0" not in stale.group(1) and "StreamCreated" in stale.group(1)
    assert 'data-url="/admin/streams/call/live/rows/"' in html and "setInterval" in html

    rows = viewer_client.get("/admin/streams/call/live/rows/")
    assert rows.status_code == 200 and "no-store" in rows["Cache-Control"]
    assert "<html" not in rows.content.decode() and str(streaming.stream_id) in rows.content.decode()

    services.call_end(call=call, notify_session=False)
    assert "No live calls right now." in viewer_client.get("/admin/streams/call/live/rows/").content.decode()


def test_the_live_pages_need_the_call_view_permission(client: Client, db: None) -> None:
    assert client.get("/admin/streams/call/live/").status_code == 302  # to the login page
    nobody = User.objects.create_user("nobody", password="x-long-password", is_staff=True)
    for url in ("/admin/streams/call/live/", "/admin/streams/call/live/rows/", "/admin/streams/call/overview/"):
        assert client_for(nobody).get(url).status_code == 403


def test_the_overview_counts_the_last_24_hours(viewer_client: Client, account: Account) -> None:
    now = timezone.now()
    for _ in range(3):
        start_stream(open_call(account), status_callback_url="https://app.example.com/cb")
    old = open_call(account)
    Call.objects.filter(pk=old.pk).update(started_at=now - timedelta(hours=30))
    streams = list(Stream.objects.filter(end_time__isnull=True))
    services.stream_end(stream=streams[0], reason=Stream.Reason.CONNECTION_ERROR, notify_session=False)
    services.stream_end(stream=streams[1], reason=Stream.Reason.API_REQUEST, notify_session=False)
    deliveries = list(CallbackDelivery.objects.order_by("pk"))
    CallbackDelivery.objects.filter(pk__in=[d.pk for d in deliveries[:3]]).update(state="delivered")
    CallbackDelivery.objects.filter(pk=deliveries[3].pk).update(state="failed")

    html = viewer_client.get("/admin/streams/call/overview/").content.decode()
    assert 'class="chart calls-per-hour"' in html
    assert (
        re.findall(r'class="value" data-value="(\d+)"', html.split("calls-per-hour")[1].split("</svg>")[0])[-1] == "3"
    )
    assert 'data-label="Connection error" data-count="1"' in html and 'data-label="API request" data-count="1"' in html
    rate = html.split("callback-success")[1].split("</svg>")[0]
    assert 'data-value="75"' in rate  # 3 delivered of 4 finished this hour
    assert "<dt>Calls</dt><dd>3</dd>" in html and "<dt>Callbacks failed</dt><dd>1</dd>" in html
