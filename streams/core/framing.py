"""What every JSON text framing shares (Plivo's customer protocol, the gateways' events): pure.

One error type whose text goes to the debug log, one strict reader of a JSON object
frame, and one compact writer.
"""

from __future__ import annotations

import json
import re
from typing import Any

DTMF_DIGITS = re.compile(r"^[0-9*#A-D]+$")


class ProtocolError(ValueError):
    """A message we cannot act on; the text goes to the debug log."""


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_object(text: str | bytes, limit: int) -> dict[str, Any]:
    """A TEXT frame that must hold one JSON object of at most `limit` characters."""
    if isinstance(text, bytes):
        raise ProtocolError("binary frames are not part of the protocol (send JSON text)")
    if len(text) > limit:
        raise ProtocolError(f"message of {len(text)} characters is over the {limit} limit")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError also covers ints over Python's digit limit
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    return data
