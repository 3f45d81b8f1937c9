"""One command: the hub as deployed vs the reference relay, ramping concurrent calls.

    .venv/bin/python bench/run.py [--server daphne|uvicorn|both] [--calls 100,200,…] [--seconds 10]
                                  [--bidi [--drift]] [--processes 2] [--no-reference] [--noise-cancellation]

The hub runs with production settings (PostgreSQL + Redis from DATABASE_URL/REDIS_URL,
defaulting to the local servers, a Celery worker running) pinned to CPU 0 with taskset;
the load generator (bench/loadgen.py) is pinned to CPU 1, and the reference relay
(bench/reference_relay.py: plain asyncio + websockets) is measured the same way in the same
run. Calls arrive at 50 a second; once all are up, the steady window begins. For each N it
prints frames sent/received/lost, duplicates, out-of-order, p50/p99/max added latency, the
server's CPU % and CPU µs per relayed frame over the steady window, the rest of the step's
CPU per call (set-up, hang-up, billing, callbacks), RSS per call and the load generator's
own CPU. A server's ramp stops at the first N with loss or p99 > 20 ms (with --bidi also:
playback frames lost, jitter p99 > 10 ms or drift >= 20 ms). Capacity = the largest N that
passed; the hub/reference capacity and CPU ratios are printed at the end.
--processes K runs K hub processes (all on CPU 0) and spreads the calls over them.
--noise-cancellation: every stream asks for noiseCancellation (level 85) and the gateways send
noisy speech; the reference relay has no suppressor, so it is not run (compare with a run of the
hub without the flag).
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
sys.path.insert(0, str(ROOT))
from streamhub.servers import hub_command  # noqa: E402

PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = 0, 1


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


def ramp_seconds(calls: int, bidi: bool = False) -> float:
    """Calls arrive over this long: 50 a second (10 with --bidi), not hundreds at once, which is
    not what a hub process sees; set-up is measured apart from the relay. With --bidi --drift
    every call's first second also brings its whole 60 s clip (3,000 frames to decode and
    queue), and playback is judged from each call's first frame, so calls arrive more slowly."""
    return max(2.0, calls / (10 if bidi else 50))


def measure(
    name: str,
    urls: list[str],
    pids_of: Any,
    calls: int,
    seconds: float,
    auth: str,
    bidi: bool,
    drift: bool = False,
    noise: bool = False,
) -> dict[str, Any]:
    """One step. The load generator announces the steady window on stderr (every call up
    and sending); the server's CPU is read at both ends of it, so the per-frame figure is
    the relay's own cost and call set-up/hang-up is reported apart, per call."""
    pids = pids_of()
    cpu0, wall0 = cpu_seconds(pids), time.monotonic()
    rss0 = rss_kb(pids)
    cmd = pinned(
        LOAD_CPU,
        [
            PY,
            str(ROOT / "bench" / "loadgen.py"),
            "--url",
            ",".join(urls),
            "--calls",
            str(calls),
            "--seconds",
            str(seconds + ramp_seconds(calls, bidi)),
            "--ramp-seconds",
            str(ramp_seconds(calls, bidi)),
            "--auth",
            auth,
        ]
        + (["--bidi"] if bidi else [])
        + (["--drift"] if drift else [])
        + (["--noise-cancellation"] if noise else []),
    )
    marks: dict[str, tuple[float, float]] = {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdout is not None
    errors: list[str] = []
    for line in proc.stderr:  # read as it comes: the marks must be taken when they are printed
        if line.startswith("steady-"):
            marks[line.strip()] = (cpu_seconds(pids), time.monotonic())
        else:
            errors.append(line)
    stdout = proc.stdout.read()
    proc.wait(timeout=(seconds + ramp_seconds(calls, bidi)) * 4 + 120)
    cpu1, wall1 = cpu_seconds(pids), time.monotonic()
    lines = stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"error": "".join(errors)[-2000:]}
    rss1 = rss_kb(pids_of())
    cpu = cpu1 - cpu0
    frames = result.get("received", 0) + (result.get("play_frames", 0) if bidi else 0)
    steady_us = None
    setup_ms = None
    if "steady-start" in marks and "steady-end" in marks and result.get("steady_frames"):
        (c0, w0), (c1, w1) = marks["steady-start"], marks["steady-end"]
        # relayed frames: media to the customers, and with --bidi playback to the gateways too
        steady_us = 1e6 * (c1 - c0) / (result["steady_frames"] + result.get("steady_play_frames", 0))
        result["steady_cpu_pct"] = round(100 * (c1 - c0) / (w1 - w0), 1)
        # what the step cost beyond relaying its frames: call set-up, hang-up, billing, callbacks
        setup_ms = 1000 * max(0.0, cpu - steady_us * frames / 1e6) / calls
    result.update(
        {
            "server": name,
            "cpu_pct": round(100 * cpu / (wall1 - wall0), 1),
            "cpu_us_per_frame": round(steady_us, 1) if steady_us else None,
            "cpu_us_per_frame_whole_run": round(1e6 * cpu / frames, 1) if frames else None,
            "setup_cpu_ms_per_call": round(setup_ms, 1) if setup_ms is not None else None,
            "rss_kb_per_call": round(max(0, rss1 - rss0) / calls, 1) if calls else None,
            "rss_mb": round(rss1 / 1024, 1),
        }
    )
    return result


