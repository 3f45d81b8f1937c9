from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from streams import services
from streams.management.commands.create_operator_groups import OPERATORS, VIEWERS
from streams.models import Account, Call, HubProcess, Stream
from tests.console.conftest import open_call, start_stream

pytestmark = pytest.mark.django_db


def html(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def test_the_calls_list_shows_live_calls_at_a_glance(su_client: Client, account: Account) -> None:
    live = [open_call(account, from_number=f"+1415555010{i}") for i in range(2)]
    gone = open_call(account)
    services.call_hangup(call=gone)
    page = html(su_client, reverse("admin:streams_call_changelist"))
    assert re.search(r'id="live-calls">\s*<a href="[^"]*\?status__exact=live">2 live calls</a>', page)
    live_only = html(su_client, reverse("admin:streams_call_changelist") + "?status__exact=live")
    assert all(str(c.call_uuid) in live_only for c in live) and str(gone.call_uuid) not in live_only
    assert 'alt="True"' in live_only  # the live column's icon


def test_the_calls_list_says_when_nothing_is_live(su_client: Client) -> None:
    assert "No live calls right now" in html(su_client, reverse("admin:streams_call_changelist"))


def test_the_call_page_lists_its_streams_inline(su_client: Client, call: Call) -> None:
    first = start_stream(call)
    second = start_stream(call, service_url="wss://two.example.com/ws")
    services.stream_stop(stream=first)
    page = html(su_client, reverse("admin:streams_call_change", args=[call.pk]))
    assert "View call" in page
    for stream in (first, second):
        assert reverse("admin:streams_stream_change", args=[stream.pk]) in page
    assert "wss://two.example.com/ws" in page and "API request" in page
    assert 'name="_save"' not in page
    assert "start-stream-link" in page and "hangup-link" in page


def test_calls_are_found_by_id_or_number(su_client: Client, account: Account) -> None:
    a = open_call(account, from_number="+14155550777")
    b = open_call(account, to_number="+442071838750")
    url = reverse("admin:streams_call_changelist")
    assert str(a.call_uuid) in html(su_client, f"{url}?q={a.call_uuid}")
    assert str(b.call_uuid) not in html(su_client, f"{url}?q={a.call_uuid}")
    assert str(b.call_uuid) in html(su_client, f"{url}?q=2071838")
    assert str(a.call_uuid) in html(su_client, f"{url}?q={str(a.call_uuid)[:8]}")


def test_hub_processes_are_read_only_and_show_liveness(su_client: Client) -> None:
    HubProcess.objects.create(server_id="hub-a:1", heartbeat_at=timezone.now(), live_calls=3, capacity=500)
    HubProcess.objects.create(server_id="hub-b:2", heartbeat_at=timezone.now() - timedelta(hours=1))
    page = html(su_client, reverse("admin:streams_hubprocess_changelist"))
    rows = {m[0]: m[1] for m in re.findall(r"(hub-[ab]:\d).*?alt=\"(True|False)\"", page, re.S)}
    assert rows == {"hub-a:1": "True", "hub-b:2": "False"}
    proc = HubProcess.objects.get(server_id="hub-a:1")
    assert su_client.get(reverse("admin:streams_hubprocess_add")).status_code == 403
    assert (
        su_client.post(reverse("admin:streams_hubprocess_delete", args=[proc.pk]), {"post": "yes"}).status_code == 403
    )
    assert 'name="_save"' not in html(su_client, reverse("admin:streams_hubprocess_change", args=[proc.pk]))


def test_the_event_list_filters_by_event_and_finds_a_whole_stream_id(su_client: Client, ended_stream: Stream) -> None:
    url = reverse("admin:streams_streamevent_changelist")
    degraded = html(su_client, f"{url}?event=DegradedStream")
    assert degraded.count('<td class="field-event">') == 1
    assert html(su_client, f"{url}?q={ended_stream.stream_id}").count('<td class="field-event">') == 4
    assert html(su_client, f"{url}?q={str(ended_stream.stream_id)[:8]}").count('<td class="field-event">') == 0


def test_nothing_can_be_added_or_deleted_by_hand(su_client: Client, live_stream: Stream) -> None:
    assert su_client.get(reverse("admin:streams_stream_add")).status_code == 403
    assert su_client.get(reverse("admin:streams_call_add")).status_code == 403
    assert (
        su_client.post(reverse("admin:streams_stream_delete", args=[live_stream.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert Stream.objects.filter(pk=live_stream.pk).exists()


def test_times_are_shown_in_utc_and_say_so(su_client: Client, live_stream: Stream) -> None:
    Stream.objects.filter(pk=live_stream.pk).update(start_time=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC))
    listing = html(su_client, reverse("admin:streams_stream_changelist"))
    assert '<td class="field-started">2026-03-04 05:06:07</td>' in listing and "Start (UTC)" in listing
    page = html(su_client, reverse("admin:streams_stream_change", args=[live_stream.pk]))
    assert "2026-03-04 05:06:07 UTC" in page


def test_operator_groups_are_created_with_exactly_their_permissions() -> None:
    out = StringIO()
    call_command("create_operator_groups", stdout=out)
    call_command("create_operator_groups", stdout=out)  # twice: no duplicates, same lists
    viewers = {p.codename for p in Group.objects.get(name=VIEWERS).permissions.all()}
    operators = {p.codename for p in Group.objects.get(name=OPERATORS).permissions.all()}
    assert viewers and all(code.startswith("view_") for code in viewers)
    assert operators - viewers == {
        "change_call",
        "change_stream",
        "change_callbackdelivery",
        "add_application",
        "change_application",
        "delete_application",
    }
    assert Group.objects.filter(name__in=[VIEWERS, OPERATORS]).count() == 2


def test_account_credentials_prints_the_current_tokens(account: Account) -> None:
    out = StringIO()
    call_command("account_credentials", account.auth_id, stdout=out)
    assert json.loads(out.getvalue()) == {
        "auth_id": account.auth_id,
        "auth_token": account.auth_token,
        "ingest_token": account.ingest_token,
    }
