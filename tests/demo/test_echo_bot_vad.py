"""The example echo bot's energy VAD: what counts as an utterance, and what is echoed."""

from __future__ import annotations

from examples.echo_bot import Utterances, VadSettings

LOUD, QUIET = 1000, 10


def feed(vad: Utterances, levels: list[int]) -> list[bytes]:
    done = []
    for i, level in enumerate(levels):
        utterance = vad.push(bytes([i % 256]), level)
        if utterance is not None:
            done.append(utterance)
    return done


def test_it_hands_out_the_speech_after_a_pause_with_its_preroll() -> None:
    vad = Utterances(VadSettings(threshold=300, pause_ms=100, min_speech_ms=40, preroll_ms=40))
    levels = [QUIET] * 5 + [LOUD] * 4 + [QUIET] * 5  # 5 quiet frames (100 ms) end it
    [utterance] = feed(vad, levels)
    # two frames of preroll (indexes 3, 4), the four loud ones, not the trailing pause
    assert utterance == bytes([3, 4, 5, 6, 7, 8])


def test_it_ignores_bursts_shorter_than_speech() -> None:
    vad = Utterances(VadSettings(threshold=300, pause_ms=100, min_speech_ms=100, preroll_ms=0))
    assert feed(vad, [LOUD] * 2 + [QUIET] * 10) == []


def test_a_short_gap_inside_a_phrase_does_not_split_it() -> None:
    vad = Utterances(VadSettings(threshold=300, pause_ms=100, min_speech_ms=40, preroll_ms=0))
    done = feed(vad, [LOUD] * 3 + [QUIET] * 2 + [LOUD] * 3 + [QUIET] * 5)
    assert len(done) == 1 and len(done[0]) == 8
