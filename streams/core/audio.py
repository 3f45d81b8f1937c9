"""Audio transcoding and framing (pure: no sockets, no clock).

Every stream frame is exactly 20 ms (decision D9): 160 B μ-law 8 kHz, 320 B L16 8 kHz,
640 B L16 16 kHz. Resamplers are stateful (audioop.ratecv carries its filter state and
the fractional position) and a Reframer carries leftover bytes across calls, so sizes
stay exact whatever the input chunking.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib up to 3.12; the audioop-lts package from 3.13

FRAME_MS = 20
SAMPLE_WIDTH = 2
RATES = (8000, 16000)


def frame_bytes(rate: int, *, mulaw: bool = False, channels: int = 1) -> int:
    samples = rate * FRAME_MS // 1000
    return samples * channels * (1 if mulaw else SAMPLE_WIDTH)


def silence(rate: int, *, mulaw: bool = False) -> bytes:
    return (b"\xff" if mulaw else b"\x00\x00") * (rate * FRAME_MS // 1000)


def ulaw_encode(pcm: bytes) -> bytes:
    return audioop.lin2ulaw(pcm, SAMPLE_WIDTH)


def ulaw_decode(data: bytes) -> bytes:
    return audioop.ulaw2lin(data, SAMPLE_WIDTH)


def split_stereo(pcm: bytes) -> tuple[bytes, bytes]:
    """Interleaved 16-bit stereo -> (left, right) mono."""
    return audioop.tomono(pcm, SAMPLE_WIDTH, 1, 0), audioop.tomono(pcm, SAMPLE_WIDTH, 0, 1)


class Reframer:
    """Cuts an arbitrary byte stream into frames of exactly `size` bytes."""

    __slots__ = ("_pending", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._pending = b""

    def push(self, data: bytes) -> list[bytes]:
        size = self.size
        if not self._pending and len(data) == size:
            return [data]
        buf = self._pending + data
        cut = len(buf) - len(buf) % size
        self._pending = buf[cut:]
        return [buf[i : i + size] for i in range(0, cut, size)]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush_padded(self, pad: bytes = b"\x00") -> list[bytes]:
        """The leftover tail as one frame padded with silence (empty when nothing is left)."""
        if not self._pending:
            return []
        tail = self._pending + pad * ((self.size - len(self._pending)) // len(pad))
        self._pending = b""
        return [tail]


class Resampler:
    """Stateful mono 16-bit resampler between 8 and 16 kHz (identity when rates match)."""

    __slots__ = ("_state", "in_rate", "out_rate")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._state: tuple[int, tuple[tuple[int, int], ...]] | None = None

    def convert(self, pcm: bytes) -> bytes:
        if self.in_rate == self.out_rate or not pcm:
            return pcm
        out, self._state = audioop.ratecv(pcm, SAMPLE_WIDTH, 1, self.in_rate, self.out_rate, self._state)
        return out


@dataclass(frozen=True)
class Format:
    """A stream's wire format, from its content type."""

    encoding: str  # "audio/x-l16" or "audio/x-mulaw"
    rate: int

    @property
    def mulaw(self) -> bool:
        return self.encoding == "audio/x-mulaw"

    @property
    def frame_size(self) -> int:
        return frame_bytes(self.rate, mulaw=self.mulaw)

    @classmethod
    def from_content_type(cls, content_type: str) -> Format:
        encoding, _, rate = content_type.partition(";rate=")
        return cls(encoding, int(rate or 8000))


class Encoder:
    """Gateway L16 (mono, gateway rate) -> exact 20 ms frames in a stream's format, statefully.

    The resampler and the reframer hold back a remainder (ratecv emits 319 samples for the
    first 160 it upsamples); `flush` turns it into the last frame, padded with silence, so the
    stream carries exactly as many 20 ms frames as the gateway's audio lasted (rounded up).
    """

    __slots__ = ("_fmt", "_gateway_rate", "_in_bytes", "_out_frames", "_passthrough", "_reframer", "_resampler")

    def __init__(self, gateway_rate: int, fmt: Format) -> None:
        self._fmt = fmt
        self._gateway_rate = gateway_rate
        self._resampler = Resampler(gateway_rate, fmt.rate)
        self._reframer = Reframer(frame_bytes(fmt.rate))
        self._passthrough = gateway_rate == fmt.rate and not fmt.mulaw
        self._in_bytes = 0
        self._out_frames = 0

    @property
    def passthrough(self) -> bool:
        """Exact gateway frames come out unchanged (same rate, L16)."""
        return self._passthrough

    def encode(self, pcm_frame: bytes) -> list[bytes]:
        self._in_bytes += len(pcm_frame)
        if self._passthrough:
            frames = self._reframer.push(pcm_frame)
            self._out_frames += len(frames)
            return frames
        frames = self._reframer.push(self._resampler.convert(pcm_frame))
        self._out_frames += len(frames)
        if self._fmt.mulaw:
            return [ulaw_encode(f) for f in frames]
        return frames

    def flush(self) -> list[bytes]:
        """The frames still owed at the end of the stream: the remainder, padded with silence."""
        in_frame = frame_bytes(self._gateway_rate)
        owed = -(-self._in_bytes // in_frame) - self._out_frames
        tail = self._reframer.flush_padded()
        if owed <= 0:
            return []
        frames = (tail + [silence(self._fmt.rate)] * owed)[:owed]
        self._out_frames += owed
        if self._fmt.mulaw:
            return [ulaw_encode(f) for f in frames]
        return frames


class Decoder:
    """Customer audio (playAudio, any length) -> L16 mono at the gateway rate, statefully."""

    __slots__ = ("_resamplers", "gateway_rate")

    def __init__(self, gateway_rate: int) -> None:
        self.gateway_rate = gateway_rate
        self._resamplers: dict[int, Resampler] = {}

    def decode(self, payload: bytes, *, mulaw: bool, rate: int) -> bytes:
        pcm = ulaw_decode(payload) if mulaw else payload[: len(payload) - len(payload) % 2]
        resampler = self._resamplers.get(rate)
        if resampler is None:
            resampler = self._resamplers[rate] = Resampler(rate, self.gateway_rate)
        return resampler.convert(pcm)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
