from __future__ import annotations

import asyncio
from urllib.parse import unquote

import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st
from plivo.utils.signature_v3 import validate_v3_signature
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from callbacks import http, signing
from tests.conftest import free_port

TOKEN = "MYAUTHTOKEN123"
NONCE = "12345678901234567890"


@pytest.mark.parametrize(
    ("method", "uri", "params", "expected_string", "expected_signature"),
    [
        (
            "POST",
            "https://hub.example.com/cb",
            {"Event": "StartStream", "StreamID": "s1", "CallUUID": "c1"},
            "https://hub.example.com/cb?CallUUIDc1EventStartStreamStreamIDs1",
            "wkA67v2UqX2YTUDTMDfJN061CG2QVi2rTK64UfHi6ds=",
        ),
        (
            "POST",
            "https://hub.example.com/cb?x=1&a=2",
            {"Event": "StartStream", "StreamID": "s1"},
            "https://hub.example.com/cb?a=2&x=1.EventStartStreamStreamIDs1",
            "fisQfPgkjfeuwg/jgfGyVjUFGysBB7N6k4LxVHUqOAw=",
        ),
        (
            "POST",
            "https://hub.example.com/cb",
            {},
            "https://hub.example.com/cb",
            "Px2+ANM/KBeDN431kqmb3beRo8QrdMeyIAW6UYY+L24=",
        ),
        (
            "GET",
            "https://hub.example.com/cb?Event=StartStream&StreamID=s1",
            {},
            "https://hub.example.com/cb?Event=StartStream&StreamID=s1",
            "O/tChbE0QKmm3oadz1PzgbS4YPa392gMqOFg12YccWs=",
        ),
    ],
)
def test_it_matches_the_spec_vectors(
    method: str, uri: str, params: dict[str, str], expected_string: str, expected_signature: str
) -> None:
    assert signing.signed_string(method=method, uri=uri, params=params) == expected_string
    signature = signing.signature_v3(method=method, uri=uri, params=params, nonce=NONCE, auth_token=TOKEN)
    assert signature == expected_signature
    assert validate_v3_signature(method, uri, NONCE, TOKEN, signature, dict(params))


def test_get_and_post_sign_the_same_params_differently() -> None:
    params = {"Event": "StopStream", "StreamID": "s1"}
    post = signing.signature_v3(method="POST", uri="https://a.example/cb", params=params, nonce=NONCE, auth_token=TOKEN)
    get = signing.signature_v3(
        method="GET", uri="https://a.example/cb?Event=StopStream&StreamID=s1", nonce=NONCE, auth_token=TOKEN
    )
    assert post != get
    assert not validate_v3_signature("GET", "https://a.example/cb?Event=StopStream&StreamID=s1", NONCE, TOKEN, post)


def test_a_wrong_token_or_nonce_is_rejected_by_the_sdk() -> None:
    headers = signing.sign_callback(
        method="POST", url="https://a.example/cb", params={"Event": "StartStream"}, auth_token=TOKEN, nonce=NONCE
    )
    signature = headers[signing.SIGNATURE_HEADER]
    assert validate_v3_signature("POST", "https://a.example/cb", NONCE, TOKEN, signature, {"Event": "StartStream"})
    assert not validate_v3_signature(
        "POST", "https://a.example/cb", NONCE, "other", signature, {"Event": "StartStream"}
    )
    assert not validate_v3_signature(
        "POST", "https://a.example/cb", "1" * 20, TOKEN, signature, {"Event": "StartStream"}
    )
    assert not validate_v3_signature("POST", "https://a.example/cb", NONCE, TOKEN, signature, {"Event": "StopStream"})


def test_nonces_are_twenty_fresh_digits() -> None:
    nonces = {signing.new_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) == 20 and n.isdigit() for n in nonces)