def ok(result: dict[str, Any]) -> bool:
    """Zero loss, p99 < 20 ms; with --bidi also the playback targets: no playback frame lost,
    jitter p99 <= 10 ms, drift < 20 ms."""
    return (
        result.get("lost", 1) == 0
        and result.get("error_count", 1) == 0
        and result.get("invalid", 0) == 0
        and result.get("p99_ms", 99) < 20
        and result.get("duplicates", 1) == 0
        and (result.get("play_lost") or 0) == 0
        and result.get("play_jitter_p99_ms", 0) <= 10
        and result.get("play_drift_max_ms", 0) < 20
    )


def row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['server']:<10} load generator failed: {r['error']}"
    r = {k: ("-" if v is None else v) for k, v in r.items()}
    return (
        f"{r['server']:<10} {r['calls']:>5} {r.get('sent', 0):>8} {r.get('received', 0):>8} {r.get('lost', '-'):>6} "
        f"{r.get('duplicates', '-'):>4} {r.get('out_of_order', '-'):>4} {r.get('p50_ms', '-'):>7} "
        f"{r.get('p99_ms', '-'):>7} {r.get('max_ms', '-'):>7} {r.get('steady_cpu_pct', '-'):>6} "
        f"{r.get('cpu_us_per_frame', '-'):>8} {r.get('setup_cpu_ms_per_call', '-'):>8} "
        f"{r.get('rss_kb_per_call', '-'):>8} {r.get('loadgen_cpu_pct', '-'):>6}"
        + (
            f"  jitter p50/p99 {r.get('play_jitter_p50_ms')}/{r.get('play_jitter_p99_ms')} ms,"
            f" drift max {r.get('play_drift_max_ms')} ms, playback frames {r.get('play_frames')}"
            f" lost {r.get('play_lost')}"
            if "play_frames" in r
            else ""
        )
        + ("" if ok(r) else "  <- limit")
        + (f"  {r.get('errors')}" if r.get("error_count") else "")
    )


HEAD = (
    f"{'server':<10} {'calls':>5} {'sent':>8} {'recv':>8} {'lost':>6} {'dup':>4} {'ooo':>4} {'p50ms':>7} "
    f"{'p99ms':>7} {'maxms':>7} {'cpu%':>6} {'µs/frame':>8} {'setup ms':>8} {'KB/call':>8} {'load%':>6}"
)
LEGEND = (
    "# cpu% and µs/frame: the server's CPU over the steady window (every call up and sending) / frames relayed"
    " in it;\n# setup ms: the step's remaining CPU per call (set-up, hang-up, billing, callbacks); load%: the load"
    " generator's own core"
)


