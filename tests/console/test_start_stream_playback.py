"""The console's Start stream form refuses a bidirectional stream the call's gateway cannot play,
and starts it one-way when asked one-way (decision in docs/freeswitch.md)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from streams.models import Call, Stream
from tests.console.test_actions import form_data

NOTE = 'subprotocol audio.drachtio.org, without "playback": true in the metadata'


@pytest.mark.django_db
def test_the_start_form_refuses_playback_the_gateway_cannot_do(operator_client: Client, call: Call) -> None:
    Call.objects.filter(pk=call.pk).update(gateway_metadata={"playback": False, "playbackNote": NOTE})
    url = reverse("admin:streams_call_start_stream", args=[call.pk])
    refused = operator_client.post(url, form_data(bidirectional="on"))
    assert refused.status_code == 200
    assert (
        f"Not on this call: this gateway connection cannot play audio into the call ({NOTE})."
        in refused.content.decode().replace("&quot;", '"')
    )
    assert not Stream.objects.filter(call=call).exists()
    operator_client.post(url, form_data())
    assert Stream.objects.get(call=call).bidirectional is False


@pytest.mark.django_db
def test_calls_recorded_before_the_hub_knew_still_play(operator_client: Client, call: Call) -> None:
    assert "playback" not in call.gateway_metadata
    operator_client.post(reverse("admin:streams_call_start_stream", args=[call.pk]), form_data(bidirectional="on"))
    assert Stream.objects.get(call=call).bidirectional is True