param_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30)
# plivo-python parses a URL's query as ASCII bytes and raises on percent-encoded
# non-ASCII, so anything in a query string (GET params, the customer's own query) is
# tested with printable ASCII; form fields (POST) take any text.
ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
param_key = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,15}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    method=st.sampled_from(["GET", "POST"]),
    query=st.dictionaries(param_key, ascii_text, max_size=3),
)
def test_the_sdk_accepts_every_callback_as_it_goes_on_the_wire(
    data: st.DataObject, method: str, query: dict[str, str]
) -> None:
    """Whatever the params and the customer's own query, the request as sent validates."""
    params = data.draw(st.dictionaries(param_key, param_text if method == "POST" else ascii_text, max_size=8))
    base = http.prepare(method="GET", url="https://cb.example.com/hook/", params=query).url
    prepared = http.prepare(method=method, url=str(base), params=params)
    signed = params if method == "POST" else {}
    headers = signing.sign_callback(method=method, url=str(prepared.url), params=signed, auth_token=TOKEN, nonce=NONCE)
    # A receiver sees the URL as sent and, for POST, the decoded form fields.
    assert validate_v3_signature(
        method, str(prepared.url), NONCE, TOKEN, headers[signing.SIGNATURE_HEADER], dict(signed) or None
    )


def test_the_ws_upgrade_carries_both_sdk_variants() -> None:
    node, python = signing.ws_upgrade_uris("wss://Bot.Example.com:443/media/ws?tenant=acme")
    assert node == "https://bot.example.com/media/ws?tenant=acme"
    assert python == "http://bot.example.com/media/ws?tenant=acme/websocket"
    node, python = signing.ws_upgrade_uris("ws://127.0.0.1:8765")
    assert node == "http://127.0.0.1:8765/"
    assert python == "http://127.0.0.1:8765//websocket"

    headers = signing.sign_ws_upgrade("wss://bot.example.com/media/ws?tenant=acme", TOKEN, NONCE)
    assert headers[signing.NONCE_HEADER] == NONCE
    first, second = headers[signing.SIGNATURE_HEADER].split(",")
    assert headers[signing.MA_SIGNATURE_HEADER] == headers[signing.SIGNATURE_HEADER]
    # Each official validator finds its own variant among the comma-separated ones.
    header = headers[signing.SIGNATURE_HEADER]
    node_uri, python_uri = signing.ws_upgrade_uris("wss://bot.example.com/media/ws?tenant=acme")
    assert validate_v3_signature("GET", node_uri, NONCE, TOKEN, header)
    assert validate_v3_signature("GET", python_uri, NONCE, TOKEN, header)
    assert not validate_v3_signature("GET", node_uri, NONCE, TOKEN, second)
    assert not validate_v3_signature("GET", python_uri, NONCE, TOKEN, first)


async def test_a_real_upgrade_validates_the_way_both_stream_sdks_check_it() -> None:
    """A websockets server rebuilds the URL from the request it received, as each SDK does."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/media%20in/ws?tenant=acme&agent=7"
    seen: dict[str, bool] = {}

    def check(connection: ServerConnection, request: Request) -> Response | None:
        host = request.headers["Host"]
        signature = request.headers["X-Plivo-Signature-V3"]
        nonce = request.headers["X-Plivo-Signature-V3-Nonce"]
        # plivo-stream-sdk-node: `${protocol}://${host}${request.url}`
        seen["node"] = validate_v3_signature("GET", f"http://{host}{request.path}", nonce, TOKEN, signature)
        # plivo-stream-sdk-python (FastAPI): Starlette URL (decoded path), ws:// -> http://, + "/websocket"
        path, _, query = request.path.partition("?")
        starlette = f"ws://{host}{unquote(path)}" + (f"?{query}" if query else "")
        python_uri = starlette.replace("ws://", "http://") + "/websocket"
        seen["python"] = validate_v3_signature("GET", python_uri, nonce, TOKEN, signature)
        return None

    async def handler(connection: ServerConnection) -> None:
        await connection.send("hello")

    async with serve(handler, "127.0.0.1", port, process_request=check):
        headers = signing.sign_ws_upgrade(url, TOKEN, signing.new_nonce())
        async with websockets.connect(url, additional_headers=headers) as client:
            assert await asyncio.wait_for(client.recv(), 5) == "hello"
    assert seen == {"node": True, "python": True}
