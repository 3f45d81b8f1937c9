"""What every JSON text framing shares (Plivo's customer protocol, the gateways' events): pure.

One error type whose text goes to the debug log, one strict reader of a JSON object
frame, and one compact writer.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

DTMF_DIGITS = re.compile(r"^[0-9*#A-D]+$")


class ProtocolError(ValueError):
    """A message we cannot act on; the text goes to the debug log."""


MAX_NUMBER_DIGITS = 100


def _constant(name: str) -> str:
    return name


def _float(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def _int(text: str) -> int | str:
    return int(text) if len(text) <= MAX_NUMBER_DIGITS else text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def loads_strict(text: str | bytes) -> Any:
    """json.loads as RFC 8259 has it: NaN, ±Infinity and numbers that overflow raise ValueError."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def loads(text: str | bytes) -> Any:
    """json.loads for what peers send: NaN, ±Infinity, numbers that overflow a float (1e400) and
    integers of more than MAX_NUMBER_DIGITS digits stay as their text. So nothing non-finite
    reaches the code (int(inf) raises OverflowError) or the database (which refuses NaN in JSON),
    and a field holding one is refused by that field's own check, with its own message."""
    return json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_object(text: str | bytes, limit: int) -> dict[str, Any]:
    """A TEXT frame that must hold one JSON object of at most `limit` characters."""
    if isinstance(text, bytes):
        raise ProtocolError("binary frames are not part of the protocol (send JSON text)")
    if len(text) > limit:
        raise ProtocolError(f"message of {len(text)} characters is over the {limit} limit")
    try:
        data = loads_strict(text)
    except (ValueError, RecursionError) as exc:  # ValueError also covers ints over Python's digit limit
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    return data
