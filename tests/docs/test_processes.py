"""The README's Celery commands, run exactly as written: the worker is a pool of 8 threads
without any option saying so (settings CELERY_WORKER_POOL / CELERY_WORKER_CONCURRENCY), and
the beat starts on its own.

Each runs against its own data dir and the embedded filesystem broker, so the beat's sweeps
cannot reach another test's worker.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import Proc, _spawn, server_env
from tests.docs.pages import ROOT, documented_commands

pytestmark = [pytest.mark.slow]


def readme_celery(sub: str) -> list[str]:
    found = [
        c
        for c in documented_commands()
        if c.where.startswith("README.md") and c.program.endswith(".venv/bin/celery") and sub in c.words
    ]
    assert len(found) == 1, f"the README shows one `celery … {sub}` command, not {len(found)}"
    return [str(ROOT / found[0].words[0]), *found[0].words[1:]]


def run_until(proc: Proc, line: str, seconds: float = 90) -> str:
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            log = proc.log()
            if line in log:
                return log
            if proc.popen.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        proc.stop()
    raise AssertionError(f"no {line!r} from {proc.name}:\n{proc.log()[-3000:]}")


def isolated_env(tmp_path: Path) -> dict[str, str]:
    env = server_env(STREAMHUB_DATA_DIR=str(tmp_path / "data"), REDIS_URL="")
    env.pop("REDIS_URL")
    return env


@pytest.mark.django_db(transaction=True)
def test_the_documented_worker_runs_eight_threads_by_default(tmp_path: Path) -> None:
    argv = readme_celery("worker")
    assert not any(w.startswith(("--pool", "-P", "--concurrency", "-c")) for w in argv), argv
    log = run_until(_spawn("worker", argv, isolated_env(tmp_path), tmp_path), " ready.")
    assert "concurrency: 8 (thread)" in log, log[-3000:]


@pytest.mark.django_db(transaction=True)
def test_the_documented_beat_starts(tmp_path: Path) -> None:
    argv = readme_celery("beat")
    log = run_until(_spawn("beat", argv, isolated_env(tmp_path), tmp_path), "beat: Starting...")
    assert "ERROR" not in log, log[-3000:]
