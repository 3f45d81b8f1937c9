"""The benchmark's own tools stay honest: the load generator against the reference relay and a hub.

Not a timing test: it checks that bench/loadgen.py sends, receives and decodes every frame,
checks the messages it samples, announces its steady window, and counts playback frames.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from streams.models import Account, Call, Stream, StreamEvent
from tests.conftest import ROOT, Proc, free_port
from tests.support import db, eventually

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LOADGEN = ROOT / "bench" / "loadgen.py"


def run_loadgen(*args: str) -> tuple[dict[str, Any], str]:
    out = subprocess.run([sys.executable, str(LOADGEN), *args], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.fixture
def reference(tmp_path: Path) -> Any:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "reference_relay.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"ws://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(10)


def test_every_frame_is_relayed_decoded_and_checked_through_the_reference(reference: str) -> None:
    result, stderr = run_loadgen("--url", reference, "--calls", "5", "--seconds", "4", "--ramp-seconds", "0.5")
    assert result["connected"] == 5 and result["error_count"] == 0
    assert result["sent"] == 5 * 4 * 50 and result["received"] == result["sent"] and result["lost"] == 0
    assert result["duplicates"] == 0 and result["out_of_order"] == 0 and result["invalid"] == 0
    assert stderr.splitlines()[:2] == ["steady-start", "steady-end"]
    assert 0 < result["steady_frames"] < result["received"]
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"] < 1000


async def test_against_a_hub_with_playback_and_wrong_credentials(hub: Proc, account: Account) -> None:
    url = f"{hub.ws}/ingest/audio-fork"
    auth = f"{account.auth_id}:{account.auth_token}"
    result, _ = await asyncio.to_thread(
        run_loadgen, "--url", url, "--auth", auth, "--calls", "3", "--seconds", "5", "--bidi", "--drift"
    )
    assert result["connected"] == 3 and result["lost"] == 0 and result["invalid"] == 0
    assert result["play_lost"] == 0 and result["play_frames"] > 3 * 100  # a 3 s clip per call, every frame heard
    assert result["play_jitter_p99_ms"] < 20
    await eventually(db(lambda: Stream.objects.filter(account=account, end_time__isnull=False).count() == 3))

    refused, _ = await asyncio.to_thread(
        run_loadgen, "--url", url, "--auth", f"{account.auth_id}:wrong", "--calls", "2", "--seconds", "1"
    )
    assert refused["error_count"] == 2 and "403" in refused["errors"][0]


async def test_asterisk_gateways_relay_every_frame_and_hear_every_played_frame_through_a_hub(
    hub: Proc, account: Account
) -> None:
    """--gateway asterisk: chan_websocket's framing against /ingest/asterisk; the silence the hub
    sends while a call connects ahead of its audio is counted apart, not as lost or invalid."""
    url = f"{hub.ws}/ingest/asterisk"
    auth = f"{account.auth_id}:{account.auth_token}"
    result, _ = await asyncio.to_thread(
        run_loadgen, "--url", url, "--auth", auth, "--calls", "3", "--seconds", "5", "--bidi", "--drift",
        "--gateway", "asterisk",
    )  # fmt: skip
    assert result["connected"] == 3 and result["error_count"] == 0
    assert result["sent"] == 3 * 5 * 50 and result["received"] == result["sent"] and result["lost"] == 0
    assert result["duplicates"] == 0 and result["out_of_order"] == 0 and result["invalid"] == 0
    assert result["silence_frames"] > 0  # the second each call connects ahead of its audio clock
    assert result["play_lost"] == 0 and result["play_frames"] > 3 * 100
    calls = await db(lambda: list(Call.objects.filter(account=account).values_list("gateway", flat=True)))()
    assert calls == ["asterisk"] * 3


async def test_noise_cancellation_mode_counts_frames_by_chunk_through_a_hub(hub: Proc, account: Account) -> None:
    url = f"{hub.ws}/ingest/audio-fork"
    auth = f"{account.auth_id}:{account.auth_token}"
    result, _ = await asyncio.to_thread(
        run_loadgen, "--url", url, "--auth", auth, "--calls", "3", "--seconds", "4", "--noise-cancellation"
    )
    assert result["connected"] == 3 and result["error_count"] == 0
    assert result["sent"] == 3 * 4 * 50 and result["received"] == result["sent"] and result["lost"] == 0
    assert result["duplicates"] == 0 and result["out_of_order"] == 0 and result["invalid"] == 0
    # each stream's flushed suppressor tail is counted apart, not as a frame; it may land after the
    # generator has stopped reading (it hangs up and exits without waiting for the streams' ends)
    assert result["tail_frames"] <= 3
    assert result["steady_frames"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"] < 1000

    def suppressed_streams() -> int:
        return StreamEvent.objects.filter(stream__account=account, event="NoiseCancellationSummary").count()

    await eventually(db(lambda: suppressed_streams() == 3))


async def test_expect_refusals_counts_the_calls_a_full_hub_refuses_apart_from_the_admitted_ones(
    hub_factory: Any, account: Account
) -> None:
    """bench/run.py --overload's generator: 6 one-way calls offered to a uvicorn hub that admits 3.
    The 3 refused get HTTP 503 with the capacity reason and are not errors; the 3 admitted lose
    nothing, and loss and latency count them only. Then the two-step refusal: a bidirectional call
    (weight 2 here) whose upgrade fits but whose metadata does not is closed with 4503."""
    hub: Proc = hub_factory(server="uvicorn", STREAMHUB_MAX_CALLS="3", STREAMHUB_BIDI_STREAM_WEIGHT="2")
    url, auth = f"{hub.ws}/ingest/audio-fork", f"{account.auth_id}:{account.auth_token}"

    async def loadgen(*args: str) -> tuple[dict[str, Any], str]:
        def idle() -> bool:  # the previous run's calls have left: the whole capacity is free
            return bool(requests.get(f"{hub.http}/readyz", timeout=5).json()["weight"] == 0)

        await eventually(lambda: asyncio.to_thread(idle))
        return await asyncio.to_thread(run_loadgen, "--url", url, "--auth", auth, "--ramp-seconds", "0.5", *args)

    result, stderr = await loadgen("--calls", "6", "--seconds", "2", "--expect-refusals")
    assert result["error_count"] == 0, result["errors"]
    assert result["offered"] == 6 and result["admitted"] == 3 and result["connected"] == 3
    assert result["refused"] == 3 and result["refused_503"] == 3 and result["refused_4503"] == 0
    [(reason, n)] = result["refusal_reasons"].items()
    assert n == 3 and reason.startswith("hub at capacity")
    assert result["sent"] == 3 * 2 * 50 and result["received"] == result["sent"] and result["lost"] == 0
    assert result["duplicates"] == 0 and result["out_of_order"] == 0 and result["invalid"] == 0
    assert stderr.splitlines()[:2] == ["steady-start", "steady-end"] and result["steady_frames"] > 0
    assert result["refusing_frames"] > 0 and result["refusing_p99_ms"] is not None

    # without the flag a refusal is a failure, as before
    plain, _ = await loadgen("--calls", "4", "--seconds", "1")
    assert "refused" not in plain and plain["connected"] == 3 and plain["error_count"] == 1
    assert "503" in plain["errors"][0]

    # the first call weighs 2; the second one's upgrade (2 + 1) fits, its metadata (2 + 2) does not: 4503
    bidi, _ = await loadgen("--calls", "2", "--seconds", "2", "--bidi", "--expect-refusals")
    assert bidi["error_count"] == 0, bidi["errors"]
    assert bidi["admitted"] == 1 and bidi["refused"] == 1 and bidi["refused_4503"] == 1
    assert list(bidi["refusal_reasons"]) == ["hub at capacity for this call's streams: try another hub process"]
    assert bidi["sent"] == 2 * 50 and bidi["lost"] == 0 and bidi["play_frames"] > 0
