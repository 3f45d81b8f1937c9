"""Speech, noise and the measures of noise suppression, for the tests (pure Python, standard library).

The speech is the repository's own `samples/caller-8k.wav` (formant-synthesised phrases with pauses,
see samples/README.md), upsampled for 16 kHz. Measures skip the first second (the suppressor's noise
estimate settles) and align the output on the clean signal first (the suppressor delays by a fixed
10 ms): `audioop.findfit` finds the lag.
"""

from __future__ import annotations

import math
import operator
import random
import warnings
import wave
from array import array
from dataclasses import dataclass
from pathlib import Path

from streams.core.noise import NoiseSuppressor

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "caller-8k.wav"


def speech(rate: int) -> array[int]:
    """8.5 s of synthetic speech (three phrases, pauses between them) at `rate`."""
    with wave.open(str(SAMPLE)) as w:
        pcm = w.readframes(w.getnframes())
    if rate != 8000:
        pcm = audioop.ratecv(pcm, 2, 1, 8000, rate, None)[0]
    return array("h", pcm)


def white_noise(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0.0, 1.0) for _ in range(n)]


def dot(a: array[int] | list[float], b: array[int] | list[float]) -> float:
    return float(sum(map(operator.mul, a, b)))


def mix(clean: array[int], noise: list[float], snr_db: float) -> array[int]:
    """clean + noise scaled so that their power ratio over the whole signal is `snr_db`."""
    gain = math.sqrt(dot(clean, clean) / dot(noise, noise) / 10 ** (snr_db / 10))
    return array("h", [max(-32768, min(32767, round(c + gain * z))) for c, z in zip(clean, noise, strict=False)])


def suppressed(pcm: array[int], rate: int, level: int) -> bytes:
    """What the hub should send for `pcm`: 20 ms frames through one suppressor, then its tail in a
    frame of its own padded with silence (the relay's end-of-stream flush)."""
    suppressor = NoiseSuppressor(rate, level)
    size = rate // 50
    out = b"".join(suppressor.process(pcm[i : i + size].tobytes()) for i in range(0, len(pcm), size))
    return out + suppressor.flush().ljust(size * 2, b"\x00")


def lag(out: array[int], clean: array[int], rate: int) -> int:
    """Samples by which `out` trails `clean` (searched up to 50 ms, on the 2nd–3rd second)."""
    reference = clean[2 * rate : 3 * rate].tobytes()
    fragment = out[2 * rate : 3 * rate + rate // 20].tobytes()
    return int(audioop.findfit(fragment, reference)[0])


def si_snr(estimate: array[int], clean: array[int]) -> float:
    """Scale-invariant SNR in dB: the clean signal's share of `estimate` against everything else."""
    gain = dot(estimate, clean) / dot(clean, clean)
    error = [e - gain * c for e, c in zip(estimate, clean, strict=True)]
    return 10 * math.log10(gain * gain * dot(clean, clean) / dot(error, error))


def correlation(a: array[int], b: array[int]) -> float:
    return dot(a, b) / math.sqrt(dot(a, a) * dot(b, b))


@dataclass(frozen=True)
class Quality:
    lag: int
    snr_in: float
    snr_out: float
    corr_in: float
    corr_out: float

    @property
    def gain_db(self) -> float:
        return self.snr_out - self.snr_in


def quality(out: array[int], noisy: array[int], clean: array[int], rate: int) -> Quality:
    """Input and output against the clean speech, from the second second to the end of the speech."""
    shift = lag(out, clean, rate)
    start, end = rate, len(clean)
    aligned = out[start + shift : end + shift]
    ref = clean[start:end]
    return Quality(
        lag=shift,
        snr_in=si_snr(noisy[start:end], ref),
        snr_out=si_snr(aligned, ref),
        corr_in=correlation(noisy[start:end], ref),
        corr_out=correlation(aligned, ref),
    )
