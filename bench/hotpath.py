"""The relay's per-frame work alone: `on_audio` + `pump` of one L16 stream into a socket that takes
everything and does nothing, in CPU ns per frame (the best and the median of 7 runs of 200,000).

    .venv/bin/python bench/hotpath.py

No server, no network, no database: a figure for before/after comparisons of the audio path's own
Python code that a loaded machine disturbs far less than `bench/run.py` (it reads process CPU time).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "streamhub.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + "x" * 40)

import django  # noqa: E402

django.setup()

from websockets.protocol import State  # noqa: E402

from streams.live.relay import StreamRelay  # noqa: E402
from streams.models import Account, Call, Stream  # noqa: E402

FRAMES, RUNS = 200_000, 7


class Protocol:
    state = State.OPEN

    def send_text(self, data: bytes) -> None:
        pass


class Socket:
    paused = False
    protocol = Protocol()

    def send_data(self) -> None:
        pass


class Host:
    def relay_finished(self, relay: object) -> None:
        pass


async def main() -> None:
    account = Account(auth_id="MA0", auth_token="token")
    stream = Stream(account=account, call=Call(account=account), service_url="ws://127.0.0.1/")
    relay = StreamRelay(session=Host(), stream=stream, gateway_rate=8000)  # type: ignore[arg-type]
    relay.ws, relay._idle = Socket(), True  # type: ignore[assignment]
    frame = bytes(320)
    runs = []
    for _ in range(RUNS):
        started = time.process_time()
        for _ in range(FRAMES):
            relay.on_audio(frame, b"", False)
            relay.pump()
        runs.append((time.process_time() - started) / FRAMES * 1e9)
    runs.sort()
    print(f"on_audio + pump: best {runs[0]:.0f} ns/frame, median {runs[RUNS // 2]:.0f} ns/frame")


if __name__ == "__main__":
    asyncio.run(main())
