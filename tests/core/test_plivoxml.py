"""The Plivo XML parser: what the plivo SDK's plivoxml writes parses; every bad answer gets a precise
PlivoXmlError and nothing else ever escapes (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plivo import plivoxml

from streams.core.plivoxml import (
    MAX_DOCUMENT_BYTES,
    HangupVerb,
    PlivoXmlError,
    StreamVerb,
    Unsupported,
    WaitVerb,
    parse_document,
)
from streams.core.validation import StreamParamError, validate_stream_params


def sdk(*elements: object, pretty: bool = True) -> bytes:
    response = plivoxml.ResponseElement()
    for element in elements:
        response.add(element)
    return response.to_string(pretty=pretty).encode()


def error_of(body: bytes) -> PlivoXmlError:
    with pytest.raises(PlivoXmlError) as info:
        parse_document(body)
    return info.value


@pytest.mark.parametrize("pretty", [True, False])
def test_what_the_plivo_sdk_writes_parses_into_verbs(pretty: bool) -> None:
    body = sdk(
        plivoxml.StreamElement(
            "wss://bot.example.com/ws",
            bidirectional=True,
            audioTrack="inbound",
            streamTimeout=600,
            statusCallbackUrl="https://app.example.com/status",
            statusCallbackMethod="GET",
            contentType="audio/x-mulaw;rate=8000",
            extraHeaders="tenant=acme,agent=7",
            keepCallAlive=True,
        ),
        plivoxml.WaitElement(length=5, silence=True, min_silence=500, beep=False),
        plivoxml.SpeakElement("Goodbye", voice="WOMAN", language="en-US", loop=1),
        plivoxml.HangupElement(reason="busy", schedule=10),
        pretty=pretty,
    )
    document = parse_document(body)
    stream, wait, speak, hangup = document.verbs
    assert isinstance(stream, StreamVerb) and stream.index == 1
    assert stream.params == validate_stream_params(
        {
            "service_url": "wss://bot.example.com/ws",
            "bidirectional": True,
            "audio_track": "inbound",
            "stream_timeout": 600,
            "status_callback_url": "https://app.example.com/status",
            "status_callback_method": "GET",
            "content_type": "audio/x-mulaw;rate=8000",
            "extra_headers": "tenant=acme,agent=7",
            "keep_call_alive": True,
        }
    )
    assert wait == WaitVerb(2, length=5, silence=True, min_silence_ms=500, beep=False)
    assert speak == Unsupported(3, "Speak", "<Speak> is a Plivo verb streamhub does not execute; skipped")
    assert hangup == HangupVerb(4, reason="busy", schedule=10)
    assert document.streams == 1


def test_declarations_whitespace_entities_and_an_empty_response() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b"<Response>\n  <Stream>\n    wss://x.example.com/ws?a=1&amp;b=2\n  </Stream>\n</Response>"
    )
    (stream,) = parse_document(body).verbs
    assert isinstance(stream, StreamVerb) and stream.params.service_url == "wss://x.example.com/ws?a=1&b=2"
    assert parse_document(sdk()).verbs == ()  # <Response/>
    assert parse_document(b"<Response><Wait/><Hangup/></Response>").verbs == (WaitVerb(1), HangupVerb(2))


def test_names_are_case_sensitive_and_unknown_elements_are_skipped_with_a_note() -> None:
    verbs = parse_document(b"<Response><stream>wss://x/ws</stream><Foo/><GetDigits/></Response>").verbs
    assert [v.note for v in verbs if isinstance(v, Unsupported)] == [
        "<stream> is not executed: element names are case-sensitive (did you mean <Stream>?)",
        "<Foo> is not a Plivo XML element streamhub executes; skipped",
        "<GetDigits> is a Plivo verb streamhub does not execute; skipped",
    ]


def test_stream_errors_are_the_rest_validators_under_the_xml_names() -> None:
    body = sdk(plivoxml.StreamElement("wss://x.example.com/ws", bidirectional=True, audioTrack="both"))
    rest = StreamParamError({"audioTrack": "must be inbound when bidirectional is true"})
    with pytest.raises(StreamParamError) as same:
        validate_stream_params({"serviceUrl": "wss://x.example.com/ws", "bidirectional": "true", "audioTrack": "both"})
    assert same.value.errors == rest.errors
    error = error_of(body)
    assert str(error) == "element 1 <Stream>, attribute audioTrack: must be inbound when bidirectional is true"
    assert (error.element, error.attribute) == ("element 1 <Stream>", "audioTrack")

    error = error_of(sdk(plivoxml.SpeakElement("hi"), plivoxml.StreamElement("wss://x/ws", streamTimeout="abc")))
    assert str(error) == "element 2 <Stream>, attribute streamTimeout: must be a positive integer"
    assert str(error_of(b"<Response><Stream>  </Stream></Response>")) == (
        "element 1 <Stream>, the URL (element text): is required (a ws:// or wss:// URL)"
    )
    assert str(error_of(b'<Response><Stream audio_track="both">wss://x/ws</Stream></Response>')) == (
        "element 1 <Stream>, attribute audio_track: is not a <Stream> attribute (the URL is the element's text)"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the answer is empty: expected a Plivo XML <Response>"),
        (b"<html><body>Oops", "the answer is not well-formed XML: "),
        (b"<Document/>", "the root element is <Document>, not <Response>"),
        (b'<Response><Wait length="0"/></Response>', "element 1 <Wait>, attribute length: must be a positive integer"),
        (b'<Response><Wait length="86401"/></Response>', "element 1 <Wait>, attribute length: must be at most 86400"),
        (b'<Response><Wait size="1"/></Response>', "element 1 <Wait>, attribute size: is not a <Wait> attribute"),
        (b'<Response><Hangup reason="nope"/></Response>', "element 1 <Hangup>, attribute reason: must be one of"),
        (b"<Response><Stream><Wait/></Stream></Response>", "element 1 <Stream> has a child element <Wait>"),
        (b"<Response>" + b"<Wait/>" * 201 + b"</Response>", "<Response> has 201 elements; at most 200 are run"),
        (
            b"<Response>" + b"".join(b"<Stream>wss://x/%d</Stream>" % i for i in range(21)) + b"</Response>",
            "<Response> has 21 <Stream> elements; at most 20 per call",
        ),
        (b"<Response>&nbsp;</Response>", "undefined entity"),
        (b'<?xml version="1.0" encoding="klingon"?><Response/>', "cannot be decoded"),
    ],
)
def test_bad_documents_say_what_and_where(body: bytes, message: str) -> None:
    assert message in str(error_of(body))


def test_entity_tricks_are_refused_before_anything_expands() -> None:
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(b'<!ENTITY a%d "%s">' % (i, (b"&a%d;" % (i - 1) if i > 1 else b"&a;") * 10) for i in range(1, 10))
        + b"]><Response><Stream>wss://x/&a9;</Stream></Response>"
    )
    external = b'<!DOCTYPE r [<!ENTITY s SYSTEM "file:///etc/passwd">]><Response>&s;</Response>'
    parameter = b'<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]><Response/>'
    for body in (laughs, external, parameter, b'<!DOCTYPE Response SYSTEM "http://127.0.0.1:9/x.dtd"><Response/>'):
        assert str(error_of(body)) == "the answer has a DTD (<!DOCTYPE …>): DTDs and entity declarations are refused"


def test_the_size_cap_is_plivos_100_kb() -> None:
    padded = b"<Response>" + b" " * (MAX_DOCUMENT_BYTES - len(b"<Response></Response>")) + b"</Response>"
    assert len(padded) == MAX_DOCUMENT_BYTES and parse_document(padded).verbs == ()
    assert str(error_of(padded + b" ")) == "the answer is 102401 bytes, over Plivo's 102400-byte limit"


FRAGMENTS = st.sampled_from(
    [
        b"<Response>",
        b"</Response>",
        b"<Stream",
        b">",
        b"</Stream>",
        b"wss://x.example.com/ws",
        b"<Wait",
        b' length="',
        b'"',
        b"/>",
        b"<Hangup",
        b' reason="busy"',
        b"<!DOCTYPE r [",
        b'<!ENTITY e "x">',
        b"]>",
        b"&e;",
        b"&amp;",
        b"&#0;",
        b"&#x110000;",
        b"<?xml",
        b' encoding="utf-16"',
        b"?>",
        b"\xff\xfe",
        b"\x00",
        b' keepCallAlive="maybe"',
        b' audioTrack="both" bidirectional="true"',
        b"<Speak>",
        b"]]>",
        b"<![CDATA[",
        b"<!--",
        b"-->",
        b"\xef\xbb\xbf",
        b' streamTimeout="99999999999999"',
        b"<a:b xmlns:a='u'>",
    ]
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(st.binary(max_size=400), st.lists(FRAGMENTS, max_size=25).map(b"".join)))
def test_it_never_raises_anything_but_its_own_error(body: bytes) -> None:
    try:
        parse_document(body)
    except PlivoXmlError as exc:
        assert str(exc)


def test_stream_resume_attributes_are_stream_attributes_and_checked_like_the_others() -> None:
    body = b'<Response><Stream reconnect="true" reconnectWindow="15">wss://bot.example.com/ws</Stream></Response>'
    [verb] = parse_document(body).verbs
    assert isinstance(verb, StreamVerb)
    assert (verb.params.reconnect, verb.params.reconnect_window) == (True, 15)
    error = error_of(b'<Response><Stream reconnectWindow="15">wss://bot.example.com/ws</Stream></Response>')
    assert error.attribute == "reconnectWindow" and "only be given with reconnect=true" in str(error)
    error = error_of(
        b'<Response><Stream reconnect="true" reconnectWindow="90">wss://bot.example.com/ws</Stream></Response>'
    )
    assert error.attribute == "reconnectWindow" and "from 1 to 40" in str(error)
