"""Micro-benchmark: what noise cancellation costs per 20 ms frame, and what it costs streams without it.

    .venv/bin/python bench/noise_micro.py [--frames 2000] [--repeats 30]

Prints µs of CPU per frame (this thread's CPU time, `time.thread_time`, so that the time other
processes on a shared machine hold the core is not counted; the minimum over --repeats runs of
--frames frames, to leave out the runs they disturbed most) for:
- the engine alone (`pyspeex-noise`, one 10 ms call at 16 kHz; a 20 ms frame takes two);
- `NoiseSuppressor.process` on one 20 ms frame at 8 kHz (with its 8k->16k->8k resampling) and at
  16 kHz, at levels 60, 85 and 100; then 200 suppressors in turn at 8 kHz, as in a hub where each
  stream's state (29 KiB) has left the CPU's caches by the time its next frame comes;
- `StreamRelay.on_audio` for one inbound L16 8 kHz stream without noise cancellation (the short
  path) and with it, each frame then taken off the send buffer as the writer would.
The audio is the sample caller with white noise at 5 dB SNR. The machine's load average is printed
with the figures. No database, no sockets: the relay is built on an unsaved Stream row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "streamhub.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + "x" * 40)
os.environ.setdefault("STREAMHUB_DATA_DIR", str(ROOT / "var" / "bench-micro"))

import django  # noqa: E402

django.setup()

from pyspeex_noise import AudioProcessor  # noqa: E402

from bench.loadgen import noisy_speech_frames  # noqa: E402
from streams.core.noise import NoiseSuppressor  # noqa: E402
from streams.live.relay import StreamRelay  # noqa: E402
from streams.models import Account, Call, Stream  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def best_us(step: Callable[[int], object], frames: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        for k in range(frames):
            step(k)
        best = min(best, (time.thread_time() - start) / frames)
    return best * 1e6


class Host:
    """A RelayHost with no call behind it."""

    def relay_finished(self, relay: StreamRelay) -> None: ...

    def play(self, relay: StreamRelay, pcm: bytes) -> None: ...

    def checkpoint(self, relay: StreamRelay, name: str) -> bool:
        return False

    def clear(self, relay: StreamRelay) -> tuple[int, list[str]]:
        return 0, []

    def send_dtmf(self, relay: StreamRelay, digits: str) -> bool:
        return False


def relay(noise: bool) -> StreamRelay:
    account = Account(name="bench")
    call = Call(account=account)
    stream = Stream(
        call=call,
        account=account,
        service_url="ws://127.0.0.1:9/ws",
        audio_track="inbound",
        content_type="audio/x-l16;rate=8000",
        noise_cancellation=noise,
        noise_cancellation_level=85,
    )
    return StreamRelay(session=Host(), stream=stream, gateway_rate=8000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    n, r = args.frames, args.repeats
    frames8 = noisy_speech_frames()
    frames16 = [audioop.ratecv(f, 2, 1, 8000, 16000, None)[0].ljust(640, b"\x00")[:640] for f in frames8]
    silence = bytes(320)
    print(f"# noise_micro · {time.strftime('%Y-%m-%d %H:%M:%S')} · load average {os.getloadavg()[0]:.2f}")
    print(f"# µs of CPU (thread time) per 20 ms frame, best of {r} runs of {n} frames")
    engine = AudioProcessor(0, -34).process_10ms
    chunks = [f[:320] for f in frames16]
    print(f"engine, one 10 ms call at 16 kHz          {best_us(lambda k: engine(chunks[k % len(chunks)]), n, r):7.1f}")
    for rate, frames in ((8000, frames8), (16000, frames16)):
        for level in (60, 85, 100):
            suppressor = NoiseSuppressor(rate, level)
            us = best_us(lambda k, s=suppressor, f=frames: s.process(f[k % len(f)]), n, r)
            print(f"NoiseSuppressor.process {rate:>5} Hz level {level:>3} {us:7.1f}")
    streams = [NoiseSuppressor(8000, 85) for _ in range(200)]
    us = best_us(lambda k: streams[k % 200].process(frames8[(k // 200) % len(frames8)]), n, r)
    print(f"NoiseSuppressor.process  8000 Hz, 200 in turn {us:7.1f}")
    for noise in (False, True):
        subject = relay(noise)
        buffer = subject.buffer

        def step(k: int, subject: StreamRelay = subject, buffer: object = buffer) -> None:
            subject.on_audio(frames8[k % len(frames8)], silence, False)
            subject.buffer.popleft()

        label = "on" if noise else "off (short path)"
        print(f"StreamRelay.on_audio, noise cancellation {label:<17} {best_us(step, n, r):7.1f}")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
