"""One command: the hub as deployed vs the reference relay, ramping concurrent calls.

    .venv/bin/python bench/run.py [--server daphne|uvicorn|both] [--calls 50,100,200,…] [--seconds 10] [--bidi]

The hub runs with production settings (PostgreSQL + Redis from DATABASE_URL/REDIS_URL,
defaulting to the local servers, a Celery worker running) pinned to CPU 0 with taskset;
the load generator is pinned to CPU 1. For each N it prints frames sent/received/lost,
duplicates, out-of-order, p50/p99/max added latency, server CPU %, CPU µs per relayed frame
and RSS per call; it stops a server's ramp at the first N with loss or p99 > 20 ms.
Capacity = the largest N that passed; the hub/reference ratio is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int, cmd: list[str]) -> list[str]:
    return (
        ["taskset", "-c", str(cpu), *cmd] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else cmd
    )


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def tree(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(os.getpgid(pid))], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out] or [pid]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def env_for_hub(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/streamhub_bench")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
    env.update(
        {
            "STREAMHUB_DATA_DIR": str(data_dir),
            "DJANGO_SECRET_KEY": "bench-" + "x" * 40,
            "STREAMHUB_LOG_LEVEL": "WARNING",
            "STREAMHUB_MAX_CALLS": "5000",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def prepare_db(env: dict[str, str]) -> str:
    url = env["DATABASE_URL"]
    if url.startswith("postgres"):
        name = url.rsplit("/", 1)[1]
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"CREATE DATABASE {name}"], capture_output=True
        )
    subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run(
        [PY, "manage.py", "create_account", "bench"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout
    creds = json.loads(out)
    return f"{creds['auth_id']}:{creds['auth_token']}"


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def measure(
    name: str, url: str, pids_of: Any, calls: int, seconds: float, auth: str, bidi: bool, drift: bool = False
) -> dict[str, Any]:
    pids = pids_of()
    cpu0, wall0 = cpu_seconds(pids), time.monotonic()
    rss0 = rss_kb(pids)
    cmd = pinned(
        1,
        [
            PY,
            str(ROOT / "bench" / "loadgen.py"),
            "--url",
            url,
            "--calls",
            str(calls),
            "--seconds",
            str(seconds),
            "--auth",
            auth,
        ]
        + (["--bidi"] if bidi else [])
        + (["--drift"] if drift else []),
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120)
    cpu1, wall1 = cpu_seconds(pids), time.monotonic()
    result = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {"error": out.stderr[-2000:]}
    rss1 = rss_kb(pids_of())
    cpu = cpu1 - cpu0
    frames = result.get("received", 0) + (result.get("play_frames", 0) if bidi else 0)
    result.update(
        {
            "server": name,
            "cpu_pct": round(100 * cpu / (wall1 - wall0), 1),
            "cpu_us_per_frame": round(1e6 * cpu / frames, 1) if frames else None,
            "rss_kb_per_call": round(max(0, rss1 - rss0) / calls, 1) if calls else None,
            "rss_mb": round(rss1 / 1024, 1),
        }
    )
    return result


def ok(result: dict[str, Any]) -> bool:
    return (
        result.get("lost", 1) == 0
        and result.get("error_count", 1) == 0
        and result.get("p99_ms", 99) < 20
        and result.get("duplicates", 1) == 0
    )


def row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['server']:<10} load generator failed: {r['error']}"
    r = {k: ("-" if v is None else v) for k, v in r.items()}
    return (
        f"{r['server']:<10} {r['calls']:>5} {r.get('sent', 0):>8} {r.get('received', 0):>8} {r.get('lost', '-'):>6} "
        f"{r.get('duplicates', '-'):>4} {r.get('out_of_order', '-'):>4} {r.get('p50_ms', '-'):>7} "
        f"{r.get('p99_ms', '-'):>7} {r.get('max_ms', '-'):>7} {r['cpu_pct']:>6} {r.get('cpu_us_per_frame', '-'):>8} "
        f"{r.get('rss_kb_per_call', '-'):>8}"
        + (
            f"  jitter p50/p99 {r.get('play_jitter_p50_ms')}/{r.get('play_jitter_p99_ms')} ms,"
            f" drift max {r.get('play_drift_max_ms')} ms"
            if "play_frames" in r
            else ""
        )
        + ("" if ok(r) else "  <- limit")
        + (f"  {r.get('errors')}" if r.get("error_count") else "")
    )


HEAD = (
    f"{'server':<10} {'calls':>5} {'sent':>8} {'recv':>8} {'lost':>6} {'dup':>4} {'ooo':>4} {'p50ms':>7} "
    f"{'p99ms':>7} {'maxms':>7} {'cpu%':>6} {'µs/frame':>8} {'KB/call':>8}"
)


def ramp(
    name: str, url: str, pids_of: Any, steps: list[int], seconds: float, auth: str, bidi: bool, drift: bool = False
) -> int:
    capacity = 0
    for calls in steps:
        result = measure(name, url, pids_of, calls, seconds, auth, bidi, drift)
        print(row(result), flush=True)
        if not ok(result):
            break
        capacity = calls
    return capacity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["daphne", "uvicorn", "both"], default="both")
    parser.add_argument("--calls", default="50,100,200,300,400,500,600,700")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--bidi", action="store_true")
    parser.add_argument("--drift", action="store_true", help="with --bidi: one continuous clip per call")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    steps = [int(n) for n in args.calls.split(",")]
    data_dir = ROOT / "var" / "bench"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = env_for_hub(data_dir)
    auth = prepare_db(env)
    print(
        f"# streamhub bench {time.strftime('%Y-%m-%d %H:%M:%S')} · {os.cpu_count()} CPUs · "
        f"{args.seconds:.0f} s per step · hub/reference on CPU 0, load on CPU 1 · bidi={args.bidi}"
    )
    print(HEAD)
    logs = data_dir
    capacities: dict[str, int] = {}
    worker = start(
        pinned(1, [PY, "-m", "celery", "-A", "streamhub", "worker", "--pool=threads", "-c", "4", "--loglevel=WARNING"]),
        env,
        logs / "worker.log",
    )
    try:
        servers = ["daphne", "uvicorn"] if args.server == "both" else [args.server]
        for server in servers:
            port = free_port()
            if server == "daphne":
                cmd = [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "streamhub.asgi:application"]
            else:
                cmd = [
                    PY,
                    "-m",
                    "uvicorn",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--loop",
                    "uvloop",
                    "--no-access-log",
                    "--log-level",
                    "warning",
                    "--ws-max-size",
                    "16777216",
                    "streamhub.asgi:application",
                ]
            proc = start(pinned(0, cmd), env, logs / f"{server}.log")
            try:
                wait_port(port)
                capacities[server] = ramp(
                    server,
                    f"ws://127.0.0.1:{port}/ingest/audio-fork",
                    lambda p=proc: tree(p.pid),
                    steps,
                    args.seconds,
                    auth,
                    args.bidi,
                    args.drift,
                )
            finally:
                stop(proc)
        if not args.no_reference:
            port = free_port()
            proc = start(
                pinned(0, [PY, str(ROOT / "bench" / "reference_relay.py"), str(port)]), env, logs / "reference.log"
            )
            try:
                wait_port(port)
                capacities["reference"] = ramp(
                    "reference", f"ws://127.0.0.1:{port}/", lambda p=proc: [p.pid], steps, args.seconds, "", False
                )
            finally:
                stop(proc)
    finally:
        stop(worker)
    print(
        "# capacity (largest N with zero loss and p99 < 20 ms): " + ", ".join(f"{k} {v}" for k, v in capacities.items())
    )
    ref = capacities.get("reference")
    if ref:
        for name in ("daphne", "uvicorn"):
            if name in capacities:
                print(f"# {name}/reference capacity ratio: {capacities[name] / ref:.2f}")


if __name__ == "__main__":
    main()
