"""Plivo signature V3 for status callbacks and for the customer WebSocket upgrade (pure).

The contract is "whatever `plivo.utils.signature_v3.validate_v3_signature` accepts"
(spec §6.3), so this follows that code step for step, quirks included: the URI is
cut with `urlparse` (so `;params` on the last path segment are dropped), GET merges
the URI's decoded query with the passed params, POST appends `key`+`value` pairs with
no separators, the method compare is case-sensitive, and a header may carry several
comma-separated signatures (no spaces: the validator splits on "," and compares bytes).

The WebSocket upgrade (decision D22) carries two signatures in one header, because
Plivo's two stream SDKs rebuild different URLs from the same request:
- Node (`plivo-stream-sdk-node`): GET over `http(s)://<Host header><request target>`,
  https when the socket is TLS;
- Python (`plivo-stream-sdk-python`, FastAPI): Starlette's `ws(s)://<Host><decoded
  path>?<query>` with the first matching scheme text replaced by `http://`, then
  `/websocket` appended to the very end (after the query, if any).
Both are rebuilt here from what the `websockets` client puts on the wire.
"""

from __future__ import annotations

import base64
import functools
import hmac
import secrets
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, unquote, urlparse, urlunparse

from websockets.headers import build_host
from websockets.uri import parse_uri

SIGNATURE_HEADER = "X-Plivo-Signature-V3"
MA_SIGNATURE_HEADER = "X-Plivo-Signature-Ma-V3"
NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"
NONCE_DIGITS = 20

ParamValue = str | Sequence[str] | Mapping[str, object]
Params = Mapping[str, ParamValue]


def new_nonce() -> str:
    """A fresh nonce in Plivo's shape (20 decimal digits)."""
    return str(secrets.randbelow(10**NONCE_DIGITS)).zfill(NONCE_DIGITS)  # each digit uniform, one draw


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _sorted_query(params: Mapping[str, object]) -> str:
    parts: list[str] = []
    for key in sorted(params):
        value = params[key]
        if isinstance(value, list | tuple):
            parts.append("&".join(f"{key}={item}" for item in sorted(_text(v) for v in value)))
        else:
            parts.append(f"{key}={_text(value)}")
    return "&".join(parts)


def _concatenated_params(params: Mapping[str, object]) -> str:
    parts: list[str] = []
    for key in sorted(params):
        value = params[key]
        if isinstance(value, list | tuple):
            parts.append("".join(f"{key}{item}" for item in sorted(_text(v) for v in value)))
        elif isinstance(value, Mapping):
            parts.append(f"{key}{_concatenated_params(value)}")
        else:
            parts.append(f"{key}{_text(value)}")
    return "".join(parts)


def _get_url(uri: str, params: Mapping[str, object], *, empty_post_params: bool = True) -> str:
    parsed = urlparse(uri)
    base = urlunparse((parsed.scheme, parsed.netloc, parsed.path, "", "", ""))
    merged = dict(params)
    # The URI's own query wins over passed params of the same name, as in the SDK.
    merged.update(parse_qs(parsed.query, keep_blank_values=True))
    query = _sorted_query(merged)
    if query or not empty_post_params:
        base += "?" + query
    if query and not empty_post_params:
        base += "."
    return base


def signed_string(*, method: str, uri: str, params: Params | None = None) -> str:
    """The string the signature covers, before the `.nonce` suffix."""
    values: dict[str, object] = dict(params or {})
    if method == "GET":
        return _get_url(uri, values)
    return _get_url(uri, {}, empty_post_params=not values) + _concatenated_params(values)


def signature_v3(*, method: str, uri: str, nonce: str, auth_token: str, params: Params | None = None) -> str:
    message = f"{signed_string(method=method, uri=uri, params=params)}.{nonce}".encode()
    digest = hmac.digest(auth_token.encode(), message, "sha256")  # OpenSSL's one-shot HMAC: no Python HMAC object
    return base64.b64encode(digest).decode("ascii")


def signature_headers(signatures: Sequence[str], nonce: str) -> dict[str, str]:
    """The three Plivo headers. Accounts here have one token, so -Ma-V3 carries the same value."""
    joined = ",".join(signatures)
    return {SIGNATURE_HEADER: joined, MA_SIGNATURE_HEADER: joined, NONCE_HEADER: nonce}


def sign_callback(*, method: str, url: str, params: Params, auth_token: str, nonce: str) -> dict[str, str]:
    """Headers for one status-callback request.

    `url` is the URL as sent: for GET it already carries the params in its query
    (pass `params={}`), for POST the params are the form body.
    """
    return signature_headers(
        [signature_v3(method=method, uri=url, params=params, nonce=nonce, auth_token=auth_token)], nonce
    )


@functools.lru_cache(maxsize=1024)  # a customer's URL is dialled again and again: parsed once
def ws_upgrade_uris(url: str) -> tuple[str, str]:
    """(Node SDK URI, Python SDK URI) that a customer server rebuilds from our upgrade request."""
    ws = parse_uri(url)
    host = build_host(ws.host, ws.port, ws.secure)
    node = f"{'https' if ws.secure else 'http'}://{host}{ws.resource_name}"
    # Starlette: scheme + Host header + percent-decoded path (+ raw query), then the SDK's text replace.
    starlette = f"{'wss' if ws.secure else 'ws'}://{host}{unquote(ws.path or '/')}"
    if ws.query:
        starlette += "?" + ws.query
    if "ws://" in starlette:
        starlette = starlette.replace("ws://", "http://")
    elif "wss://" in starlette:
        starlette = starlette.replace("wss://", "http://")
    return node, starlette + "/websocket"


@functools.lru_cache(maxsize=1024)
def _ws_signed_strings(url: str) -> tuple[str, ...]:
    return tuple(signed_string(method="GET", uri=uri) for uri in ws_upgrade_uris(url))


def sign_ws_upgrade(url: str, auth_token: str, nonce: str) -> dict[str, str]:
    """Upgrade headers for dialling `url` (ws:// or wss://): both SDK variants, one nonce (D22).
    What is signed depends on the URL alone (cached); each dial only adds its nonce and the HMACs."""
    key = auth_token.encode()
    signatures = [
        base64.b64encode(hmac.digest(key, f"{text}.{nonce}".encode(), "sha256")).decode("ascii")
        for text in _ws_signed_strings(url)
    ]
    return signature_headers(signatures, nonce)
