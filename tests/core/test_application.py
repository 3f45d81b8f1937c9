"""Answer and hangup request parameters, hangup causes, and the Application resource's validation (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from streams.core import application as app


def facts(**overrides: object) -> app.CallFacts:
    values: dict[str, object] = {
        "call_uuid": "0d6a2b8e-5d7c-4b1a-9a63-1f0c2e9d4b10",
        "from_number": "+14155550100",
        "to_number": "+14155550199",
        "direction": "inbound",
        "auth_id": "MAZDK3OGJIMGZKNTEXAM",
        "started_at": datetime(2025, 11, 25, 10, 0, 0, 123456, tzinfo=UTC),
        "gateway_params": {"ForwardedFrom": "+14155550000", "Ignored": "x"},
    }
    values.update(overrides)
    return app.CallFacts(**values)  # type: ignore[arg-type]


def test_the_answer_request_carries_plivos_parameters() -> None:
    assert app.answer_params(facts()) == {
        "CallUUID": "0d6a2b8e-5d7c-4b1a-9a63-1f0c2e9d4b10",
        "From": "+14155550100",
        "To": "+14155550199",
        "Direction": "inbound",
        "CallStatus": "in-progress",
        "Event": "StartApp",
        "CallerName": "+14155550100",
        "SessionStart": "2025-11-25 10:00:00.123456",
        "RequestUUID": "0d6a2b8e-5d7c-4b1a-9a63-1f0c2e9d4b10",
        "ParentAuthID": "MAZDK3OGJIMGZKNTEXAM",
        "ForwardedFrom": "+14155550000",
    }


def test_the_hangup_request_adds_the_end_in_utc_and_why() -> None:
    local = timezone(timedelta(hours=5, minutes=30))
    started = datetime(2025, 11, 25, 15, 30, 0, tzinfo=local)  # 10:00:00 UTC
    params = app.hangup_params(
        facts(started_at=started), ended_at=started + timedelta(seconds=61.2), cause=app.END_OF_XML
    )
    assert {k: params[k] for k in ("CallStatus", "Event", "Duration", "BillDuration")} == {
        "CallStatus": "completed",
        "Event": "Hangup",
        "Duration": "62",
        "BillDuration": "120",
    }
    assert (params["StartTime"], params["AnswerTime"], params["EndTime"]) == (
        "2025-11-25 10:00:00",
        "2025-11-25 10:00:00",
        "2025-11-25 10:01:01",
    )
    assert (params["HangupCause"], params["HangupSource"], params["HangupCauseName"], params["HangupCauseCode"]) == (
        "NORMAL_CLEARING",
        "Plivo",
        "End Of XML Instructions",
        "4010",
    )
    zero = app.hangup_params(facts(), ended_at=facts().started_at, cause=app.CALLER)
    assert (zero["Duration"], zero["BillDuration"]) == ("0", "0")


def test_hangup_reasons_and_fragments() -> None:
    assert app.answer_xml_cause("busy").cause == "USER_BUSY"
    assert app.answer_xml_cause("rejected").cause == "CALL_REJECTED"
    assert app.answer_xml_cause("") == app.ANSWER_XML
    assert app.strip_fragment("https://a.example.com/x?y=1#ct=2000&rt=3000") == "https://a.example.com/x?y=1"


def test_create_requires_a_name_and_an_answer_url_and_defaults_the_hangup_url() -> None:
    with pytest.raises(app.ApplicationParamError) as info:
        app.validate_application({"app_name": "x"}, creating=True)
    assert info.value.errors == {"answer_url": "is required"}
    clean = app.validate_application(
        {
            "app_name": " Demo Speak ",
            "answer_url": "https://a.example.com/answer",
            "answer_method": "get",
            "default_number_app": "True",
            "cascade": True,
            "hangup_method": None,
        },
        creating=True,
    )
    assert clean == {
        "app_name": "Demo Speak",
        "answer_url": "https://a.example.com/answer",
        "answer_method": "GET",
        "default_number_app": True,
        "hangup_url": "https://a.example.com/answer",
    }
    assert app.validate_application({"hangup_url": ""}, creating=False) == {"hangup_url": ""}
    with pytest.raises(app.ApplicationParamError) as info:
        app.validate_application({"answer_url": "http://127.0.0.1/a"}, creating=False, forbid_private_callbacks=True)
    assert "private or loopback" in info.value.errors["answer_url"]
