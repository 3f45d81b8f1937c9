from __future__ import annotations

import string
from dataclasses import asdict, fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.validation import (
    EgressPolicy,
    StreamParamError,
    check_callback_url,
    check_extra_headers,
    check_ws_url,
    parse_networks,
    validate_stream_params,
)

URL = "wss://bot.example.com/ws"


def errors_of(data: dict[str, object], policy: EgressPolicy | None = None) -> dict[str, str]:
    with pytest.raises(StreamParamError) as info:
        validate_stream_params(data, policy=policy)
    return info.value.errors


def test_defaults_follow_the_spec() -> None:
    params = validate_stream_params({"service_url": URL})
    assert params.bidirectional is False
    assert params.audio_track == "inbound"
    assert params.stream_timeout == 86400
    assert params.content_type == "audio/x-l16;rate=8000"
    assert params.status_callback_method == "POST"
    assert params.extra_headers == ""
    assert params.keep_call_alive is False


def test_xml_names_and_string_values_are_accepted() -> None:
    params = validate_stream_params(
        {
            "serviceUrl": f"  {URL} ",
            "bidirectional": "true",
            "audioTrack": "inbound",
            "streamTimeout": "120",
            "statusCallbackUrl": "https://app.example.com/cb",
            "statusCallbackMethod": "get",
            "contentType": "audio/x-mulaw;rate=8000",
            "extraHeaders": "tenant=acme,agent=7",
            "keepCallAlive": "false",
        }
    )
    assert params.service_url == URL
    assert params.bidirectional is True
    assert params.stream_timeout == 120
    assert params.status_callback_method == "GET"
    assert params.content_type == "audio/x-mulaw;rate=8000"


def test_the_sdk_extras_are_ignored() -> None:
    params = validate_stream_params({"service_url": URL, "call_uuid": "c-1", "cx_bot": True})
    assert params.service_url == URL


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({}, "service_url", "required"),
        ({"service_url": "https://x.example/ws"}, "service_url", "ws://"),
        ({"service_url": "ws://"}, "service_url", "host"),
        ({"service_url": "ws://a b"}, "service_url", "whitespace"),
        ({"service_url": "wss://x/" + "a" * 2050}, "service_url", "2048"),
        ({"service_url": 5}, "service_url", "required"),
        ({"service_url": URL, "bidirectional": "yes"}, "bidirectional", "true or false"),
        ({"service_url": URL, "bidirectional": 1}, "bidirectional", "true or false"),
        ({"service_url": URL, "audio_track": "left"}, "audio_track", "inbound"),
        ({"service_url": URL, "bidirectional": True, "audio_track": "both"}, "audio_track", "bidirectional"),
        ({"service_url": URL, "bidirectional": "true", "audioTrack": "outbound"}, "audioTrack", "bidirectional"),
        ({"service_url": URL, "stream_timeout": 0}, "stream_timeout", "positive"),
        ({"service_url": URL, "stream_timeout": -5}, "stream_timeout", "positive"),
        ({"service_url": URL, "stream_timeout": "1.5"}, "stream_timeout", "positive"),
        ({"service_url": URL, "stream_timeout": True}, "stream_timeout", "positive"),
        ({"service_url": URL, "status_callback_method": "PUT"}, "status_callback_method", "GET, POST"),
        ({"service_url": URL, "status_callback_url": "ftp://x/cb"}, "status_callback_url", "http"),
        ({"service_url": URL, "content_type": "audio/x-l16;rate=24000"}, "content_type", "one of"),
        ({"service_url": URL, "extra_headers": "a=1;b=2"}, "extra_headers", "A-Z"),
        ({"service_url": URL, "extra_headers": "novalue"}, "extra_headers", "key=value"),
        ({"service_url": URL, "extra_headers": "k=" + "v" * 600}, "extra_headers", "512"),
        ({"service_url": URL, "noise_cancellation_level": 20}, "noise_cancellation_level", "60"),
        ({"service_url": URL, "colour": "blue"}, "colour", "not a stream parameter"),
        ({"service_url": URL, "serviceUrl": URL}, "serviceUrl", "twice"),
    ],
)
def test_every_rule_names_its_field(data: dict[str, object], field: str, fragment: str) -> None:
    errors = errors_of(data)
    assert field in errors, errors
    assert fragment in errors[field]


def test_all_bad_fields_are_reported_together() -> None:
    errors = errors_of({"service_url": "http://x", "audio_track": "left", "stream_timeout": 0})
    assert set(errors) == {"service_url", "audio_track", "stream_timeout"}


def test_private_callback_hosts_can_be_forbidden() -> None:
    assert check_callback_url("http://127.0.0.1:9/cb") == "http://127.0.0.1:9/cb"
    for url in ("http://127.0.0.1/cb", "http://10.1.2.3/cb", "http://localhost/cb", "http://[::1]/cb"):
        with pytest.raises(ValueError, match="private"):
            check_callback_url(url, forbid_private=True)
    assert check_callback_url("https://hooks.example.com/cb", forbid_private=True)


