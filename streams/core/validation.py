"""Validation of stream parameters: one piece shared by REST, gateway metadata and admin.

Accepts the REST names (`service_url`, `audio_track`, …) and the `<Stream>` XML
attribute names (`serviceUrl`, `audioTrack`, …); values may be JSON types or the
XML-style strings "true"/"false" and numeric strings (decision D3). Errors name the
field as the caller spelled it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import SplitResult, urlsplit

CONTENT_TYPES = ("audio/x-l16;rate=8000", "audio/x-l16;rate=16000", "audio/x-mulaw;rate=8000")
AUDIO_TRACKS = ("inbound", "outbound", "both")
CALLBACK_METHODS = ("GET", "POST")
MAX_URL_LENGTH = 2048
MAX_EXTRA_HEADERS_BYTES = 512
DEFAULT_STREAM_TIMEOUT = 86400
# Opt-in stream resume (docs/resume.md): how long the hub keeps redialling after a drop.
DEFAULT_RECONNECT_WINDOW = 10
MAX_RECONNECT_WINDOW = 40  # the default send buffer: the audio of the window must fit in it
_ALNUM = re.compile(r"^[A-Za-z0-9]+$")

# canonical name -> accepted spellings (REST snake_case first, then XML camelCase)
FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "service_url": ("service_url", "serviceUrl"),
    "bidirectional": ("bidirectional",),
    "audio_track": ("audio_track", "audioTrack"),
    "stream_timeout": ("stream_timeout", "streamTimeout"),
    "status_callback_url": ("status_callback_url", "statusCallbackUrl"),
    "status_callback_method": ("status_callback_method", "statusCallbackMethod"),
    "content_type": ("content_type", "contentType"),
    "extra_headers": ("extra_headers", "extraHeaders"),
    "keep_call_alive": ("keep_call_alive", "keepCallAlive"),
    "noise_cancellation": ("noise_cancellation", "noiseCancellation"),
    "noise_cancellation_level": ("noise_cancellation_level", "noiseCancellationLevel"),
    "reconnect": ("reconnect",),
    "reconnect_window": ("reconnect_window", "reconnectWindow"),
}
# Sent by the plivo SDK in bodies (call_uuid, stream_id) or undocumented (cx_bot): accepted, ignored.
IGNORED_FIELDS = frozenset({"call_uuid", "stream_id", "cx_bot", "callId", "streamId"})


class StreamParamError(ValueError):
    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))


@dataclass(frozen=True)
class StreamParams:
    service_url: str
    bidirectional: bool = False
    audio_track: str = "inbound"
    stream_timeout: int = DEFAULT_STREAM_TIMEOUT
    status_callback_url: str = ""
    status_callback_method: str = "POST"
    content_type: str = "audio/x-l16;rate=8000"
    extra_headers: str = ""
    keep_call_alive: bool = False
    noise_cancellation: bool = False
    noise_cancellation_level: int = 85
    reconnect: bool = False
    reconnect_window: int = 0  # seconds; DEFAULT_RECONNECT_WINDOW when reconnect is on and none was given

    def as_model_fields(self) -> dict[str, Any]:
        # every field is a scalar: a shallow copy is asdict's result without its recursive deep copy
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("must be true or false")


MAX_STREAM_TIMEOUT = 30 * 86400


def parse_positive_int(value: Any, maximum: int = MAX_STREAM_TIMEOUT) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a positive integer")
    if isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"\s*\+?\d{1,12}\s*", value)
    ):
        number = int(value)
    else:
        raise ValueError("must be a positive integer")
    if number <= 0:
        raise ValueError("must be a positive integer")
    if number > maximum:
        raise ValueError(f"must be at most {maximum}")
    return number


def parse_reconnect_window(value: Any) -> int:
    try:
        return parse_positive_int(value, MAX_RECONNECT_WINDOW)
    except ValueError:
        raise ValueError(f"must be an integer from 1 to {MAX_RECONNECT_WINDOW} (seconds)") from None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRefused(Exception):
    """The egress policy forbids an address the host resolved to (deliberately not an OSError,
    so HTTP and WebSocket libraries pass it through rather than retrying or rewrapping it)."""


@dataclass(frozen=True)
class EgressPolicy:
    """Where the hub may connect: callback URLs (HTTP) and service URLs (WebSocket).

    A forbidden address is one that is not public: loopback, private, link-local, shared
    (100.64/10), reserved, unspecified or multicast, IPv4-mapped IPv6 included, unless it lies
    in one of `allowed_networks`. Validation refuses literal forbidden addresses and local
    names up front; the connecting code checks every address a name resolves to and then
    connects to one of those very addresses (no second lookup a rebinding DNS could answer).
    """

    forbid_private_callbacks: bool = False
    forbid_private_services: bool = False
    allowed_networks: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, conf: Any) -> EgressPolicy:
        """The policy from a settings object (STREAMHUB_FORBID_PRIVATE_CALLBACKS, …)."""
        return _policy(
            bool(getattr(conf, "STREAMHUB_FORBID_PRIVATE_CALLBACKS", False)),
            bool(getattr(conf, "STREAMHUB_FORBID_PRIVATE_SERVICE_URLS", False)),
            tuple(getattr(conf, "STREAMHUB_ALLOWED_PRIVATE_NETWORKS", ())),
        )

    def forbids(self, address: str) -> bool:
        """True for an address the hub must not connect to (when that policy is on)."""
        try:
            ip = ipaddress.ip_address(address.strip("[]").partition("%")[0])
        except ValueError:
            return True  # not an address at all: nothing to connect to
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.allowed_networks):
            return False
        return not ip.is_global or ip.is_multicast or ip.is_unspecified

    def forbidden_host(self, host: str) -> bool:
        """A host as written in a URL that is forbidden without resolving it: a local name or a literal address."""
        name = host.lower().rstrip(".")
        if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
            return self.forbids("127.0.0.1") and self.forbids("::1")
        try:
            ipaddress.ip_address(host.strip("[]").partition("%")[0])
        except ValueError:
            return False
        return self.forbids(host)

    def refusal(self, host: str, addresses: list[str]) -> str | None:
        """Why connecting to `host` (resolved to `addresses`) is refused, or None when every address is allowed."""
        refused = sorted({a for a in addresses if self.forbids(a)})
        if not refused:
            return None
        shown = ", ".join(refused[:3]) + (", …" if len(refused) > 3 else "")
        return f"{host} resolves to a private or loopback address ({shown}), which this hub forbids"


@functools.lru_cache(maxsize=16)
def _policy(callbacks: bool, services: bool, networks: tuple[str, ...]) -> EgressPolicy:
    return EgressPolicy(callbacks, services, tuple(parse_networks(networks)))


def parse_networks(values: Iterable[str]) -> list[Network]:
    """CIDRs ("10.0.0.0/8", "fd00::/8", a bare address for one host); ValueError names a bad one."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network (CIDR such as 10.0.0.0/8)") from None
    return networks


