"""What one stream may leave outstanding in its call session (issue 15 §2), in-process.

A checkpoint waits behind its stream's queued audio, then (on gateways with marks, Asterisk)
for the gateway to confirm the mark. Both count toward one bound per stream.
"""

from __future__ import annotations

from typing import Any

import pytest

from streams.core.playback import MAX_OUTSTANDING_CHECKPOINTS, TooManyCheckpoints
from streams.live.session import CallSession
from streams.models import Account


class MarkingLink:
    """A gateway with marks (as Asterisk's MARK_MEDIA) that never confirms them."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_audio(self, pcm: bytes) -> None:
        pass

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def close(self, code: int = 1000) -> None:
        pass

    def send_dtmf(self, digits: str) -> str | None:
        return None

    def clear_command(self) -> str | None:
        return None

    def mark_command(self, correlation_id: str) -> str | None:
        return f"MARK_MEDIA {correlation_id}"


class PlainLink(MarkingLink):
    def mark_command(self, correlation_id: str) -> str | None:
        return None


class Relay:
    """The part of a StreamRelay the session's checkpoint path uses."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.played: list[str] = []

    def on_played(self, name: str) -> None:
        self.played.append(name)

    def count_playback(self, *, sent: bool) -> None:
        pass


def session_with(link: Any, *relays: Relay) -> CallSession:
    session = CallSession(account=Account(name="x"), link=link, gateway="test")
    for relay in relays:
        session.relays[relay.stream_id] = relay  # type: ignore[assignment]
    return session


def play_all(session: CallSession) -> None:
    while (played := session.playback.next_frame()) is not None:
        session._played(played, sent=True)


async def test_checkpoints_behind_audio_are_bounded_per_stream() -> None:
    relay, other = Relay("a"), Relay("b")
    session = session_with(PlainLink(), relay, other)
    session.play(relay, b"\x00" * 320 * 3)  # type: ignore[arg-type]
    session.play(other, b"\x00" * 320)  # type: ignore[arg-type]
    for i in range(MAX_OUTSTANDING_CHECKPOINTS):
        assert session.checkpoint(relay, f"c{i}") is True  # type: ignore[arg-type]
    with pytest.raises(TooManyCheckpoints, match="1000 checkpoints"):
        session.checkpoint(relay, "one too many")  # type: ignore[arg-type]
    assert session.checkpoint(other, "b0") is True  # type: ignore[arg-type]  # the bound is per stream
    play_all(session)
    assert relay.played == [f"c{i}" for i in range(MAX_OUTSTANDING_CHECKPOINTS)]
    assert session.checkpoint(relay, "after") is False  # type: ignore[arg-type]  # played out: room again


async def test_marks_the_gateway_never_confirms_are_bounded_and_freed_by_clear() -> None:
    relay = Relay("a")
    link = MarkingLink()
    session = session_with(link, relay)
    for i in range(MAX_OUTSTANDING_CHECKPOINTS):
        session.play(relay, b"\x00" * 320)  # type: ignore[arg-type]
        session.checkpoint(relay, f"c{i}")  # type: ignore[arg-type]
        play_all(session)  # written to the gateway: now a mark waits for its confirmation
    assert len(session._marks) == MAX_OUTSTANDING_CHECKPOINTS and relay.played == []
    with pytest.raises(TooManyCheckpoints):
        session.checkpoint(relay, "one too many")  # type: ignore[arg-type]
    assert len(session._marks) == MAX_OUTSTANDING_CHECKPOINTS

    session.gateway_mark_processed("m1")
    assert relay.played == ["c0"]
    session.checkpoint(relay, "fits again")  # type: ignore[arg-type]
    with pytest.raises(TooManyCheckpoints):
        session.checkpoint(relay, "full again")  # type: ignore[arg-type]

    _frames, names = session.clear(relay)  # type: ignore[arg-type]
    assert len(names) == MAX_OUTSTANDING_CHECKPOINTS
    assert session._marks == {} and session._marks_of == {}
    session.play(relay, b"\x00" * 320)  # type: ignore[arg-type]
    assert session.checkpoint(relay, "after clear") is True  # type: ignore[arg-type]


async def test_a_finished_stream_leaves_no_marks_behind() -> None:
    relay = Relay("a")
    session = session_with(MarkingLink(), relay)
    session.play(relay, b"\x00" * 320)  # type: ignore[arg-type]
    session.checkpoint(relay, "c")  # type: ignore[arg-type]
    play_all(session)
    assert len(session._marks) == 1
    session.relay_finished(relay)  # type: ignore[arg-type]
    assert session._marks == {} and session._marks_of == {}
