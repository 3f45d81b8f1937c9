"""Shared test infrastructure: named actors, a real hub server, a real Celery worker,
and a real customer WebSocket server on 127.0.0.1.

Servers run as subprocesses against the test database (so tests that use them need
`django_db(transaction=True)`: rows must be committed to be seen), with the same
DATABASE_URL / REDIS_URL switch as production.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.db import connection

from streamhub.servers import APPLICATION, SERVERS, hub_command
from streams.models import Account

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


UNTHROTTLED = "1000000/min"


@pytest.fixture(autouse=True)
def _unthrottled(settings: Any) -> None:
    """In-process tests all come from 127.0.0.1 too; throttling tests lower the rate themselves."""
    settings.STREAMHUB_AUTH_FAILURE_RATE = UNTHROTTLED


@pytest.fixture(autouse=True)
def _no_lag_guard() -> Iterator[None]:
    """The in-process loop-lag guard off too (see server_env); a test that wants it sets max_lag."""
    from streams.live.admission import admission

    admission.max_lag, admission.lagging = 0.0, False
    yield
    admission.max_lag, admission.lagging = 0.0, False


@pytest.fixture
def account(db: None) -> Account:
    return Account.objects.create(name="Acme")


@pytest.fixture
def other_account(db: None) -> Account:
    return Account.objects.create(name="Other Corp")


def test_database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def server_env(**overrides: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        {
            "DATABASE_URL": test_database_url(),
            "STREAMHUB_DATA_DIR": str(settings.DATA_DIR),
            "DJANGO_SECRET_KEY": "test-secret-key-not-for-production",
            "PYTHONUNBUFFERED": "1",
            "STREAMHUB_CONNECT_RETRY_DELAY": "0.05",
            "STREAMHUB_CONNECT_TIMEOUT": "2",
            # Every test connects from 127.0.0.1, and with Redis the hubs share the counter: the
            # tests of failed-auth throttling set their own rate and client addresses.
            "STREAMHUB_AUTH_FAILURE_RATE": UNTHROTTLED,
            # The loop-lag guard refuses calls while a hub's loop lags 50 ms: on two cores shared by
            # two pytest workers, their hubs, workers and customers, a hub is starved of CPU at times
            # and would refuse a test's call. Off here; its own tests turn it on.
            "STREAMHUB_ADMIT_MAX_LOOP_LAG_SECONDS": "0",
        }
    )
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def _spawn(name: str, cmd: list[str], env: dict[str, str], tmp: Path) -> Proc:
    log_path = tmp / f"{name}.log"
    fh = log_path.open("wb")
    popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name=name, popen=popen, log_path=log_path)


def start_hub(tmp: Path, name: str = "hub", *, server: str = "daphne", **overrides: Any) -> Proc:
    port = free_port()
    cmd = hub_command(server, port, application=overrides.pop("application", APPLICATION))
    proc = _spawn(name, cmd, server_env(**{"STREAMHUB_SERVER_ID": f"{name}-{port}", **overrides}), tmp)
    proc.port = port
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"hub exited early:\n{proc.log()}")
        try:
            if requests.get(f"{proc.http}/healthz", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"hub did not answer /healthz in 30 s:\n{proc.log()}")


def start_worker(
    tmp: Path, name: str = "worker", *, beat: bool = False, pool: str = "threads", **overrides: Any
) -> Proc:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "streamhub",
        "worker",
        f"--pool={pool}",
        "--concurrency=8" if pool == "threads" else "--concurrency=2",
        "--loglevel=INFO",
        f"--hostname={name}-{os.getpid()}-{time.monotonic_ns()}@localhost",
    ]
    if beat:
        cmd += ["--beat", "--schedule", str(tmp / f"{name}-beat-schedule")]
    proc = _spawn(name, cmd, server_env(**overrides), tmp)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{proc.log()}")
        if " ready." in proc.log():
            return proc
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"worker not ready in 60 s:\n{proc.log()}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`@pytest.mark.both_servers`: the test runs against a daphne hub and a uvicorn hub."""
    if metafunc.definition.get_closest_marker("both_servers") and "hub_server" in metafunc.fixturenames:
        metafunc.parametrize("hub_server", SERVERS, indirect=True)


@pytest.fixture
def hub_server(request: pytest.FixtureRequest) -> str:
    """The ASGI server hubs run under: daphne (the design card's) unless a test asks for both."""
    return str(getattr(request, "param", "daphne"))


@pytest.fixture
def hub_factory(transactional_db: None, tmp_path: Path, hub_server: str) -> Iterator[Callable[..., Proc]]:
    """Start hub servers (daphne or uvicorn subprocesses) with settings overrides; all stopped at teardown."""
    procs: list[Proc] = []

    def make(name: str = "hub", **overrides: Any) -> Proc:
        proc = start_hub(tmp_path, name, server=overrides.pop("server", hub_server), **overrides)
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.stop()
        print(f"----- {proc.name} log -----\n{proc.log()[-20000:]}")  # shown by pytest on failure


@pytest.fixture
def hub(hub_factory: Callable[..., Proc]) -> Proc:
    return hub_factory()


@pytest.fixture
def worker_factory(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def make(name: str = "worker", **overrides: Any) -> Proc:
        proc = start_worker(tmp_path, name, **overrides)
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.stop()
        print(f"----- {proc.name} log -----\n{proc.log()[-20000:]}")


@pytest.fixture
def celery_worker_proc(worker_factory: Callable[..., Proc]) -> Proc:
    return worker_factory()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's, plus: before the test database is dropped, PostgreSQL lets go of the
    connections this process's database threads still hold (the relays' and sync_to_async's
    executors keep theirs open), or the drop fails with "being accessed by other users" and
    leaves the database behind."""
    yield
    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session", autouse=True)
def _clean_broker() -> None:
    """Leftover messages from an earlier run must not reach this run's worker."""
    if not settings.REDIS_URL:
        shutil.rmtree(settings.BROKER_DIR, ignore_errors=True)
        for sub in ("queue", "processed", "control"):
            (settings.BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    else:
        import redis

        redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
