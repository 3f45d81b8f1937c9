"""Regenerate samples/caller-8k.wav: a synthetic caller "speaking" three phrases (pure Python).

Formant synthesis, no recording and no speech engine: a glottal pulse train whose pitch
glides like an intonation contour, shaped by a spectral tilt and three formant
resonators that move from one vowel to the next, with pauses between the phrases.
The pauses are what an energy VAD (the example echo bot) answers after. Deterministic:
running it again writes the same bytes.

    .venv/bin/python samples/make_sample.py [OUT.wav]
"""

from __future__ import annotations

import math
import struct
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

RATE = 8000
PEAK = 14000
# (F1, F2, F3) in Hz, textbook averages for an adult voice
VOWELS: dict[str, tuple[float, float, float]] = {
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
}
BANDWIDTHS = (90.0, 110.0, 170.0)
COEFFICIENT_STEP = 40  # samples between formant-coefficient updates (5 ms)


@dataclass(frozen=True)
class Syllable:
    start: float  # seconds
    length: float
    vowels: str  # glide from the first to the last vowel
    pitch: tuple[float, float]  # f0 at start and end, Hz


# Three phrases separated by pauses (one of 1.0 s, then 1.2 s, then 1.3 s of trailing silence).
SCRIPT = (
    Syllable(0.40, 0.45, "ai", (125, 150)),
    Syllable(0.92, 0.68, "eo", (150, 110)),
    Syllable(2.60, 0.55, "ia", (130, 160)),
    Syllable(3.22, 0.50, "ue", (160, 140)),
    Syllable(3.80, 0.40, "ao", (145, 135)),
    Syllable(4.28, 0.72, "ei", (140, 100)),
    Syllable(6.20, 0.45, "oa", (120, 145)),
    Syllable(6.72, 0.48, "iu", (150, 105)),
)
TOTAL_SECONDS = 8.5


def _resonator(freq: float, bandwidth: float) -> tuple[float, float, float]:
    r = math.exp(-math.pi * bandwidth / RATE)
    theta = 2 * math.pi * freq / RATE
    b1, b2 = 2 * r * math.cos(theta), -r * r
    return 1 - b1 - b2, b1, b2  # unity gain at 0 Hz keeps the cascade's level steady


def _envelope(t: float, length: float) -> float:
    attack, release = 0.04, 0.07
    if t < attack:
        return 0.5 - 0.5 * math.cos(math.pi * t / attack)
    if t > length - release:
        return max(0.0, 0.5 - 0.5 * math.cos(math.pi * (length - t) / release))
    return 1.0


def syllable(s: Syllable) -> list[float]:
    n = int(s.length * RATE)
    first, last = VOWELS[s.vowels[0]], VOWELS[s.vowels[-1]]
    out: list[float] = []
    phase = 0.0
    tilt1 = tilt2 = 0.0
    states = [[0.0, 0.0] for _ in BANDWIDTHS]
    coefficients: list[tuple[float, float, float]] = []
    previous = 0.0
    for i in range(n):
        progress = i / n
        if i % COEFFICIENT_STEP == 0:
            # ease-in-out glide between the two vowels
            mix = 0.5 - 0.5 * math.cos(math.pi * progress)
            coefficients = [_resonator(a + (b - a) * mix, bw) for a, b, bw in zip(first, last, BANDWIDTHS, strict=True)]
        f0 = s.pitch[0] + (s.pitch[1] - s.pitch[0]) * progress
        phase += f0 / RATE
        pulse = 0.0
        if phase >= 1.0:
            phase -= 1.0
            pulse = 1.0
        # glottal spectrum: about -12 dB/octave above a few hundred Hz
        tilt1 += 0.25 * (pulse - tilt1)
        tilt2 += 0.25 * (tilt1 - tilt2)
        x = tilt2
        for (a0, b1, b2), state in zip(coefficients, states, strict=True):
            y = a0 * x + b1 * state[0] + b2 * state[1]
            state[1], state[0] = state[0], y
            x = y
        radiated = x - previous  # lip radiation: +6 dB/octave
        previous = x
        out.append(radiated * _envelope(i / RATE, s.length))
    return out


def render() -> bytes:
    signal = [0.0] * int(TOTAL_SECONDS * RATE)
    for s in SCRIPT:
        start = int(s.start * RATE)
        for i, value in enumerate(syllable(s)):
            signal[start + i] += value
    peak = max(abs(v) for v in signal) or 1.0
    scale = PEAK / peak
    return struct.pack(f"<{len(signal)}h", *(round(v * scale) for v in signal))


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("caller-8k.wav")
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(render())
    print(f"wrote {out} ({TOTAL_SECONDS:g} s, {RATE} Hz mono)")


if __name__ == "__main__":
    main()
