"""bench/churn.py (set-up and hang-up with no audio) really sets calls up and hangs them up.

Not a timing test: it checks that each churned call reached its customer (`start`) and was
ended by the hub, so the CPU the bench divides by the calls is theirs.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from streams.models import Account, Stream
from tests.bench.test_loadgen import reference  # noqa: F401  (fixture)
from tests.conftest import ROOT, Proc
from tests.support import db, eventually

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def run_churn(url: str, auth: str, calls: int, background: int = 0) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "churn.py"),
            "--child",
            f"{url},{auth}",
            "--calls",
            str(calls),
            "--background",
            str(background),
        ],
        input="go\nend\n",  # the parent's two lines: churn now (the background calls are up), then end them
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT / "bench",
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def test_each_churned_call_is_set_up_and_ended_by_the_hub(hub: Proc, account: Account) -> None:
    auth = f"{account.auth_id}:{account.auth_token}"
    result = await asyncio.to_thread(run_churn, f"{hub.ws}/ingest/audio-fork", auth, 6, 2)
    assert result["failed"] == 0 and result["done"] == 6, result["errors"]  # the 2 background calls apart
    assert 0 < result["setup_p50_ms"] <= result["setup_p99_ms"]

    def ended() -> list[str]:
        return list(
            Stream.objects.filter(account=account, end_time__isnull=False).values_list("hangup_reason", flat=True)
        )

    await eventually(db(lambda: len(ended()) == 6 + 2))
    assert set(await db(ended)()) == {Stream.Reason.CALL_HANGUP}

    refused = await asyncio.to_thread(run_churn, f"{hub.ws}/ingest/audio-fork", f"{account.auth_id}:wrong", 2)
    assert refused["done"] == 0 and refused["failed"] == 2


def test_the_reference_relay_churns_the_same_calls(reference: str) -> None:  # noqa: F811
    result = run_churn(reference.rstrip("/") + "/ingest/audio-fork", "", 4)
    assert result["failed"] == 0 and result["done"] == 4, result["errors"]
