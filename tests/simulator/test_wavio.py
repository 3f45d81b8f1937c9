"""The simulator's pure WAV helpers: reading any PCM WAV, resampling to a call rate, the playback timeline."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import pytest

from streams.simulator.wavio import (
    Clip,
    Recording,
    WavError,
    call_rate_for,
    frame_size,
    parse_dtmf,
    progress_bar,
    read_wav,
    rms,
    to_call_format,
    write_wav,
)


def write(path: Path, frames: bytes, *, rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return path


def sine(n: int, rate: int, freq: float = 440.0, amp: int = 8000) -> list[int]:
    return [int(amp * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)]


def test_it_reads_16_bit_mono_as_is(tmp_path: Path) -> None:
    pcm = struct.pack("<4h", 1, -2, 300, -32768)
    clip = read_wav(write(tmp_path / "a.wav", pcm, rate=8000))
    assert clip == Clip(pcm, 8000, 1)
    assert clip.frames == 4 and clip.seconds == pytest.approx(0.0005)


def test_it_widens_unsigned_8_bit_and_narrows_24_bit(tmp_path: Path) -> None:
    eight = read_wav(write(tmp_path / "8.wav", bytes([128, 255, 0]), rate=8000, width=1))
    assert struct.unpack("<3h", eight.pcm) == (0, 127 * 256, -128 * 256)
    # 24-bit little-endian 0x123456 keeps its top 16 bits
    twenty_four = read_wav(write(tmp_path / "24.wav", bytes([0x56, 0x34, 0x12]), rate=16000, width=3))
    assert struct.unpack("<h", twenty_four.pcm) == (0x1234,)


def test_it_resamples_stereo_44k_to_16k_keeping_the_channels_apart(tmp_path: Path) -> None:
    left = sine(44100, 44100)
    frames = struct.pack(f"<{2 * 44100}h", *(v for sample in left for v in (sample, 0)))
    clip = to_call_format(read_wav(write(tmp_path / "s.wav", frames, rate=44100, channels=2)))
    assert (clip.rate, clip.channels) == (16000, 2)
    assert abs(clip.frames - 16000) <= 1
    samples = struct.unpack(f"<{len(clip.pcm) // 2}h", clip.pcm)
    assert max(samples[0::2]) > 7000 and max(abs(s) for s in samples[1::2]) == 0


@pytest.mark.parametrize(
    ("rate", "expected"), [(4000, 8000), (8000, 8000), (11025, 16000), (16000, 16000), (48000, 16000)]
)
def test_it_picks_the_call_rate_from_the_file_rate(rate: int, expected: int) -> None:
    assert call_rate_for(rate) == expected


def test_a_forced_rate_must_be_a_call_rate() -> None:
    with pytest.raises(WavError, match="8000 or 16000"):
        to_call_format(Clip(b"\x00\x00", 8000, 1), 22050)


def test_it_explains_files_it_cannot_stream(tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    with pytest.raises(WavError, match="not a readable PCM WAV"):
        read_wav(text)
    with pytest.raises(WavError, match="3 channels"):
        read_wav(write(tmp_path / "3ch.wav", b"\x00" * 12, rate=8000, channels=3))
    with pytest.raises(WavError, match="no audio"):
        read_wav(write(tmp_path / "empty.wav", b"", rate=8000))


def test_the_recording_keeps_pauses_but_not_jitter() -> None:
    rec = Recording(8000)
    frame = b"\x01\x00" * 160  # 20 ms at 8 kHz
    rec.add(0.020, frame)
    rec.add(0.045, frame)  # 5 ms late: jitter, joined without silence
    assert rec.pcm() == frame * 2
    rec.add(1.040, frame)  # one second later: a pause before the next answer
    assert rec.seconds == pytest.approx(1.04, abs=0.001)
    assert rec.audio_seconds == pytest.approx(0.06)
    assert rec.pcm()[2 * 320 : 2 * 320 + 10] == b"\x00" * 10


def test_written_recordings_read_back(tmp_path: Path) -> None:
    pcm = struct.pack("<160h", *sine(160, 8000))
    write_wav(tmp_path / "out" / "r.wav", pcm, rate=8000)
    clip = read_wav(tmp_path / "out" / "r.wav")
    assert clip.pcm == pcm and rms(clip.pcm) > 5000 and rms(b"") == 0


def test_frame_sizes_are_20_ms() -> None:
    assert frame_size(8000) == 320 and frame_size(16000) == 640 and frame_size(8000, 2) == 640


def test_dtmf_specs() -> None:
    assert parse_dtmf("2.5:5") == (2.5, "5")
    assert parse_dtmf("0:*#a") == (0.0, "*#A")
    for bad in ("5", "x:1", "-1:2", "nan:1", "inf:1", "1:E", "1:"):
        with pytest.raises(ValueError, match="SECONDS:DIGITS"):
            parse_dtmf(bad)


def test_progress_bar() -> None:
    assert progress_bar(0, 10, width=4) == "[....]"
    assert progress_bar(5, 10, width=4) == "[##..]"
    assert progress_bar(20, 10, width=4) == "[####]"
    assert progress_bar(1, 0, width=2) == "[..]"
