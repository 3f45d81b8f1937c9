"""Whole-process CPU of a call's set-up and hang-up, with no audio in between.

    .venv/bin/python bench/churn.py [--server uvicorn,reference,picows,NAME@DIR] [--calls 300] [--rate 50]
                                    [--gateway audio-fork|asterisk]

bench/run.py's "setup ms" is what a step cost beyond relaying its frames at the steady window's
price; frames relayed while the calls arrive cost more than that (fewer calls share each loop
wake-up), so it overstates set-up. This measures it alone: each call connects as a
`mod_audio_fork` gateway, sends its metadata (one one-way stream, no status callback), waits until
its customer has the `start` message, hangs up, and waits until the customer's socket is closed.
Calls arrive at --rate a second (--concurrency at most in flight) while --background silent calls
stay up (a hub is never empty: with no other call, each hang-up would also restart the channel
layer's shared receive, a cost a busy hub does not pay per call). The server runs as in
bench/run.py (production settings, PostgreSQL, Redis, pinned to CPU 0; this client on CPU 1);
its CPU (every thread, the database threads included) over the run, minus what it burns idle over
the same time, divided by the calls, is the set-up + hang-up cost per call. The plain relays
(`reference`, `picows`) are measured the same way for the floor: a WebSocket accepted, one dialled,
both closed. --gateway asterisk: the calls speak Asterisk chan_websocket (the stream on the URI,
MEDIA_START first; the held calls' silent gaps are filled by the hub, a cost the idle measurement
takes out); hubs only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlencode

from run import (  # type: ignore[import-not-found]  # bench/run.py, beside this file
    LOAD_CPU,
    SERVER_CPU,
    cpu_seconds,
    env_for_hub,
    free_port,
    hub_variant,
    loadavg,
    pinned,
    prepare_db,
    start,
    stop,
    tree,
    wait_port,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

IDLE_SECONDS = 3.0  # the server's idle CPU is measured over this long before the calls
SETTLE_SECONDS = 2.0  # after the last call: the hang-up's database writes finish


async def churn(
    url: str, auth: str, calls: int, rate: float, concurrency: int, background: int = 0, gateway: str = "audio-fork"
) -> tuple[int, list[float], list[str]]:
    """Run the calls: (calls completed, set-up seconds of each: connect to the customer's `start`,
    the failed calls' errors). With `background`, that many calls are opened first and held
    (silent) until the churned calls are done; with a parent process (--child) the two sides
    are told apart on stdout/stdin ("ready", then a line to go; the figures, then a line to end)."""
    started: dict[str, asyncio.Future[None]] = {}
    closed: dict[str, asyncio.Future[None]] = {}

    async def customer(ws: ServerConnection) -> None:
        key = ws.request.path.rsplit("/", 1)[-1] if ws.request else ""
        async for message in ws:
            if isinstance(message, str) and '"start"' in message and not started[key].done():
                started[key].set_result(None)
        if key in closed and not closed[key].done():
            closed[key].set_result(None)

    port = free_port()
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    gate = asyncio.Semaphore(concurrency)
    setups: list[float] = []
    done = 0

    async def call(index: int, hold: asyncio.Event | None = None) -> None:
        nonlocal done
        key = str(index)
        loop = asyncio.get_running_loop()
        started[key], closed[key] = loop.create_future(), loop.create_future()
        service = f"ws://127.0.0.1:{port}/c/{key}"
        if gateway == "asterisk":  # chan_websocket: the stream on the URI, MEDIA_START first
            target, protocol = f"{url}?{urlencode({'serviceUrl': service}, quote_via=quote)}", "media"
            first: dict[str, object] = {"event": "MEDIA_START", "connection_id": str(uuid.uuid4()), "ptime": 20}
            first.update({"channel_id": f"{os.getpid()}.{index}", "format": "slin", "optimal_frame_size": 320})
        else:
            target, protocol = url, "audio.drachtio.org"
            first = {"callId": None, "streams": [{"serviceUrl": service}]}
        async with gate:
            t0 = time.monotonic()
            async with connect(target, additional_headers=headers, subprotocols=[protocol]) as ws:  # type: ignore[list-item]
                await ws.send(json.dumps(first))
                await asyncio.wait_for(started[key], 10)
                if hold is not None:
                    held.append(None)
                    if len(held) == background:
                        all_held.set()
                    await hold.wait()
                else:
                    setups.append(time.monotonic() - t0)
            await asyncio.wait_for(closed[key], 10)
            if hold is None:
                done += 1

    async def line() -> str:
        return await asyncio.to_thread(sys.stdin.readline)

    held: list[None] = []
    hold, all_held = asyncio.Event(), asyncio.Event()
    async with serve(customer, "127.0.0.1", port):
        holders = [asyncio.create_task(call(-1 - i, hold)) for i in range(background)]
        if background:
            ready = asyncio.create_task(all_held.wait())
            await asyncio.wait([ready, *holders], return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                raise RuntimeError(f"a background call failed: {next(t.exception() for t in holders if t.done())!r}")
            print("ready", flush=True)
            await line()
        tasks = []
        for i in range(calls):
            tasks.append(asyncio.create_task(call(i)))
            await asyncio.sleep(1 / rate)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        if background:
            print(json.dumps({"done": done}), flush=True)  # the figures follow; the parent reads its CPU first
            await line()
        hold.set()
        results = await asyncio.gather(*holders, return_exceptions=True)
        errors += [f"background: {r!r}" for r in results if isinstance(r, BaseException)]
    return done, setups, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="uvicorn,reference,picows", help="NAME[@DIR],… as in bench/run.py")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0, help="calls arriving per second")
    parser.add_argument("--concurrency", type=int, default=50, help="calls in flight at most")
    parser.add_argument(
        "--background", type=int, default=20, help="silent calls held open meanwhile (a hub is never empty)"
    )
    parser.add_argument(
        "--gateway",
        choices=("audio-fork", "asterisk"),
        default="audio-fork",
        help="the calls' framing: mod_audio_fork, or Asterisk chan_websocket (hubs only)",
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # URL,AUTH: run the client side only
    args = parser.parse_args()
    if args.child:
        url, _, auth = args.child.partition(",")
        done, setups, errors = asyncio.run(
            churn(url, auth, args.calls, args.rate, args.concurrency + args.background, args.background, args.gateway)
        )
        setups.sort()
        p50 = setups[len(setups) // 2] if setups else 0.0
        p99 = setups[min(len(setups) - 1, int(len(setups) * 0.99))] if setups else 0.0
        figures = {"done": done, "setup_p50_ms": 1000 * p50, "setup_p99_ms": 1000 * p99, "errors": errors[:5]}
        print(json.dumps({**figures, "failed": len(errors)}))
        return
    logs = Path(tempfile.mkdtemp(prefix="streamhub-churn-"))
    env = env_for_hub(logs / "data")
    auth = prepare_db(env)
    print(f"# streamhub churn {time.strftime('%Y-%m-%d %H:%M:%S')} · load average {loadavg()} · {args.calls} calls")
    print("server                 calls  done  cpu ms/call  idle cpu%  set-up p50/p99 ms")
    for spec in args.server.split(","):
        port = free_port()
        cmd, root = hub_variant(spec, port)
        proc = start(pinned(SERVER_CPU, cmd), env, logs / f"{spec.replace('/', '_')}.log", cwd=root)
        try:
            wait_port(port)
            time.sleep(2.0)  # past start-up (imports, migrations check, first heartbeat)
            client = [
                sys.executable,
                __file__,
                "--child",
                f"ws://127.0.0.1:{port}/ingest/{args.gateway},{auth}",
                "--calls",
                str(args.calls),
                "--rate",
                str(args.rate),
                "--concurrency",
                str(args.concurrency),
                "--background",
                str(args.background),
                "--gateway",
                args.gateway,
            ]
            child = subprocess.Popen(pinned(LOAD_CPU, client), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert child.stdin is not None and child.stdout is not None
            if args.background and child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{spec}: the background calls did not come up")
            time.sleep(1.0)  # past the background calls' set-up
            pids = tree(proc.pid)
            c0, w0 = cpu_seconds(pids), time.monotonic()
            time.sleep(IDLE_SECONDS)
            c1, w1 = cpu_seconds(pids), time.monotonic()
            idle_rate = (c1 - c0) / (w1 - w0)
            if args.background:
                child.stdin.write("go\n")
                child.stdin.flush()
                child.stdout.readline()  # the churned calls are done
            time.sleep(SETTLE_SECONDS)
            c2, w2 = cpu_seconds(tree(proc.pid)), time.monotonic()
            out, _ = child.communicate("end\n", timeout=60)
            figures = json.loads(out.strip().splitlines()[-1])
            if figures["failed"]:
                print(f"# {spec}: {figures['failed']} calls failed, e.g. {figures['errors'][0]}", flush=True)
            per_call = 1000 * ((c2 - c1) - idle_rate * (w2 - w1)) / max(1, figures["done"])
            print(
                f"{spec:22} {args.calls:5} {figures['done']:5} {per_call:12.2f} {100 * idle_rate:10.1f}"
                f"  {figures['setup_p50_ms']:.1f} / {figures['setup_p99_ms']:.1f}",
                flush=True,
            )
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
