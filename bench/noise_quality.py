"""What the noise suppressor does to noisy speech, offline: the quality table of docs/noise-cancellation.md.

    .venv/bin/python bench/noise_quality.py

The speech is samples/caller-8k.wav (upsampled for 16 kHz), the noise white or pink (seeded), mixed
at 5 dB and 0 dB SNR over the whole signal. Each row runs `streams.core.noise.NoiseSuppressor` in
20 ms frames, as the relay does, and measures from the second second on (the noise estimate
settles in about a second), after aligning the output by cross-correlation:
- SNR in/out: scale-invariant SNR against the clean speech, dB;
- corr in/out: correlation with the clean speech;
- pauses: the noise left in the speech's pauses, against the noise that was there, dB.
Deterministic: the same figures every run (the hub's output is byte-identical to this, which
tests/e2e/test_noise_cancellation.py checks).
"""

from __future__ import annotations

import math
import random
import sys
import warnings
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.noisy_speech import correlation, lag, mix, quality, speech, suppressed, white_noise  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

# samples/README.md's timeline: the pauses between and after the phrases, trimmed by 0.1 s
PAUSES = ((1.7, 2.5), (5.1, 6.1), (7.3, 8.4))


def pink_noise(n: int, seed: int) -> list[float]:
    """Approximately 1/f noise (Paul Kellett's economy filter on white noise)."""
    rng = random.Random(seed)
    b0 = b1 = b2 = 0.0
    out = []
    for _ in range(n):
        w = rng.gauss(0.0, 1.0)
        b0 = 0.99765 * b0 + w * 0.0990460
        b1 = 0.96300 * b1 + w * 0.2965164
        b2 = 0.57000 * b2 + w * 1.0526913
        out.append(b0 + b1 + b2 + w * 0.1848)
    return out


def pause_depth_db(out: array[int], noisy: array[int], shift: int, rate: int) -> float:
    kept = sum(audioop.rms(out[int(a * rate) + shift : int(b * rate) + shift].tobytes(), 2) ** 2 for a, b in PAUSES)
    there = sum(audioop.rms(noisy[int(a * rate) : int(b * rate)].tobytes(), 2) ** 2 for a, b in PAUSES)
    return 10 * math.log10(kept / there)


def main() -> None:
    print("| rate | noise | SNR in | level | SNR out (gain) | corr in → out | noise left in pauses |")
    print("|---|---|---|---|---|---|---|")
    for rate in (8000, 16000):
        clean = speech(rate)
        clean = clean[: len(clean) // (rate // 50) * (rate // 50)]
        through = array("h", suppressed(clean, rate, 85))
        shift = lag(through, clean, rate)
        clean_corr = correlation(through[rate + shift : len(clean) + shift], clean[rate:])
        print(f"| {rate} | none | — | 85 | — | 1 → {clean_corr:.4f} (lag {shift} samples) | — |")
        for name, make in (("white", white_noise), ("pink", pink_noise)):
            for snr in (5, 0):
                noisy = mix(clean, make(len(clean), 1), snr)
                for level in (60, 85, 100):
                    out = array("h", suppressed(noisy, rate, level))
                    q = quality(out, noisy, clean, rate)
                    depth = pause_depth_db(out, noisy, q.lag, rate)
                    print(
                        f"| {rate} | {name} | {q.snr_in:.1f} | {level} | {q.snr_out:.1f} ({q.gain_db:+.1f}) "
                        f"| {q.corr_in:.3f} → {q.corr_out:.3f} | {depth:.1f} dB |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
