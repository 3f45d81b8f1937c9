from __future__ import annotations

import warnings

from hypothesis import given
from hypothesis import strategies as st

from streams.core.audio import Decoder, Encoder, Format, Reframer, frame_bytes, split_stereo, ulaw_decode, ulaw_encode
from tests.support import ramp, tone

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def test_frame_sizes_follow_d9() -> None:
    assert frame_bytes(8000, mulaw=True) == 160
    assert frame_bytes(8000) == 320
    assert frame_bytes(16000) == 640
    assert frame_bytes(8000, channels=2) == 640


@given(st.lists(st.integers(0, 2000), max_size=30))
def test_reframer_keeps_every_byte_in_order(sizes: list[int]) -> None:
    data = bytes(range(256)) * 300
    reframer, out, pos = Reframer(320), [], 0
    for size in sizes:
        out += reframer.push(data[pos : pos + size])
        pos += size
    assert all(len(f) == 320 for f in out)
    assert b"".join(out) == data[: len(out) * 320]
    assert reframer.pending == pos - len(out) * 320


def test_passthrough_is_byte_exact() -> None:
    enc = Encoder(8000, Format.from_content_type("audio/x-l16;rate=8000"))
    pcm = ramp(160 * 10)
    assert b"".join(f for i in range(10) for f in enc.encode(pcm[i * 320 : (i + 1) * 320])) == pcm


@given(st.lists(st.sampled_from([80, 160, 320, 640, 960]), min_size=1, max_size=40))
def test_resampled_frames_always_have_their_exact_size(sizes: list[int]) -> None:
    for content_type, frame in (("audio/x-l16;rate=16000", 640), ("audio/x-mulaw;rate=8000", 160)):
        enc = Encoder(8000, Format.from_content_type(content_type))
        pcm = tone(sum(sizes) // 16 + 20)
        pos, frames = 0, []
        for size in sizes:
            frames += enc.encode(pcm[pos : pos + size])
            pos += size
        assert all(len(f) == frame for f in frames)
    enc16 = Encoder(16000, Format.from_content_type("audio/x-l16;rate=8000"))
    assert all(len(f) == 320 for f in enc16.encode(tone(100, rate=16000)))


def test_mulaw_round_trip_error_is_small() -> None:
    pcm = tone(200, amp=12000)
    back = ulaw_decode(ulaw_encode(pcm))
    error = audioop.rms(audioop.add(pcm, audioop.mul(back, 2, -1), 2), 2) / audioop.rms(pcm, 2)
    assert error < 0.03


def test_decoder_resamples_statefully_to_the_gateway_rate() -> None:
    dec = Decoder(8000)
    pcm16 = tone(1000, rate=16000)
    out = b"".join(dec.decode(pcm16[i : i + 1000], mulaw=False, rate=16000) for i in range(0, len(pcm16), 1000))
    assert abs(len(out) - 16000) <= 4  # 1 s at 8 kHz, 16-bit
    assert dec.decode(b"\xff" * 160, mulaw=True, rate=8000) == ulaw_decode(b"\xff" * 160)


def test_split_stereo_takes_caller_left() -> None:
    left, right = ramp(4), ramp(4, start=1000)
    interleaved = b"".join(left[i : i + 2] + right[i : i + 2] for i in range(0, 8, 2))
    assert split_stereo(interleaved) == (left, right)


CONTENT_TYPES = ("audio/x-l16;rate=8000", "audio/x-l16;rate=16000", "audio/x-mulaw;rate=8000")


@given(
    gateway_rate=st.sampled_from([8000, 16000]),
    content_type=st.sampled_from(CONTENT_TYPES),
    frames=st.integers(0, 300),
    amp=st.integers(0, 30000),
)
def test_a_flushed_stream_lasts_exactly_as_long_as_the_gateways_audio(
    gateway_rate: int, content_type: str, frames: int, amp: int
) -> None:
    """Issue 15 §5: every rate/encoding pair, any length of call: as many 20 ms frames out as went in."""
    fmt = Format.from_content_type(content_type)
    enc = Encoder(gateway_rate, fmt)
    pcm = tone(20 * frames, rate=gateway_rate, amp=amp)
    size = frame_bytes(gateway_rate)
    out = [f for i in range(frames) for f in enc.encode(pcm[i * size : (i + 1) * size])]
    tail = enc.flush()
    assert len(out) + len(tail) == frames
    assert all(len(f) == fmt.frame_size for f in out + tail)
    assert enc.flush() == []  # once


@given(
    gateway_rate=st.sampled_from([8000, 16000]),
    content_type=st.sampled_from(CONTENT_TYPES),
    sizes=st.lists(st.integers(0, 1500), max_size=40),
)
def test_any_chunking_flushes_to_the_audio_rounded_up_to_whole_frames(
    gateway_rate: int, content_type: str, sizes: list[int]
) -> None:
    fmt = Format.from_content_type(content_type)
    enc = Encoder(gateway_rate, fmt)
    pcm = ramp(sum(sizes))
    pos, out = 0, []
    for samples in sizes:
        out += enc.encode(pcm[2 * pos : 2 * (pos + samples)])
        pos += samples
    before = b"".join(out)
    tail = enc.flush()
    in_frame = gateway_rate // 50
    assert len(out) + len(tail) == -(-pos // in_frame)
    assert all(len(f) == fmt.frame_size for f in out + tail)
    if fmt.rate == gateway_rate and not fmt.mulaw:  # pass-through: the audio, then silence
        assert before + b"".join(tail) == pcm + b"\x00" * (len(before + b"".join(tail)) - len(pcm))


def test_the_upsampled_tail_is_the_last_frame_padded_with_silence() -> None:
    enc = Encoder(8000, Format.from_content_type("audio/x-l16;rate=16000"))
    pcm = tone(3000)  # 150 frames: ratecv gives 47,999 of 48,000 samples
    out = [f for i in range(150) for f in enc.encode(pcm[i * 320 : (i + 1) * 320])]
    assert len(out) == 149
    tail = enc.flush()
    assert len(tail) == 1 and tail[0][-2:] == b"\x00\x00" and tail[0][:-2] != b"\x00" * 638