def ramp(
    name: str,
    urls: list[str],
    pids_of: Any,
    steps: list[int],
    seconds: float,
    auth: str,
    bidi: bool,
    drift: bool = False,
    noise: bool = False,
) -> tuple[int, dict[int, dict[str, Any]]]:
    capacity = 0
    results: dict[int, dict[str, Any]] = {}
    for calls in steps:
        result = measure(name, urls, pids_of, calls, seconds, auth, bidi, drift, noise)
        print(row(result), flush=True)
        if not ok(result) and "error" not in result:
            # one stall on a shared VM can fail a step the server carries: a limit is a step
            # that fails twice in a row (the same rule for the hub and the reference)
            result = measure(name, urls, pids_of, calls, seconds, auth, bidi, drift, noise)
            print(row(result) + "  (step run again)", flush=True)
        results[calls] = result
        if not ok(result):
            break
        capacity = calls
    return capacity, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["daphne", "uvicorn", "both"], default="both")
    parser.add_argument("--calls", default="100,200,300,400,500,600,700,800")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--bidi", action="store_true")
    parser.add_argument("--drift", action="store_true", help="with --bidi: one continuous clip per call")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument(
        "--noise-cancellation",
        action="store_true",
        help="every stream asks for noiseCancellation (level 85); the gateways send noisy speech; no reference run",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="hub processes sharing PostgreSQL and Redis; calls are spread over them like a least-connections proxy",
    )
    args = parser.parse_args()
    steps = [int(n) for n in args.calls.split(",")]
    data_dir = ROOT / "var" / "bench"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = env_for_hub(data_dir)
    auth = prepare_db(env)
    print(
        f"# streamhub bench {time.strftime('%Y-%m-%d %H:%M:%S')} · {os.cpu_count()} CPUs · "
        f"{args.seconds:.0f} s per step · servers on CPU {SERVER_CPU}, load on CPU {LOAD_CPU} · bidi={args.bidi}"
        + (" · noise cancellation on every stream" if args.noise_cancellation else "")
        + (f" · {args.processes} hub processes" if args.processes > 1 else "")
    )
    print(LEGEND)
    print(HEAD)
    logs = data_dir
    capacities: dict[str, int] = {}
    tables: dict[str, dict[int, dict[str, Any]]] = {}
    worker = start(
        pinned(
            LOAD_CPU,
            [PY, "-m", "celery", "-A", "streamhub", "worker", "--pool=threads", "-c", "4", "--loglevel=WARNING"],
        ),
        env,
        logs / "worker.log",
    )
    try:
        servers = ["daphne", "uvicorn"] if args.server == "both" else [args.server]
        for server in servers:
            ports = [free_port() for _ in range(args.processes)]
            commands = [pinned(SERVER_CPU, hub_command(server, port, python=PY, quiet=True)) for port in ports]
            procs = [start(cmd, env, logs / f"{server}-{i}.log") for i, cmd in enumerate(commands)]
            try:
                for port in ports:
                    wait_port(port)
                capacities[server], tables[server] = ramp(
                    server,
                    [f"ws://127.0.0.1:{port}/ingest/audio-fork" for port in ports],
                    lambda procs=procs: [pid for p in procs for pid in tree(p.pid)],
                    steps,
                    args.seconds,
                    auth,
                    args.bidi,
                    args.drift,
                    args.noise_cancellation,
                )
            finally:
                for proc in procs:
                    stop(proc)
        if not args.no_reference and not args.bidi and not args.noise_cancellation:
            port = free_port()
            proc = start(
                pinned(SERVER_CPU, [PY, str(ROOT / "bench" / "reference_relay.py"), str(port)]),
                env,
                logs / "reference.log",
            )
            try:
                wait_port(port)
                capacities["reference"], tables["reference"] = ramp(
                    "reference", [f"ws://127.0.0.1:{port}/"], lambda p=proc: [p.pid], steps, args.seconds, "", False
                )
            finally:
                stop(proc)
    finally:
        stop(worker)
    print(
        "# capacity (largest N with zero loss and p99 < 20 ms): " + ", ".join(f"{k} {v}" for k, v in capacities.items())
    )
    ref = capacities.get("reference")
    if not ref:
        return
    for name in ("daphne", "uvicorn"):
        if name not in capacities:
            continue
        print(f"# {name}/reference capacity ratio: {capacities[name] / ref:.2f}")
        both = [
            n
            for n in steps
            if (tables[name].get(n) or {}).get("cpu_us_per_frame")
            and (tables["reference"].get(n) or {}).get("cpu_us_per_frame")
            and ok(tables[name][n])
            and ok(tables["reference"][n])
        ]
        ratios = [tables[name][n]["cpu_us_per_frame"] / tables["reference"][n]["cpu_us_per_frame"] for n in both]
        if ratios:
            print(
                f"# {name}/reference CPU per relayed frame: "
                + ", ".join(f"{r:.2f} at {n}" for n, r in zip(both, ratios, strict=True))
                + f" (mean {sum(ratios) / len(ratios):.2f})"
            )


if __name__ == "__main__":
    main()
