"""The official plivo SDK (pinned in requirements.txt) drives a live hub unchanged but for its
base URL, patched as spec §8 describes. The call is opened directly (no gateway holds it),
so its streams stay `initiated`; that is all the REST surface needs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from unittest import mock

import plivo
import pytest
from plivo import exceptions as plivo_errors

from streams import services
from streams.models import Account, Call, Stream
from tests.conftest import Proc

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BOT = "wss://bot.example.com/ws"


@pytest.fixture
def sdk(hub: Proc, account: Account) -> Iterator[plivo.RestClient]:
    base = f"{hub.http}/v1/Account"
    with mock.patch.multiple(
        "plivo.rest.client",
        API_VOICE_BASE_URI=base,
        API_VOICE_BASE_URI_FALLBACK_1=base,
        API_VOICE_BASE_URI_FALLBACK_2=base,
        PLIVO_API_BASE_URI=base,
    ):
        client = plivo.RestClient(account.auth_id, account.auth_token)
        yield client
        client.session.close()


@pytest.fixture
def live_call(account: Account) -> Call:
    return services.call_open(account=account, call_uuid=uuid.uuid4(), from_number="+15550001")


def test_the_plivo_sdk_starts_lists_gets_and_stops_streams(sdk: plivo.RestClient, live_call: Call) -> None:
    call_uuid = str(live_call.call_uuid)

    started = sdk.calls.start_stream(
        call_uuid, BOT, bidirectional=True, audio_track="inbound", content_type="audio/x-mulaw;rate=8000", cx_bot=False
    )
    assert started.message == "audio streaming started"
    assert uuid.UUID(started.api_id)
    first = started.stream_id
    second = sdk.calls.start_stream(call_uuid, "wss://bot.example.com/other", extra_headers="tenant=acme").stream_id

    listed = sdk.calls.get_all_streams(call_uuid)
    assert listed.meta.total_count == listed.meta.count == 2
    assert listed.meta.next is None and listed.meta.previous is None
    assert {obj.stream_id for obj in listed.objects} == {first, second}

    detail = sdk.calls.get_details_of_specific_stream(call_uuid, first)
    assert (detail.stream_id, detail.call_uuid, detail.service_url) == (first, call_uuid, BOT)
    assert (detail.bidirectional, detail.audio_track, detail.status) == (True, "inbound", "initiated")
    assert detail.content_type == "audio/x-mulaw;rate=8000"
    assert detail.plivo_auth_id == sdk.session.auth[0]
    assert detail.resource_uri == f"/v1/Account/{sdk.session.auth[0]}/Call/{call_uuid}/Stream/{first}/"

    assert sdk.calls.delete_specific_stream(call_uuid, first) is None  # 204, empty body
    stopped = sdk.calls.get_details_of_specific_stream(call_uuid, first)
    assert (stopped.status, stopped.hangup_reason) == ("stopped", "API request")
    assert stopped.end_time is not None

    with pytest.raises(plivo_errors.ValidationError, match="No active stream found"):
        sdk.calls.delete_specific_stream(call_uuid, first)

    assert sdk.calls.delete_all_streams(call_uuid) is None
    assert sdk.calls.delete_all_streams(call_uuid) is None  # idempotent
    assert Stream.objects.get(stream_id=second).hangup_reason == Stream.Reason.API_REQUEST


def test_the_plivo_sdk_sees_plivo_errors(sdk: plivo.RestClient, live_call: Call, other_account: Account) -> None:
    call_uuid = str(live_call.call_uuid)
    with pytest.raises(plivo_errors.ValidationError, match="service_url"):
        sdk.calls.start_stream(call_uuid, "https://not-a-websocket.example.com/")
    sdk.calls.start_stream(call_uuid, BOT)
    with pytest.raises(plivo_errors.ValidationError, match="already exists"):
        sdk.calls.start_stream(call_uuid, BOT)
    with pytest.raises(plivo_errors.ResourceNotFoundError):
        sdk.calls.get_all_streams(str(uuid.uuid4()))

    other = services.call_open(account=other_account, call_uuid=uuid.uuid4())
    with pytest.raises(plivo_errors.ResourceNotFoundError):
        sdk.calls.start_stream(str(other.call_uuid), BOT)
    assert not Stream.objects.filter(call=other).exists()

    wrong = plivo.RestClient(live_call.account.auth_id, "not-the-token")
    with pytest.raises(plivo_errors.AuthenticationError):
        wrong.calls.get_all_streams(call_uuid)


def test_the_plivo_sdk_hangs_up_a_call(sdk: plivo.RestClient, live_call: Call) -> None:
    call_uuid = str(live_call.call_uuid)
    stream_id = sdk.calls.start_stream(call_uuid, BOT).stream_id

    assert sdk.calls.hangup(call_uuid) is None

    live_call.refresh_from_db()
    assert live_call.status == Call.Status.ENDED
    stream = Stream.objects.get(stream_id=stream_id)
    assert (stream.status, stream.hangup_reason) == ("stopped", "Call hangup")
    # pipecat and agent-transport treat this 404 as "already gone"
    with pytest.raises(plivo_errors.ResourceNotFoundError):
        sdk.calls.hangup(call_uuid)
    # reads of an ended call's streams keep working (D19)
    assert sdk.calls.get_details_of_specific_stream(call_uuid, stream_id).status == "stopped"
