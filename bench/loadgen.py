"""Load generator: N mod_audio_fork gateways and N Plivo customers in one process.

Each gateway sends 20 ms L16 8 kHz frames on an absolute clock; the first bytes of every
frame carry (send time µs, call index, frame number), so a customer decoding `media`
recovers them and measures the relay's added latency, loss, duplicates and reordering.
With --bidi each customer answers every second of audio with one second of playAudio and
the gateways measure the playback's inter-frame jitter and drift.
Prints one JSON object. Usage: python bench/loadgen.py --url ws://… --calls N --seconds S
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import statistics
import struct
import time
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

HEADER = struct.Struct("<QII")  # send time µs, call index, frame number
FRAME = 320


def now_us() -> int:
    return time.monotonic_ns() // 1000


class Stats:
    def __init__(self, calls: int) -> None:
        self.sent = [0] * calls
        self.received = [0] * calls
        self.last = [-1] * calls
        self.duplicates = 0
        self.out_of_order = 0
        self.latencies: list[int] = []
        self.play_gaps: list[float] = []
        self.play_drift: list[float] = []
        self.connected = 0
        self.drift_seconds = 0.0
        self.steady_from_us = 0
        self.opened: dict[int, float] = {}
        self.setup: list[float] = []


async def customer(conn: ServerConnection, stats: Stats, bidi: bool) -> None:
    index = int(conn.request.path.rsplit("/", 1)[1]) if conn.request else 0
    media_seen = 0
    clip = base64.b64encode(b"\x10\x00" * 8000).decode()
    async for raw in conn:
        at = now_us()
        pos = raw.find('"payload":"')
        if pos < 0:
            if '"start"' in raw:
                stats.connected += 1
                if stats.drift_seconds:  # one continuous clip: playback drift over its whole length
                    for _ in range(int(stats.drift_seconds)):
                        await conn.send(
                            json.dumps(
                                {
                                    "event": "playAudio",
                                    "media": {"contentType": "audio/x-l16", "sampleRate": 8000, "payload": clip},
                                }
                            )
                        )
                if index in stats.opened:
                    stats.setup.append(time.monotonic() - stats.opened[index])
            continue
        head = base64.b64decode(raw[pos + 11 : pos + 11 + 24])
        sent_us, idx, number = HEADER.unpack_from(head)
        if sent_us >= stats.steady_from_us:  # steady state: every call has been set up
            stats.latencies.append(at - sent_us)
        stats.received[idx] += 1
        last = stats.last[idx]
        if number == last:
            stats.duplicates += 1
        elif number < last:
            stats.out_of_order += 1
        else:
            stats.last[idx] = number
        media_seen += 1
        if bidi and not stats.drift_seconds and media_seen % 50 == 0:
            await conn.send(
                json.dumps(
                    {"event": "playAudio", "media": {"contentType": "audio/x-l16", "sampleRate": 8000, "payload": clip}}
                )
            )


async def gateway(
    url: str,
    index: int,
    customer_url: str,
    stats: Stats,
    seconds: float,
    start: float,
    headers: dict[str, str],
    bidi: bool,
) -> None:
    meta = {"callId": None, "streams": [{"serviceUrl": f"{customer_url}/{index}", "bidirectional": bidi}]}
    async with connect(
        url,
        additional_headers=headers,
        subprotocols=["audio.drachtio.org"],  # type: ignore[list-item]
        compression=None,
        max_size=None,
        open_timeout=30,
    ) as ws:
        await ws.send(json.dumps(meta))
        arrivals: list[float] = []

        async def reader() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    arrivals.append(time.monotonic())

        read_task = asyncio.create_task(reader()) if bidi else None
        pad = b"\x00" * (FRAME - HEADER.size)
        frames = int(seconds * 50)
        for k in range(frames):
            delay = start + k * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(HEADER.pack(now_us(), index, k) + pad)
            stats.sent[index] += 1
        await asyncio.sleep(1.0)  # let the tail drain before hanging up
        if read_task is not None:
            read_task.cancel()
            if len(arrivals) > 10:
                gaps = [b - a for a, b in itertools.pairwise(arrivals)]
                stats.play_gaps += [g for g in gaps if g < 0.2]  # gaps inside a clip, not between clips
                # drift: within each burst of contiguous frames, actual vs ideal elapsed time
                run_start = 0
                for i, gap in enumerate([*gaps, 1.0]):
                    if gap >= 0.2:
                        n = i - run_start
                        if n >= 40 and (not stats.drift_seconds or n >= 40 * stats.drift_seconds):
                            # from the 2nd second on: the first includes every call's set-up at once
                            first = run_start + (100 if stats.drift_seconds else 0)
                            stats.play_drift.append(arrivals[i] - arrivals[first] - (i - first) * 0.02)
                        run_start = i + 1


def pct(values: list[int] | list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--auth", default="")
    parser.add_argument("--bidi", action="store_true")
    parser.add_argument("--drift", action="store_true", help="with --bidi: one clip as long as the call")
    parser.add_argument("--ramp-seconds", type=float, default=2.0)
    args = parser.parse_args()
    stats = Stats(args.calls)
    if args.drift:
        stats.drift_seconds = max(1.0, min(55.0, args.seconds - 2))
    headers = {"Authorization": f"Basic {base64.b64encode(args.auth.encode()).decode()}"} if args.auth else {}
    server = await serve(lambda c: customer(c, stats, args.bidi), "127.0.0.1", 0, compression=None, max_size=None)
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    begin = time.monotonic() + 0.5
    # latency counts only once every call is up: set-up is reported separately (setup_p50/p99)
    stats.steady_from_us = int((begin + args.ramp_seconds + 2.0) * 1e6)
    tasks = []
    for i in range(args.calls):
        start = begin + args.ramp_seconds * i / args.calls  # spread the phases of the 20 ms clocks
        tasks.append(
            asyncio.create_task(
                gateway(args.url, i, f"ws://127.0.0.1:{port}/c", stats, args.seconds, start + 1.0, headers, args.bidi)
            )
        )
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    server.close()
    lat = [v / 1000 for v in stats.latencies]
    out: dict[str, Any] = {
        "calls": args.calls,
        "connected": stats.connected,
        "errors": errors[:3],
        "error_count": len(errors),
        "sent": sum(stats.sent),
        "received": sum(stats.received),
        "lost": sum(stats.sent) - sum(stats.received),
        "duplicates": stats.duplicates,
        "out_of_order": stats.out_of_order,
        "setup_p50_ms": round(1000 * pct(stats.setup, 0.5), 1),
        "setup_p99_ms": round(1000 * pct(stats.setup, 0.99), 1),
        "p50_ms": round(pct(lat, 0.5), 2),
        "p99_ms": round(pct(lat, 0.99), 2),
        "max_ms": round(max(lat or [0]), 2),
    }
    if args.bidi:
        jitter = [abs(g - 0.02) * 1000 for g in stats.play_gaps]
        out.update(
            {
                "play_frames": len(stats.play_gaps),
                "play_jitter_p50_ms": round(pct(jitter, 0.5), 2),
                "play_jitter_p99_ms": round(pct(jitter, 0.99), 2),
                "play_drift_max_ms": round(max((abs(d) for d in stats.play_drift), default=0) * 1000, 2),
                "play_drift_mean_ms": round(statistics.fmean(stats.play_drift) * 1000, 2) if stats.play_drift else 0,
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