NO_POLICY = EgressPolicy()


def split_url(url: str) -> SplitResult:
    """The checks every URL gets (length, no whitespace or control characters, a parsable port)."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    return parts


def check_ws_url(value: Any, policy: EgressPolicy = NO_POLICY) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("is required (a ws:// or wss:// URL)")
    url = value.strip()
    parts = split_url(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError("must be a ws:// or wss:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.port == 0:
        raise ValueError("has an invalid port")
    if policy.forbid_private_services and policy.forbidden_host(parts.hostname):
        raise ValueError("points to a private or loopback address, which this hub forbids")
    return url


def check_callback_url(value: Any, *, forbid_private: bool = False, policy: EgressPolicy | None = None) -> str:
    if policy is None:
        policy = EgressPolicy(forbid_private_callbacks=forbid_private)
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise ValueError("must be an http:// or https:// URL")
    url = value.strip()
    parts = split_url(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if policy.forbid_private_callbacks and policy.forbidden_host(parts.hostname):
        raise ValueError("points to a private or loopback address, which this hub forbids")
    return url


def check_extra_headers(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("must be a string of key=value pairs separated by commas")
    text = value.strip()
    if not text:
        return ""
    if len(text.encode()) > MAX_EXTRA_HEADERS_BYTES:
        raise ValueError(f"must be at most {MAX_EXTRA_HEADERS_BYTES} bytes")
    for pair in text.split(","):
        key, sep, val = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r} is not a key=value pair")
        if not _ALNUM.match(key) or not _ALNUM.match(val):
            raise ValueError(f"{pair!r}: keys and values may contain only A-Z, a-z and 0-9")
    return text


def _choice(value: Any, allowed: tuple[str, ...], *, upper: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be one of {', '.join(allowed)}")
    text = value.strip().upper() if upper else value.strip()
    if text not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)}")
    return text


def validate_stream_params(
    data: Mapping[str, Any], *, forbid_private_callbacks: bool = False, policy: EgressPolicy | None = None
) -> StreamParams:
    """Raise StreamParamError naming every bad field; unknown fields are errors too.

    `policy` (EgressPolicy.from_settings(settings) in the hub) refuses literal private
    addresses in service and callback URLs; `forbid_private_callbacks` is its callback half alone.
    """
    if policy is None:
        policy = EgressPolicy(forbid_private_callbacks=forbid_private_callbacks)
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    known = {alias: canon for canon, aliases in FIELD_NAMES.items() for alias in aliases}
    for key, raw in data.items():
        if key in IGNORED_FIELDS:
            continue
        canon = known.get(key)
        if canon is None:
            errors[key] = "is not a stream parameter"
            continue
        if canon in values:
            errors[key] = f"is given twice (also as {spelled[canon]})"
            continue
        values[canon], spelled[canon] = raw, key

    checks: dict[str, Any] = {
        "service_url": lambda v: check_ws_url(v, policy),
        "bidirectional": parse_bool,
        "audio_track": lambda v: _choice(v, AUDIO_TRACKS),
        "stream_timeout": parse_positive_int,
        "status_callback_url": lambda v: check_callback_url(v, policy=policy),
        "status_callback_method": lambda v: _choice(v, CALLBACK_METHODS, upper=True),
        "content_type": lambda v: _choice(v.replace(" ", "") if isinstance(v, str) else v, CONTENT_TYPES),
        "extra_headers": check_extra_headers,
        "keep_call_alive": parse_bool,
        "noise_cancellation": parse_bool,
        "noise_cancellation_level": parse_positive_int,
        "reconnect": parse_bool,
        "reconnect_window": parse_reconnect_window,
    }
    clean: dict[str, Any] = {}
    if "service_url" not in values:
        errors["service_url"] = "is required (a ws:// or wss:// URL)"
    for canon, raw in values.items():
        try:
            clean[canon] = checks[canon](raw)
        except ValueError as exc:
            errors[spelled[canon]] = str(exc)
    level = clean.get("noise_cancellation_level")
    if level is not None and not 60 <= level <= 100:
        errors[spelled["noise_cancellation_level"]] = "must be between 60 and 100"
    if "reconnect_window" in values and not clean.get("reconnect"):
        errors.setdefault(spelled["reconnect_window"], "may only be given with reconnect=true")
    elif clean.get("reconnect") and "reconnect_window" not in clean and "reconnect_window" not in values:
        clean["reconnect_window"] = DEFAULT_RECONNECT_WINDOW
    if clean.get("bidirectional") and clean.get("audio_track", "inbound") != "inbound":
        errors[spelled.get("audio_track", "audio_track")] = "must be inbound when bidirectional is true"
    if errors:
        raise StreamParamError(errors)
    return StreamParams(**clean)
