"""The REST side of opt-in stream resume (docs/resume.md): parameters, errors, the stream object."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from streams import services
from streams.console.views import StartStreamForm
from streams.models import Account, Call, Stream
from tests.api.conftest import SERVICE_URL, api_path, client_for

pytestmark = pytest.mark.django_db


def streams_path(account: Account, call: Call, *rest: object) -> str:
    return api_path(account, "Call", call.call_uuid, "Stream", *rest)


def test_a_stream_opts_in_over_rest_and_its_object_says_so(api: APIClient, account: Account, call: Call) -> None:
    response = api.post(
        streams_path(account, call), {"service_url": SERVICE_URL, "reconnect": True, "reconnect_window": 20}, "json"
    )
    assert response.status_code == 201, response.content
    stream = Stream.objects.get(stream_id=response.json()["stream_id"])
    assert (stream.reconnect, stream.reconnect_window, stream.resumes) == (True, 20, 0)
    body = api.get(streams_path(account, call, stream.stream_id)).json()
    assert (body["reconnect"], body["reconnect_window"], body["resumes"]) == (True, 20, 0)


def test_a_stream_that_does_not_opt_in_has_no_resume_fields(api: APIClient, account: Account, call: Call) -> None:
    response = api.post(streams_path(account, call), {"service_url": SERVICE_URL}, format="json")
    stream = Stream.objects.get(stream_id=response.json()["stream_id"])
    assert (stream.reconnect, stream.reconnect_window) == (False, 0)
    body = api.get(streams_path(account, call, stream.stream_id)).json()
    assert not {"reconnect", "reconnect_window", "resumes"} & set(body)
    assert "reconnect" not in services.event_params(stream, "StartStream")


def test_the_callbacks_of_a_stream_that_opted_in_carry_its_setting(
    api: APIClient, account: Account, call: Call
) -> None:
    response = api.post(streams_path(account, call), {"service_url": SERVICE_URL, "reconnect": "true"}, format="json")
    stream = Stream.objects.select_related("call", "account").get(stream_id=response.json()["stream_id"])
    params = services.event_params(stream, "DegradedStream")
    assert (params["reconnect"], params["reconnectWindow"]) == ("true", "10")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"reconnect": "yes"}, "reconnect: must be true or false"),
        ({"reconnect": True, "reconnect_window": 41}, "reconnect_window: must be an integer from 1 to 40"),
        ({"reconnect": True, "reconnect_window": 0}, "reconnect_window: must be an integer from 1 to 40"),
        ({"reconnect": True, "reconnect_window": "soon"}, "reconnect_window: must be an integer from 1 to 40"),
        ({"reconnect_window": 5}, "reconnect_window: may only be given with reconnect=true"),
        ({"reconnect": False, "reconnect_window": 5}, "reconnect_window: may only be given with reconnect=true"),
    ],
)
def test_bad_resume_parameters_are_a_400_naming_them(
    api: APIClient, account: Account, call: Call, body: dict[str, Any], fragment: str
) -> None:
    response = api.post(streams_path(account, call), {"service_url": SERVICE_URL, **body}, format="json")
    assert response.status_code == 400, response.content
    assert fragment in response.json()["error"]
    assert not Stream.objects.exists()


def test_another_account_cannot_see_a_resumable_stream(
    api: APIClient, other_account: Account, account: Account, call: Call
) -> None:
    response = api.post(streams_path(account, call), {"service_url": SERVICE_URL, "reconnect": True}, format="json")
    stream_id = response.json()["stream_id"]
    other = client_for(other_account)
    assert other.get(api_path(other_account, "Call", call.call_uuid, "Stream", stream_id)).status_code == 404


def test_the_admin_form_takes_reconnect_with_an_empty_window_as_the_default() -> None:
    form = StartStreamForm(
        {
            "service_url": SERVICE_URL,
            "audio_track": "inbound",
            "content_type": "audio/x-l16;rate=8000",
            "stream_timeout": "86400",
            "status_callback_method": "POST",
            "noise_cancellation_level": "85",
            "reconnect": "on",
            "reconnect_window": "",
        }
    )
    assert form.is_valid(), form.errors
    assert (form.params.reconnect, form.params.reconnect_window) == (True, 10)
    bad = StartStreamForm({**form.data, "reconnect": "", "reconnect_window": "5"})
    assert not bad.is_valid()
    assert "may only be given with reconnect=true" in str(bad.errors)
