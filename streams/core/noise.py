"""Noise suppression for streams that ask for it (`noiseCancellation`), one suppressor per track.

Contract:
- `NoiseSuppressor(rate, level)` takes mono s16le PCM at 8 or 16 kHz and gives back exactly as
  many bytes as it was given, on every call: a 20 ms frame in is a 20 ms frame out, so frame
  sizes, chunk numbers and timestamps downstream are unchanged.
- The engine is the Speex preprocessor's denoiser (`pyspeex-noise`), which works on 10 ms of
  16 kHz audio. 8 kHz audio goes up to 16 kHz and back down with `audioop.ratecv`, statefully.
  AGC is off: the hub relays audio, it does not re-level it.
- The content comes out a fixed `delay_samples` late (10 ms, plus one sample at 8 kHz): the
  first call's output starts with that much silence. `flush()` returns the delayed tail (the
  last `delay_samples` of processed audio), so nothing the caller said is held back at the end.
- `level` is Plivo's `noiseCancellationLevel`, 60–100 (clamped), mapped linearly to the
  engine's maximum noise attenuation, −15 dB (Speex's default) to −45 dB.
- Deterministic (same input, same output); not thread-safe (one instance per track, used by
  that stream's task only). Pure computation: no I/O, no clock.

docs/noise-cancellation.md has the measurements behind these choices.
"""

from __future__ import annotations

import math
import warnings

from pyspeex_noise import AudioProcessor

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib up to 3.12; the audioop-lts package from 3.13

ENGINE = "pyspeex-noise 2.0.1 (Speex preprocessor)"  # what the debug log names; a test keeps it the installed one
ENGINE_RATE = 16000
CHUNK = 320  # bytes: what the engine takes per call, 10 ms at 16 kHz
ENGINE_DELAY = 160  # samples at 16 kHz: the preprocessor's overlap, 10 ms
LEVEL_MIN, LEVEL_MAX = 60, 100
DB_MIN, DB_MAX = 15, 45  # maximum attenuation at LEVEL_MIN and LEVEL_MAX
RATES = (8000, 16000)


def attenuation_db(level: int) -> int:
    """`noiseCancellationLevel` 60..100 (clamped) -> the engine's maximum noise attenuation, -15..-45 dB."""
    level = min(LEVEL_MAX, max(LEVEL_MIN, int(level)))
    return -round(DB_MIN + (level - LEVEL_MIN) * (DB_MAX - DB_MIN) / (LEVEL_MAX - LEVEL_MIN))


class NoiseSuppressor:
    """One track's suppressor: `process` any whole number of samples, get as many back."""

    __slots__ = (
        "_down",
        "_first",
        "_in",
        "_out",
        "_padded",
        "_process",
        "_up",
        "attenuation_db",
        "energy_in",
        "energy_out",
        "frames",
        "level",
        "rate",
    )

    def __init__(self, rate: int, level: int) -> None:
        if rate not in RATES:
            raise ValueError(f"noise suppression runs at 8000 or 16000 Hz, not {rate}")
        self.rate = rate
        self.level = min(LEVEL_MAX, max(LEVEL_MIN, int(level)))
        self.attenuation_db = attenuation_db(self.level)
        self._process = AudioProcessor(0, self.attenuation_db).process_10ms  # auto_gain 0: AGC off
        self._up: tuple[int, tuple[tuple[int, int], ...]] | None = None
        self._down: tuple[int, tuple[tuple[int, int], ...]] | None = None
        self._in = bytearray()  # 16 kHz audio short of a whole engine chunk
        self._out = bytearray()  # processed audio at `rate`, not handed out yet
        self._first = True
        self._padded = 0  # samples of silence put before the content to keep the output's length
        # for the stream's summary: calls, and the energy that went in and came out
        self.frames = 0
        self.energy_in = self.energy_out = 0

    @property
    def delay_samples(self) -> int:
        """How late the content comes out, in samples at `rate`: 160 at 16 kHz, 81 at 8 kHz, as long
        as the input comes in pieces of 10 ms or more (smaller ones add the silence they wait for)."""
        if self.rate == ENGINE_RATE:
            return ENGINE_DELAY + self._padded
        # the engine's 160 samples at 16 kHz are 80 here, plus the whole sample of padding (see _feed)
        return ENGINE_DELAY // 2 + 1 + self._padded

    def process(self, pcm: bytes) -> bytes:
        n = len(pcm)
        if n % 2:
            raise ValueError(f"{n} bytes is not a whole number of 16-bit samples")
        self._feed(pcm)
        out = self._out
        if len(out) < n:  # start-up at 8 kHz, or pieces smaller than the engine's 10 ms
            self._padded += (n - len(out)) // 2
            out[0:0] = bytes(n - len(out))
        frame = bytes(out[:n])
        del out[:n]
        self.frames += 1
        samples = n // 2
        self.energy_in += audioop.rms(pcm, 2) ** 2 * samples
        self.energy_out += audioop.rms(frame, 2) ** 2 * samples
        return frame

    @property
    def output_level_db(self) -> float | None:
        """The output's energy against the input's so far, in dB (negative: quieter); None before any audio."""
        if not self.energy_in:
            return None
        if not self.energy_out:
            return -99.0
        return round(10 * math.log10(self.energy_out / self.energy_in), 1)

    def flush(self) -> bytes:
        """The processed audio still held back (`delay_samples` of it), pushed out with silence.

        Call it at the end of the track's audio. The suppressor then starts over as if new, but
        keeps its noise estimate.
        """
        if self._first:
            return b""
        held = 2 * self.delay_samples
        silence = bytes(self.rate // 50 * 2)
        while len(self._out) < held:
            self._feed(silence)
        tail = bytes(self._out[:held])
        self._up = self._down = None
        self._in.clear()
        self._out.clear()
        self._first = True
        self._padded = 0
        return tail

    def _feed(self, pcm: bytes) -> None:
        if self.rate == ENGINE_RATE:
            up = pcm
        else:
            up, self._up = audioop.ratecv(pcm, 2, 1, self.rate, ENGINE_RATE, self._up)
            if self._first and up:
                # ratecv's first output is one 16 kHz sample short (it interpolates towards the
                # next input). Pad a whole 8 kHz sample (two at 16 kHz), never one: a half-sample
                # shift would make the way down pick the interpolated samples, which averages
                # neighbours (-12.6 dB at 3.4 kHz).
                up = b"\x00\x00\x00\x00" + up
        if up:
            self._first = False
        buf = self._in
        buf += up
        whole = len(buf) - len(buf) % CHUNK
        if not whole:
            return
        process = self._process
        done = b"".join([process(bytes(buf[i : i + CHUNK])) for i in range(0, whole, CHUNK)])
        del buf[:whole]
        if self.rate != ENGINE_RATE:
            done, self._down = audioop.ratecv(done, 2, 1, ENGINE_RATE, self.rate, self._down)
        self._out += done
