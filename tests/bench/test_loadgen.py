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

from streams.models import Account, Stream, StreamEvent
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
