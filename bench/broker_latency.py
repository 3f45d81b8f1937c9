"""Publish-to-consume latency of the embedded broker: kombu's filesystem transport vs streamhub's.

    .venv/bin/python bench/broker_latency.py [--messages 300] [--backlog 2000]

One producer and one consumer in this process, a fresh folder per transport; each message
is published and then drained (polling every 10 ms), so the figure is the transport's own
cost per hop: write + list + claim + read. `--backlog` first queues that many messages and
times draining them (kombu lists and sorts the folder for every get).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kombu import Connection, Exchange, Queue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TRANSPORTS = {"kombu filesystem": "filesystem", "streamhub.broker": "streamhub.broker:Transport"}


def options(folder: Path) -> dict[str, object]:
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.01,
    }


def run(transport: str, messages: int, backlog: int) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as tmp:
        exchange = Exchange("bench", type="direct")
        queue = Queue("bench", exchange, routing_key="bench")
        with Connection("filesystem://localhost/", transport=transport, transport_options=options(Path(tmp))) as conn:
            producer = conn.Producer(serializer="json")
            received: list[float] = []
            with conn.Consumer(queue, callbacks=[lambda body, msg: (received.append(time.perf_counter()), msg.ack())]):
                latencies = []
                for _ in range(messages):
                    sent = time.perf_counter()
                    producer.publish(
                        {"task": "x", "args": [1]}, exchange=exchange, routing_key="bench", declare=[queue]
                    )
                    count = len(received)
                    while len(received) == count:
                        conn.drain_events(timeout=5)
                    latencies.append((received[-1] - sent) * 1000)
                for _ in range(backlog):
                    producer.publish({"task": "x"}, exchange=exchange, routing_key="bench", declare=[queue])
                began, target = time.perf_counter(), len(received) + backlog
                while len(received) < target:
                    conn.drain_events(timeout=5)
                drained = time.perf_counter() - began
    return latencies, drained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--only", choices=sorted(TRANSPORTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only is None:  # each transport in a fresh process: kombu keeps per-class broker state
        for name in TRANSPORTS:
            extra = ["--messages", str(args.messages), "--backlog", str(args.backlog), "--only", name]
            subprocess.run([sys.executable, __file__, *extra], check=True)
        return
    for name, transport in TRANSPORTS.items():
        if name != args.only:
            continue
        latencies, drained = run(transport, args.messages, args.backlog)
        latencies.sort()
        p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"{name:18} one hop: p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
            f"a backlog of {args.backlog}: {drained:.1f} s ({args.backlog / drained:.0f}/s)"
        )


if __name__ == "__main__":
    main()
