"""What a call looks like to the hub, whichever gateway framing announced it (pure).

Each framing (mod_audio_fork/jambonz in `audiofork`, Asterisk in `asterisk`) turns its
own handshake into one GatewayMetadata; the call session reads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.core.framing import dumps


@dataclass
class GatewayMetadata:
    call_id: str = ""
    from_number: str = ""
    to_number: str = ""
    direction: str = "inbound"
    sample_rate: int = 8000
    mix_type: str = "mono"
    streams: list[dict[str, Any]] = field(default_factory=list)
    app_id: str = ""  # the Plivo application to run (gateway metadata or query `appId`)
    # Plivo request parameters the gateway knows and the application should hear (ForwardedFrom, …)
    plivo_params: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] | str = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # Can the gateway play the hub's audio into the call? None: it did not say (the framing decides;
    # Asterisk always can). `playback_note` says how it was decided, for the messages of a refusal.
    playback: bool | None = None
    playback_note: str = ""

    @property
    def channels(self) -> int:
        return 2 if self.mix_type == "stereo" else 1


def gateway_error(message: str) -> str:
    return dumps({"type": "error", "data": {"error": message}})
