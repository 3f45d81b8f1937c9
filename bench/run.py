"""One command: the hub as deployed vs the reference relay, ramping concurrent calls.

    .venv/bin/python bench/run.py [--server daphne|uvicorn|both|NAME[:N][@DIR],…] [--calls 100,200,…]
                                  [--seconds 10] [--bidi [--drift]] [--processes 2] [--tls]
                                  [--relays reference,picows | --no-reference] [--allow-noise]
                                  [--noise-cancellation] [--capacity N --overload K]
                                  [--gateway audio-fork|asterisk]

The hub runs with production settings (PostgreSQL + Redis from DATABASE_URL/REDIS_URL,
defaulting to the local servers, a Celery worker running) pinned to CPU 0 with taskset;
the load generator (bench/loadgen.py) is pinned to CPU 1, and the reference relay
(bench/reference_relay.py: plain asyncio + websockets, the hub's media template and pybase64)
and the ceiling (bench/picows_relay.py: the same relay on picows, both sides) are measured the
same way in the same run. Calls arrive at 50 a second; once all are up, the steady window begins. For each N it
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
--server takes NAME[:N][@DIR] entries: NAME is daphne, uvicorn (the production command) or
uvicorn-sansio (uvicorn's own websockets-sansio protocol, the command before the ingest
frame extension); uvicorn:N is N uvicorn worker processes on one port (`--workers N`, the
documented process-per-core deployment; each step then prints every worker's share of the CPU,
how evenly the port spread the calls); @DIR runs that hub from another checkout (e.g. `git
archive` of an older commit), so a change's before/after is one paired run.
--hub-cpus / --load-cpus: the taskset CPU lists of the servers (default 0) and of the load
generator and Celery worker (default 1); on a machine with cores to spare, `--server uvicorn:2
--hub-cpus 0,1 --load-cpus 2,3` measures two workers on two cores against `uvicorn --hub-cpus 0`.
--ab A,B: the variants (hubs, or the plain relays `reference` and `picows`) serve side by
side, call i going to variant i % k, all on CPU 0, so each one's CPU per frame is measured
over the same window under the same noise: the paired before/after of a change on a shared
machine.
--burst N (e.g. `--calls 200 --burst 100 --no-reference`): N more calls arrive within one
second, one second into the steady window, on top of the step's live calls; the step passes
when every burst call starts and the live calls lose nothing and keep p99 < 20 ms (µs/frame
then includes the burst's set-up).
Memory: KB/call is the RSS growth over a step; a step of 120 s or more (`--seconds 600`) also
prints the server's RSS one minute into the steady window against its end (growth at capacity).
--overload K --capacity N (e.g. `--server uvicorn --no-reference --capacity 600 --overload 2
--calls 600`): "offered K× capacity". The hub runs with STREAMHUB_MAX_CALLS=N (per hub process;
otherwise the bench gives it 5000) and each step offers K × its --calls calls, the generator
counting a clean refusal (HTTP 503 on the upgrade, or close 4503 before any media) as refused, not
as a failure (loadgen --expect-refusals). With --bidi, N is in weight units: ≈ N / 2.7
(STREAMHUB_BIDI_STREAM_WEIGHT) bidirectional calls fit. A step passes when the admitted calls lose
nothing and keep p99 < 20 ms, also from the first refusal to the steady window (refusals happen
while the calls arrive; with --bidi the playback targets too), every other offered call was refused
cleanly with a documented reason ("hub at capacity…" or "hub overloaded (event loop lagging)…"),
and the admitted calls are at least 90 % of what the capacity allows (N one-way calls, or
floor(N / 2.7) bidirectional ones, at most the offered calls) and no more than it. Each step prints
offered/admitted/refused (by code and reason) after its row; setup ms and KB/call are per offered
call. The plain relays have no admission: --overload refuses to run them (give --no-reference,
and hubs only in --server); --ab and --burst are not combined with it.
--gateway asterisk: the gateways speak Asterisk chan_websocket (/ingest/asterisk, the stream's
attributes as v() pairs on the URI, subprotocol `media`, MEDIA_START then slin frames) instead of
mod_audio_fork; the plain relays speak mod_audio_fork only, so give --no-reference.
--tls: the customers are wss:// (a throwaway CA made with openssl, given to the hub as
STREAMHUB_CUSTOMER_CA_BUNDLE and to the relays the same way).
The machine is shared: every step records the load average and the CPU used by processes
that are not the bench's (busy CPU from /proc/stat minus the server, the generator and the
worker); a step where that exceeds NOISE_CPU_PCT of a core, or the generator's own core is
over LOADGEN_MAX_PCT, is flagged, and the run exits with status 3 unless --allow-noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from streamhub.servers import hub_command  # noqa: E402

PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = "0", "1"  # taskset CPU lists (--hub-cpus, --load-cpus)


RSS_EVERY = 5.0  # seconds between RSS samples of the server during a step
NOISE_CPU_PCT = 30.0  # other processes' CPU during a step, % of one core, above which the step is noisy
LOADGEN_MAX_PCT = 85.0  # the generator's own core: above this it may be the limit, not the server


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def busy_seconds() -> float:
    """Busy CPU time of the whole machine (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / TICKS


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for localhost signed by it: (ca.pem, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, cert, key = directory / "ca.pem", directory / "srv.pem", directory / "srv.key"
    if cert.exists() and key.exists() and ca.exists() and time.time() - cert.stat().st_mtime < 86400:
        return ca, cert, key

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=streamhub bench CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "srv.key", "-out", "srv.csr")
    run(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "srv.pem",
    )
    return ca, cert, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpus: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else cmd


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


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
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
    extra: tuple[str, ...] = (),
    groups: list[list[int]] | None = None,
) -> dict[str, Any]:
    """One step. The load generator announces the steady window on stderr (every call up
    and sending); the server's CPU is read at both ends of it, so the per-frame figure is
    the relay's own cost and call set-up/hang-up is reported apart, per call."""
    pids = pids_of()
    groups = groups or [pids]
    group_cpu0 = [cpu_seconds(g) for g in groups]
    group_marks: dict[str, list[float]] = {}
    cpu0, wall0 = cpu_seconds(pids), time.monotonic()
    rss0 = rss_kb(pids)
    load_before = loadavg()
    busy0, bench0 = busy_seconds(), cpu_seconds(BENCH_PIDS)
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
        + (["--customer-tls", CUSTOMER_TLS] if CUSTOMER_TLS else [])
        + (["--burst", str(BURST)] if BURST else [])
        + (["--gateway", GATEWAY] if GATEWAY != "audio-fork" else [])
        + list(extra),
    )
    marks: dict[str, tuple[float, float]] = {}
    pid_marks: dict[str, dict[int, float]] = {}  # each server process's CPU at the marks (--workers split)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the server's RSS every RSS_EVERY s while the step runs (memory growth over a long step)
    trace: list[tuple[float, int]] = []
    stop_trace = threading.Event()

    def sample_rss() -> None:
        while not stop_trace.wait(RSS_EVERY):
            trace.append((time.monotonic() - wall0, rss_kb(pids_of())))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    assert proc.stderr is not None and proc.stdout is not None
    errors: list[str] = []
    for line in proc.stderr:  # read as it comes: the marks must be taken when they are printed
        if line.startswith("steady-"):
            marks[line.strip()] = (cpu_seconds(pids), time.monotonic())
            group_marks[line.strip()] = [cpu_seconds(g) for g in groups]
            pid_marks[line.strip()] = {pid: cpu_seconds([pid]) for pid in pids}
        else:
            errors.append(line)
    stdout = proc.stdout.read()
    proc.wait(timeout=(seconds + ramp_seconds(calls, bidi)) * 4 + 120)
    stop_trace.set()
    cpu1, wall1 = cpu_seconds(pids), time.monotonic()
    group_cpu1 = [cpu_seconds(g) for g in groups]
    lines = stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"error": "".join(errors)[-2000:]}
    rss1 = rss_kb(pids_of())
    cpu = cpu1 - cpu0
    # what else ran meanwhile: busy CPU of the machine minus the server, the generator and the worker
    foreign = (busy_seconds() - busy0) - cpu - (cpu_seconds(BENCH_PIDS) - bench0) - result.get("loadgen_cpu_s", 0.0)
    result["load_avg"] = f"{load_before} -> {loadavg()}"
    steady = [(t, kb) for t, kb in trace if "steady-start" in marks and t >= marks["steady-start"][1] - wall0]
    if len(steady) >= 2:  # RSS one minute into the steady window (or its first sample) vs its last
        first = next(((t, kb) for t, kb in steady if t >= steady[0][0] + 60), steady[0])
        result["rss_steady_mb"] = [round(first[1] / 1024, 1), round(steady[-1][1] / 1024, 1)]
        result["rss_steady_at_s"] = [round(first[0]), round(steady[-1][0])]
    result["other_cpu_pct"] = round(max(0.0, 100 * foreign / (wall1 - wall0)), 1)
    result["noisy"] = bool(
        result["other_cpu_pct"] > NOISE_CPU_PCT or result.get("loadgen_cpu_pct", 0) > LOADGEN_MAX_PCT
    )
    frames = result.get("received", 0) + (result.get("play_frames", 0) if bidi else 0)
    steady_us = None
    setup_ms = None
    if "steady-start" in marks and "steady-end" in marks and result.get("steady_frames"):
        (c0, w0), (c1, w1) = marks["steady-start"], marks["steady-end"]
        # relayed frames: media to the customers, and with --bidi playback to the gateways too
        steady_us = 1e6 * (c1 - c0) / (result["steady_frames"] + result.get("steady_play_frames", 0))
        result["steady_cpu_pct"] = round(100 * (c1 - c0) / (w1 - w0), 1)
        # each process's share of a core over the window (a hub with workers: how evenly the port spreads calls)
        result["process_cpu_pct"] = {
            pid: round(100 * (pid_marks["steady-end"][pid] - pid_marks["steady-start"][pid]) / (w1 - w0), 1)
            for pid in pids
            if pid in pid_marks["steady-start"] and pid in pid_marks["steady-end"]
        }
        # what the step cost beyond relaying its frames: call set-up, hang-up, billing, callbacks
        setup_ms = 1000 * max(0.0, cpu - steady_us * frames / 1e6) / calls
        if len(groups) > 1:  # --ab: call i went to group i % k, so each group relayed 1/k of the frames
            k = len(groups)
            steady_all = result["steady_frames"] + result.get("steady_play_frames", 0)
            result["ab"] = []
            for g in range(k):
                g_calls = len(range(g, calls, k))
                g_us = (
                    1e6
                    * (group_marks["steady-end"][g] - group_marks["steady-start"][g])
                    / (steady_all * g_calls / calls)
                )
                g_setup = (
                    1000 * max(0.0, (group_cpu1[g] - group_cpu0[g]) - g_us * frames * g_calls / calls / 1e6) / g_calls
                )
                result["ab"].append({"cpu_us_per_frame": round(g_us, 1), "setup_cpu_ms_per_call": round(g_setup, 1)})
    result.update(
        {
            "seconds_long": seconds >= 120,
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
        and result.get("burst_started", 0) == result.get("burst", 0)
        and result.get("live_lost", 0) == 0
        and overload_ok(result)
    )


def bidi_weight() -> float:
    """What a bidirectional call weighs against STREAMHUB_MAX_CALLS (the hub's default unless set)."""
    return float(os.environ.get("STREAMHUB_BIDI_STREAM_WEIGHT") or 2.7)


def capacity_allows(bidi: bool) -> int:
    """--overload: the calls the hub's capacity admits, over all its processes: N one-way calls
    per process, or floor(N / weight) bidirectional ones."""
    per_process = math.floor(CAPACITY / bidi_weight() + 1e-9) if bidi else CAPACITY
    return PROCESSES * per_process


def overload_ok(result: dict[str, Any]) -> bool:
    """--overload: every offered call admitted or refused cleanly with a documented reason; the
    admitted ones at least 90 % of what the capacity allows (and no more); the admitted calls'
    p99 < 20 ms also while the excess calls were being refused. True without --overload."""
    o = result.get("overload")
    if not o:
        return True
    admitted, refused = result.get("admitted", 0), result.get("refused", 0)
    return (
        result.get("offered") == o["offered"]
        and admitted + refused == o["offered"]
        and refused == result.get("refused_503", 0) + result.get("refused_4503", 0)
        and all(reason.startswith(CAPACITY_REASONS) for reason in result.get("refusal_reasons") or {})
        and 0.9 * o["expected"] <= admitted <= o["allowed"]
        and (result.get("refusing_p99_ms") or 0) < 20
    )


def overload_line(r: dict[str, Any]) -> str:
    """--overload: a step's offered/admitted/refused (by code and reason) and whether it passed."""
    o = r["overload"]
    reasons = ", ".join(f"{reason!r} {n}" for reason, n in (r.get("refusal_reasons") or {}).items())
    return (
        f"#   overload {r['server']} step {o['step']}: offered {o['offered']}, admitted {r.get('admitted', '-')}"
        f" (capacity {o['capacity']} allows {o['allowed']}, pass at >= {math.ceil(0.9 * o['expected'])}),"
        f" refused {r.get('refused', '-')} (503: {r.get('refused_503', '-')}, 4503: {r.get('refused_4503', '-')}"
        + (f"; {reasons}" if reasons else "")
        + f"), other errors {r.get('error_count', '-')}, lost {r.get('lost', '-')}, p99 {r.get('p99_ms', '-')} ms"
        + (
            f" (while refusing {r['refusing_p99_ms']} ms over {r.get('refusing_frames')} frames)"
            if r.get("refusing_p99_ms") is not None
            else " (no frames sent while refusing)"
        )
        + ": "
        + ("PASS" if ok(r) else "FAIL")
    )


def measure_step(
    name: str,
    urls: list[str],
    pids_of: Any,
    calls: int,
    seconds: float,
    auth: str,
    bidi: bool,
    drift: bool = False,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One step of a ramp: `calls` calls, or with --overload K × calls offered to the hub's capacity."""
    if not OVERLOAD:
        return measure(name, urls, pids_of, calls, seconds, auth, bidi, drift, extra)
    offered = round(OVERLOAD * calls)
    result = measure(name, urls, pids_of, offered, seconds, auth, bidi, drift, (*extra, "--expect-refusals"))
    allowed = capacity_allows(bidi)
    result["overload"] = {
        "step": calls,
        "offered": offered,
        "capacity": CAPACITY,
        "allowed": allowed,
        "expected": min(offered, allowed),
    }
    return result


def row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['server']:<10} load generator failed: {r['error']}"
    passed = ok(r)  # on the figures, before None is shown as "-"
    r = {k: ("-" if v is None else v) for k, v in r.items()}
    return (
        f"{r['server']:<10} {r['calls']:>5} {r.get('sent', 0):>8} {r.get('received', 0):>8} {r.get('lost', '-'):>6} "
        f"{r.get('duplicates', '-'):>4} {r.get('out_of_order', '-'):>4} {r.get('p50_ms', '-'):>7} "
        f"{r.get('p99_ms', '-'):>7} {r.get('max_ms', '-'):>7} {r.get('steady_cpu_pct', '-'):>6} "
        f"{r.get('cpu_us_per_frame', '-'):>8} {r.get('setup_cpu_ms_per_call', '-'):>8} "
        f"{r.get('rss_kb_per_call', '-'):>8} {r.get('loadgen_cpu_pct', '-'):>6} {r.get('other_cpu_pct', '-'):>6}"
        + (
            f"  jitter p50/p99 {r.get('play_jitter_p50_ms')}/{r.get('play_jitter_p99_ms')} ms,"
            f" drift max {r.get('play_drift_max_ms')} ms, playback frames {r.get('play_frames')}"
            f" lost {r.get('play_lost')}"
            if "play_frames" in r
            else ""
        )
        + (
            f"  burst: {r.get('burst_started')}/{r.get('burst')} started, set-up p50/p99"
            f" {r.get('burst_setup_p50_ms')}/{r.get('burst_setup_p99_ms')} ms, live calls lost {r.get('live_lost')}"
            if "burst" in r
            else ""
        )
        + ("" if passed else "  <- limit")
        + (f"  NOISY (load {r.get('load_avg')})" if r.get("noisy") is True else "")
        + (
            f"  RSS {r['rss_steady_mb'][0]} MB at {r['rss_steady_at_s'][0]} s -> {r['rss_steady_mb'][1]} MB"
            f" at {r['rss_steady_at_s'][1]} s"
            if "rss_steady_mb" in r and r.get("seconds_long")
            else ""
        )
        + (f"  {r.get('errors')}" if r.get("error_count") else "")
    )


HEAD = (
    f"{'server':<10} {'calls':>5} {'sent':>8} {'recv':>8} {'lost':>6} {'dup':>4} {'ooo':>4} {'p50ms':>7} "
    f"{'p99ms':>7} {'maxms':>7} {'cpu%':>6} {'µs/frame':>8} {'setup ms':>8} {'KB/call':>8} {'load%':>6} {'other%':>6}"
)
LEGEND = (
    "# cpu% and µs/frame: the server's CPU over the steady window (every call up and sending) / frames relayed"
    " in it;\n# setup ms: the step's remaining CPU per call (set-up, hang-up, billing, callbacks); load%: the load"
    " generator's own core;\n# other%: CPU of processes outside the bench during the step (% of a core): a step over "
    f"{NOISE_CPU_PCT:.0f} % is NOISY"
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
    extra: tuple[str, ...] = (),
) -> tuple[int, dict[int, dict[str, Any]]]:
    capacity = 0
    results: dict[int, dict[str, Any]] = {}
    for calls in steps:
        result = measure_step(name, urls, pids_of, calls, seconds, auth, bidi, drift, extra)
        print(row(result), flush=True)
        if process_split(result):
            print(process_split(result), flush=True)
        if "overload" in result:
            print(overload_line(result), flush=True)
        if not ok(result) and "error" not in result:
            # one stall on a shared VM can fail a step the server carries: a limit is a step
            # that fails twice in a row (the same rule for the hub and the reference)
            result = measure_step(name, urls, pids_of, calls, seconds, auth, bidi, drift, extra)
            print(row(result) + "  (step run again)", flush=True)
            if process_split(result):
                print(process_split(result), flush=True)
            if "overload" in result:
                print(overload_line(result), flush=True)
        results[calls] = result
        if not ok(result):
            break
        capacity = calls
    return capacity, results


BENCH_PIDS: list[int] = []  # the Celery worker's processes (for the noise check)
CUSTOMER_TLS = ""  # "cert,key" with --tls: the load generator's customers serve wss://
BURST = 0  # --burst N
GATEWAY = "audio-fork"  # --gateway: the framing the load generator's gateways speak
OVERLOAD = 0.0  # --overload K: each step offers K × its calls
CAPACITY = 0  # --capacity N: the hub's STREAMHUB_MAX_CALLS with --overload
PROCESSES = 1  # --processes: each hub process admits up to CAPACITY
# the refusals the hub documents for a full or lagging process (streams/live/ingest.py, bench/RESULTS.md)
CAPACITY_REASONS = ("hub at capacity", "hub overloaded (event loop lagging)")
RELAYS = {"reference": "reference_relay.py", "picows": "picows_relay.py"}


def hub_variant(spec: str, port: int) -> tuple[list[str], Path]:
    """NAME[:N][@DIR]: the hub's command line and the checkout it runs from; `uvicorn:N` is N uvicorn
    worker processes on the one port (`--workers N`, the documented one-process-per-core deployment)."""
    name, _, tree = spec.partition("@")
    name, _, workers = name.partition(":")
    root = Path(tree).resolve() if tree else ROOT
    if workers and (name != "uvicorn" or not workers.isdigit() or int(workers) < 1):
        raise SystemExit(f"{spec}: NAME:N takes uvicorn and a number of worker processes, e.g. uvicorn:2")
    if name in RELAYS:  # a plain relay side by side with hubs (--ab)
        return [PY, str(root / "bench" / RELAYS[name]), str(port)], root
    if name == "uvicorn-sansio":  # uvicorn's own protocol, no ingest frame extension
        cmd = hub_command("uvicorn", port, python=PY, quiet=True, ws="websockets-sansio")
    else:
        cmd = hub_command(name, port, python=PY, quiet=True, workers=int(workers or 1))
    return cmd, root


def process_split(r: dict[str, Any], name: str = "", pids: list[int] | None = None) -> str:
    """The server processes' shares of a core over the steady window, when more than one did the work
    (uvicorn:N): how evenly one port spread the calls over its workers. `pids`: one --ab variant's."""
    shares = r.get("process_cpu_pct") or {}
    busy = sorted((pct for pid, pct in shares.items() if pct >= 1.0 and (pids is None or pid in pids)), reverse=True)
    if len(busy) < 2:
        return ""
    return f"#   {name or r['server']} per process (% of a core over the steady window): " + ", ".join(map(str, busy))


def wait_processes(proc: subprocess.Popen[bytes], spec: str) -> None:
    """uvicorn:N binds its port before it spawns its workers: wait until all N exist, so that the
    first step's CPU is read from every one of them."""
    workers = int(spec.partition("@")[0].partition(":")[2] or 1)
    deadline = time.monotonic() + 30
    while workers > 1 and len(tree(proc.pid)) < workers + 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{spec}: {workers} worker processes did not start")
        time.sleep(0.1)


def ratios(tables: dict[str, dict[int, dict[str, Any]]], steps: list[int], name: str, base: str) -> None:
    both = [
        n
        for n in steps
        if (tables[name].get(n) or {}).get("cpu_us_per_frame")
        and (tables[base].get(n) or {}).get("cpu_us_per_frame")
        and ok(tables[name][n])
        and ok(tables[base][n])
    ]
    values = [tables[name][n]["cpu_us_per_frame"] / tables[base][n]["cpu_us_per_frame"] for n in both]
    if values:
        print(
            f"# {name}/{base} CPU per relayed frame: "
            + ", ".join(f"{r:.2f} at {n}" for n, r in zip(both, values, strict=True))
            + f" (mean {sum(values) / len(values):.2f})"
        )


def ab_run(
    specs: list[str],
    steps: list[int],
    seconds: float,
    auth: str,
    bidi: bool,
    drift: bool,
    logs: Path,
    env: dict[str, str],
) -> None:
    """--ab A,B[,…]: the variants serve side by side, each taking every k-th call of the same load
    generator, at the same moments: a paired comparison that a shared machine's noise hits alike."""
    ports = [free_port() for _ in specs]
    variants = [hub_variant(spec, port) for spec, port in zip(specs, ports, strict=True)]
    procs = [
        start(pinned(SERVER_CPU, cmd), env, logs / f"ab-{i}.log", cwd=root) for i, (cmd, root) in enumerate(variants)
    ]
    try:
        for port, proc, spec in zip(ports, procs, specs, strict=True):
            wait_port(port)
            wait_processes(proc, spec)
        urls = [f"ws://127.0.0.1:{port}/ingest/{GATEWAY}" for port in ports]
        for calls in steps:
            groups = [tree(p.pid) for p in procs]
            result = measure(
                "+".join(specs),
                urls,
                lambda groups=groups: [pid for g in groups for pid in g],
                calls,
                seconds,
                auth,
                bidi,
                drift,
                groups=groups,
            )
            print(row(result) + "  (all variants)", flush=True)
            for spec, figures in zip(specs, result.get("ab") or [], strict=False):
                us, setup = figures["cpu_us_per_frame"], figures["setup_cpu_ms_per_call"]
                print(f"#   {spec}: {us} µs/frame, set-up {setup} ms/call", flush=True)
            for spec, group in zip(specs, groups, strict=True):
                if process_split(result, spec, group):
                    print(process_split(result, spec, group), flush=True)
            ab = result.get("ab") or []
            if len(ab) > 1 and ab[0]["cpu_us_per_frame"]:
                print(
                    "#   paired ratio vs "
                    + specs[0]
                    + ": "
                    + ", ".join(
                        f"{spec} {figures['cpu_us_per_frame'] / ab[0]['cpu_us_per_frame']:.2f}"
                        for spec, figures in zip(specs[1:], ab[1:], strict=False)
                    ),
                    flush=True,
                )
    finally:
        for proc in procs:
            stop(proc)


def main() -> None:
    global CUSTOMER_TLS, BURST, GATEWAY, OVERLOAD, CAPACITY, PROCESSES, SERVER_CPU, LOAD_CPU
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="both", help="daphne, uvicorn, both, or NAME[@DIR],… (see above)")
    parser.add_argument("--calls", default="100,200,300,400,500,600,700,800")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--bidi", action="store_true")
    parser.add_argument("--drift", action="store_true", help="with --bidi: one continuous clip per call")
    parser.add_argument("--relays", default="reference,picows", help="plain relays measured after the hub")
    parser.add_argument("--no-reference", action="store_true", help="no plain relays")
    parser.add_argument("--tls", action="store_true", help="wss:// customers")
    parser.add_argument(
        "--burst",
        type=int,
        default=0,
        help="N more calls arrive within 1 s on top of each step's live calls (p99 and loss: the live calls)",
    )
    parser.add_argument("--allow-noise", action="store_true", help="exit 0 even when steps were NOISY")
    parser.add_argument(
        "--ab", default="", help="NAME[@DIR],NAME[@DIR],…: variants side by side under one load (paired comparison)"
    )
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
    parser.add_argument(
        "--overload",
        type=float,
        default=0,
        help="K: each step offers K × its calls to a hub admitting --capacity; clean refusals are counted, not failed",
    )
    parser.add_argument(
        "--capacity",
        type=int,
        default=0,
        help="with --overload: the hub's STREAMHUB_MAX_CALLS (per process; weight units with --bidi)",
    )
    parser.add_argument(
        "--hub-cpus",
        default=SERVER_CPU,
        help="taskset CPU list for the servers (default 0), e.g. 0,1 for uvicorn:2 on a machine with cores to spare",
    )
    parser.add_argument(
        "--load-cpus", default=LOAD_CPU, help="taskset CPU list for the load generator and Celery worker (default 1)"
    )
    parser.add_argument(
        "--gateway",
        choices=("audio-fork", "asterisk"),
        default="audio-fork",
        help="the gateways' framing: mod_audio_fork, or Asterisk chan_websocket (hubs only: give --no-reference)",
    )
    args = parser.parse_args()
    steps = [int(n) for n in args.calls.split(",")]
    BURST, GATEWAY = args.burst, args.gateway
    SERVER_CPU, LOAD_CPU = args.hub_cpus, args.load_cpus
    servers = ["daphne", "uvicorn"] if args.server == "both" else args.server.split(",")
    # the plain relays have no suppressor: with --noise-cancellation, compare with a run of the hub without it
    no_relays = args.no_reference or args.bidi or args.noise_cancellation
    relays = [] if no_relays else [r for r in args.relays.split(",") if r]
    named = [*servers, *args.ab.split(",")]
    if GATEWAY != "audio-fork" and (relays or any(name.partition("@")[0] in RELAYS for name in named)):
        parser.error(
            "--gateway asterisk: the plain relays (reference, picows) speak mod_audio_fork only; give --no-reference"
        )
    if args.capacity and not args.overload:
        parser.error("--capacity is the hub's capacity for --overload K: give both")
    if args.overload:
        if args.overload <= 0 or args.capacity <= 0:
            parser.error("--overload K needs K > 0 and --capacity N (the hub's STREAMHUB_MAX_CALLS), N > 0")
        if relays or any(s.partition("@")[0] in RELAYS for s in servers):
            parser.error(
                "--overload: the plain relays (reference, picows) have no admission control and refuse no call;"
                " give --no-reference and hubs only in --server"
            )
        if args.ab or args.burst:
            parser.error("--overload is not combined with --ab or --burst")
        OVERLOAD, CAPACITY, PROCESSES = args.overload, args.capacity, args.processes
    data_dir = ROOT / "var" / "bench"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = env_for_hub(data_dir)
    if OVERLOAD:
        env["STREAMHUB_MAX_CALLS"] = str(CAPACITY)
    if args.tls:
        ca, cert, key = make_tls(data_dir / "tls")
        env["STREAMHUB_CUSTOMER_CA_BUNDLE"] = str(ca)
        CUSTOMER_TLS = f"{cert},{key}"
    auth = prepare_db(env)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(
        f"# streamhub bench {time.strftime('%Y-%m-%d %H:%M:%S')} · {os.cpu_count()} CPUs · "
        f"{args.seconds:.0f} s per step · servers on CPU {SERVER_CPU}, load on CPU {LOAD_CPU} · bidi={args.bidi}"
        + (" · wss:// customers" if args.tls else "")
        + (" · noise cancellation on every stream" if args.noise_cancellation else "")
        + (f" · {GATEWAY} gateways" if GATEWAY != "audio-fork" else "")
        + (f" · {args.processes} hub processes" if args.processes > 1 else "")
        + (
            f" · overload: {OVERLOAD:g}× each step's calls offered to STREAMHUB_MAX_CALLS={CAPACITY}"
            + (" per process" if PROCESSES > 1 else "")
            if OVERLOAD
            else ""
        )
    )
    if OVERLOAD:
        if args.bidi:
            w = bidi_weight()
            print(
                f"# capacity {CAPACITY} is in weight units: a bidirectional call weighs {w:g}, so ≈ {CAPACITY / w:.1f}"
                f" bidirectional calls fit per process ({capacity_allows(True)} in all); each step passes with"
                " >= 90 % of them admitted"
            )
        else:
            print(
                f"# capacity: {capacity_allows(False)} one-way calls in all; each step passes with >= 90 % of them"
                " (or of the offered calls, when fewer) admitted"
            )
        print("# calls = offered calls; setup ms and KB/call are per offered call")
    print(f"# uptime: {uptime}")
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
    BENCH_PIDS[:] = tree(worker.pid)
    try:
        if args.ab:
            ab_run(args.ab.split(","), steps, args.seconds, auth, args.bidi, args.drift, logs, env)
            return
        for server in servers:
            ports = [free_port() for _ in range(args.processes)]
            variants = [hub_variant(server, port) for port in ports]
            procs = [
                start(pinned(SERVER_CPU, cmd), env, logs / f"{server.replace('/', '_')}-{i}.log", cwd=root)
                for i, (cmd, root) in enumerate(variants)
            ]
            try:
                for port, proc in zip(ports, procs, strict=True):
                    wait_port(port)
                    wait_processes(proc, server)
                capacities[server], tables[server] = ramp(
                    server,
                    [f"ws://127.0.0.1:{port}/ingest/{GATEWAY}" for port in ports],
                    lambda procs=procs: [pid for p in procs for pid in tree(p.pid)],
                    steps,
                    args.seconds,
                    auth,
                    args.bidi,
                    args.drift,
                    ("--noise-cancellation",) if args.noise_cancellation else (),
                )
            finally:
                for proc in procs:
                    stop(proc)
        for relay in relays:
            port = free_port()
            proc = start(
                pinned(SERVER_CPU, [PY, str(ROOT / "bench" / RELAYS[relay]), str(port)]), env, logs / f"{relay}.log"
            )
            try:
                wait_port(port)
                capacities[relay], tables[relay] = ramp(
                    relay, [f"ws://127.0.0.1:{port}/"], lambda p=proc: [p.pid], steps, args.seconds, "", False
                )
            finally:
                stop(proc)
    finally:
        stop(worker)
    print(f"# uptime at the end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    if OVERLOAD:
        print(
            f"# overload {OVERLOAD:g}× (largest step whose offered calls were admitted up to capacity {CAPACITY} or"
            " refused cleanly, the admitted ones with zero loss and p99 < 20 ms): "
            + ", ".join(f"{k} {v}" for k, v in capacities.items())
        )
    else:
        print(
            "# capacity (largest N with zero loss and p99 < 20 ms): "
            + ", ".join(f"{k} {v}" for k, v in capacities.items())
        )
    hubs = [name for name in tables if name not in RELAYS]
    for base in [r for r in RELAYS if capacities.get(r)]:
        for name in hubs:
            print(f"# {name}/{base} capacity ratio: {capacities[name] / capacities[base]:.2f}")
            ratios(tables, steps, name, base)
    for i, name in enumerate(hubs):
        for other in hubs[i + 1 :]:
            ratios(tables, steps, name, other)
    noisy = [f"{r['server']} {r['calls']}" for t in tables.values() for r in t.values() if r.get("noisy")]
    if noisy:
        print(
            f"# NOISY: {', '.join(noisy)}: other processes used over {NOISE_CPU_PCT:.0f} % of a core, or the load "
            f"generator over {LOADGEN_MAX_PCT:.0f} % of its own; these figures do not measure the server alone",
            file=sys.stderr,
        )
        if not args.allow_noise:
            sys.exit(3)


if __name__ == "__main__":
    main()