def test_the_egress_policy_covers_service_urls_and_opens_allowed_networks() -> None:
    forbid = EgressPolicy(forbid_private_callbacks=True, forbid_private_services=True)
    for url in ("ws://10.0.0.5/ws", "wss://localhost/ws", "ws://[fd00::1]:8080/ws", "ws://100.64.1.1/ws"):
        errors = errors_of({"service_url": url}, policy=forbid)
        assert errors == {"service_url": "points to a private or loopback address, which this hub forbids"}
    assert validate_stream_params({"service_url": "wss://bot.example.com/ws"}, policy=forbid)
    # names are checked when connecting (they may resolve anywhere); literals and local names here
    assert validate_stream_params({"service_url": "ws://bot.internal/ws"}, policy=forbid)
    allowed = EgressPolicy(True, True, tuple(parse_networks(["10.0.0.0/8", "127.0.0.1"])))
    params = validate_stream_params(
        {"service_url": "ws://10.0.0.5/ws", "status_callback_url": "http://localhost:9/cb"}, policy=allowed
    )
    assert params.service_url == "ws://10.0.0.5/ws" and params.status_callback_url == "http://localhost:9/cb"
    assert errors_of({"service_url": "ws://192.168.1.1/ws"}, policy=allowed)
    with pytest.raises(ValueError, match="'intranet' is not an IP network"):
        parse_networks(["intranet"])


ALNUM = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=20)


@given(st.lists(st.tuples(ALNUM, ALNUM), min_size=1, max_size=10))
def test_well_formed_extra_headers_pass_when_short_enough(pairs: list[tuple[str, str]]) -> None:
    text = ",".join(f"{k}={v}" for k, v in pairs)
    if len(text) <= 512:
        assert check_extra_headers(text) == text
    else:
        with pytest.raises(ValueError):
            check_extra_headers(text)


@given(st.text(max_size=600))
def test_extra_headers_never_crash_and_accept_only_the_grammar(text: str) -> None:
    try:
        result = check_extra_headers(text)
    except ValueError:
        return
    if result:
        assert len(result.encode()) <= 512
        for pair in result.split(","):
            key, _, value = pair.partition("=")
            assert key.isalnum() and key.isascii() and value.isalnum() and value.isascii()


@given(st.text(max_size=300))
def test_ws_urls_never_crash_and_only_ws_schemes_pass(text: str) -> None:
    try:
        url = check_ws_url(text)
    except ValueError:
        return
    assert url.startswith(("ws://", "wss://"))


@given(
    scheme=st.sampled_from(["ws", "wss"]),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){0,2}", fullmatch=True),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=st.from_regex(r"(/[A-Za-z0-9_.-]{0,10}){0,3}", fullmatch=True),
)
def test_generated_ws_urls_are_accepted(scheme: str, host: str, port: int | None, path: str) -> None:
    url = f"{scheme}://{host}{f':{port}' if port else ''}{path}"
    assert check_ws_url(url) == url


@pytest.mark.parametrize("value", [1e308, 10**12, "99999999999", 30 * 86400 + 1])
def test_absurd_timeouts_are_refused_before_they_reach_the_database(value: object) -> None:
    assert "at most" in errors_of({"service_url": URL, "stream_timeout": value})["stream_timeout"]


# --- opt-in stream resume (docs/resume.md) ------------------------------------------------


def test_reconnect_is_off_by_default_and_its_window_defaults_to_ten_seconds_when_on() -> None:
    off = validate_stream_params({"service_url": URL})
    assert (off.reconnect, off.reconnect_window) == (False, 0)
    on = validate_stream_params({"serviceUrl": URL, "reconnect": "true"})
    assert (on.reconnect, on.reconnect_window) == (True, 10)
    given = validate_stream_params({"service_url": URL, "reconnect": True, "reconnect_window": "40"})
    assert (given.reconnect, given.reconnect_window) == (True, 40)
    assert validate_stream_params({"serviceUrl": URL, "reconnect": True, "reconnectWindow": 1}).reconnect_window == 1


@pytest.mark.parametrize("value", ["yes", 1, "1", None, "maybe"])
def test_reconnect_must_be_a_boolean(value: object) -> None:
    assert errors_of({"service_url": URL, "reconnect": value}) == {"reconnect": "must be true or false"}


@pytest.mark.parametrize("value", [0, 41, -1, "0", "41", 1.5, "ten", True, None, ""])
def test_the_reconnect_window_is_an_integer_from_1_to_40(value: object) -> None:
    errors = errors_of({"service_url": URL, "reconnect": True, "reconnectWindow": value})
    assert errors == {"reconnectWindow": "must be an integer from 1 to 40 (seconds)"}


@pytest.mark.parametrize("reconnect", [None, False, "false"])
def test_the_reconnect_window_is_only_accepted_with_reconnect(reconnect: object) -> None:
    data: dict[str, object] = {"service_url": URL, "reconnect_window": 5}
    if reconnect is not None:
        data["reconnect"] = reconnect
    assert errors_of(data) == {"reconnect_window": "may only be given with reconnect=true"}


def test_the_model_fields_are_every_parameter_as_validated() -> None:
    """as_model_fields (what a Stream row is built from) holds every field, each the validated value."""
    params = validate_stream_params(
        {
            "service_url": URL,
            "bidirectional": "true",
            "stream_timeout": "120",
            "status_callback_url": "https://cb.example.com/s",
            "status_callback_method": "GET",
            "content_type": "audio/x-mulaw;rate=8000",
            "extra_headers": "a=1,b=2",
            "keep_call_alive": True,
            "reconnect": True,
            "reconnect_window": 30,
        }
    )
    assert params.as_model_fields() == asdict(params)
    assert set(params.as_model_fields()) == {f.name for f in fields(params)}
    assert params.as_model_fields()["stream_timeout"] == 120 and params.as_model_fields()["bidirectional"] is True
