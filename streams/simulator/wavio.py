"""WAV files for the call simulator (pure: no sockets, no clock, no Django).

A gateway speaks 16-bit little-endian PCM at 8 or 16 kHz, mono or stereo (left = the
caller = inbound, right = outbound). `read_wav` turns any PCM WAV the `wave` module can
read (8/16/24/32-bit, any rate, 1 or 2 channels) into 16-bit samples; `to_call_format`
resamples it to the call's rate. `Recording` rebuilds what the hub played back on a
timeline: the hub sends nothing while its playback queue is empty (D11), so a gap in the
arrivals becomes silence in the file instead of being squeezed out.
"""

from __future__ import annotations

import math
import re
import warnings
import wave
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib up to 3.12; the audioop-lts package from 3.13

SAMPLE_WIDTH = 2
CALL_RATES = (8000, 16000)
FRAME_SECONDS = 0.020
DTMF_DIGITS = re.compile(r"^[0-9*#A-D]{1,32}$")


class WavError(ValueError):
    """The file is not a WAV the simulator can stream; the message says why, in one line."""


@dataclass(frozen=True)
class Clip:
    pcm: bytes  # 16-bit little-endian, interleaved when stereo
    rate: int
    channels: int

    @property
    def frames(self) -> int:
        return len(self.pcm) // (SAMPLE_WIDTH * self.channels)

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def read_wav(path: Path) -> Clip:
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise WavError(f"{path} is not a readable PCM WAV file ({exc})") from None
    if channels not in (1, 2):
        raise WavError(f"{path} has {channels} channels; the simulator streams mono or stereo")
    if width not in (1, 2, 3, 4):
        raise WavError(f"{path} has {8 * width}-bit samples; the simulator reads 8, 16, 24 or 32-bit PCM")
    if rate <= 0:
        raise WavError(f"{path} declares a sample rate of {rate} Hz")
    data = data[: len(data) - len(data) % (width * channels)]
    if not data:
        raise WavError(f"{path} contains no audio")
    if width == 1:  # 8-bit WAV samples are unsigned
        data = audioop.bias(data, 1, -128)
    if width != SAMPLE_WIDTH:
        data = audioop.lin2lin(data, width, SAMPLE_WIDTH)
    return Clip(data, rate, channels)


def call_rate_for(rate: int) -> int:
    """The gateway rate to stream a file at: its own when 8 or 16 kHz, else the nearest that keeps detail."""
    return 8000 if rate <= 8000 else 16000


def resample(pcm: bytes, *, channels: int, from_rate: int, to_rate: int) -> bytes:
    if from_rate == to_rate or not pcm:
        return pcm
    out, _ = audioop.ratecv(pcm, SAMPLE_WIDTH, channels, from_rate, to_rate, None)
    return out


def to_call_format(clip: Clip, rate: int | None = None) -> Clip:
    target = rate or call_rate_for(clip.rate)
    if target not in CALL_RATES:
        raise WavError(f"a call runs at 8000 or 16000 Hz, not {target}")
    return Clip(resample(clip.pcm, channels=clip.channels, from_rate=clip.rate, to_rate=target), target, clip.channels)


def write_wav(path: Path, pcm: bytes, *, rate: int, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(rate)
        wav.writeframes(pcm)


def frame_size(rate: int, channels: int = 1) -> int:
    return int(rate * FRAME_SECONDS) * SAMPLE_WIDTH * channels


def rms(pcm: bytes) -> int:
    return int(audioop.rms(pcm, SAMPLE_WIDTH)) if pcm else 0


class Recording:
    """Mono 16-bit audio placed by arrival time (seconds since the call's audio started).

    Frames that arrive back to back are joined as they are; a frame arriving more than
    `gap_tolerance` after the end of what is recorded starts after that much silence, so
    the file keeps the pauses between the bot's answers. Arrival jitter under the
    tolerance never inserts silence (which would click).
    """

    def __init__(self, rate: int, *, gap_tolerance: float = 0.06) -> None:
        self.rate = rate
        self.gap_tolerance = gap_tolerance
        self._chunks: list[bytes] = []
        self._samples = 0
        self.audio_samples = 0  # excluding inserted silence

    def add(self, at: float, pcm: bytes) -> None:
        pcm = pcm[: len(pcm) - len(pcm) % SAMPLE_WIDTH]
        if not pcm:
            return
        samples = len(pcm) // SAMPLE_WIDTH
        # The frame's audio began one frame before it arrived.
        start = int(max(0.0, at) * self.rate) - samples
        gap = start - self._samples
        if gap > self.gap_tolerance * self.rate:
            self._chunks.append(b"\x00\x00" * gap)
            self._samples += gap
        self._chunks.append(pcm)
        self._samples += samples
        self.audio_samples += samples

    @property
    def seconds(self) -> float:
        return self._samples / self.rate

    @property
    def audio_seconds(self) -> float:
        return self.audio_samples / self.rate

    def pcm(self) -> bytes:
        return b"".join(self._chunks)


def parse_dtmf(spec: str) -> tuple[float, str]:
    """`2.5:5` -> (2.5, "5"): send digit(s) 5 when the audio reaches 2.5 s."""
    when, sep, digits = spec.partition(":")
    try:
        at = float(when)
    except ValueError:
        at = -1.0
    digits = digits.upper()
    if not sep or not math.isfinite(at) or at < 0 or not DTMF_DIGITS.match(digits):
        raise ValueError(f"{spec!r} is not SECONDS:DIGITS (e.g. 2.5:5 or 4:*#), digits from 0-9 * # A-D")
    return at, digits


def progress_bar(done: float, total: float, width: int = 30) -> str:
    fraction = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = round(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"
