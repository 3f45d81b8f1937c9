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
