"""A PostgreSQL outage under live calls (issue 15 §3, §7, §9): a private cluster this test stops.

The hub, the orphan sweeper and the database are real processes; the cluster is this
test's own (initdb into a temporary folder, a free port), never the machine's shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from websockets.asyncio.client import connect

from tests.conftest import ROOT, Proc, free_port, server_env
from tests.support import Customer, Gateway, basic_auth, eventually, ramp

PG_BIN = (
    next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if Path("/usr/lib/postgresql").exists()
    else None
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(PG_BIN is None, reason="needs PostgreSQL's server binaries (initdb, pg_ctl)"),
    pytest.mark.skipif(
        not os.getenv("DATABASE_URL", "").startswith("postgres"), reason="runs in the PostgreSQL configuration"
    ),
]


class PgServer:
    """A private PostgreSQL cluster on a free loopback port that a test can stop and start."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="streamhub-pg-"))
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0  # initdb refuses to run as root

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/streamhub"

    def _run(self, *args: str) -> None:
        assert PG_BIN is not None
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        os.chmod(self.dir, 0o755)
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "streamhub")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            return list(conn.execute(sql, params).fetchall())

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pg() -> Iterator[PgServer]:
    server = PgServer()
    try:
        server.init()
        yield server
    finally:
        server.remove()


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


SWEEPER = """
import time, django
django.setup()
from django.db import connections
from streams.orphans import streams_close_orphaned
while True:
    try:
        streams_close_orphaned()
    except Exception as exc:
        print("sweep failed:", type(exc).__name__, flush=True)
    connections.close_all()
    time.sleep(0.25)
"""


@pytest.fixture
def pg_env(pg: PgServer, tmp_path: Path) -> dict[str, str]:
    env = server_env(
        DATABASE_URL=pg.url,
        STREAMHUB_DATA_DIR=str(tmp_path / "data"),
        STREAMHUB_HEARTBEAT_SECONDS="0.5",
        STREAMHUB_ORPHAN_AFTER_SECONDS="2",
        STREAMHUB_CONNECT_TIMEOUT="10",  # a busy machine: the customer's accept can take seconds
    )
    env.pop("REDIS_URL", None)  # one process: the in-memory channel layer is enough here
    manage(env, "migrate", "--noinput")
    return env


@pytest.fixture
def sweeper(pg_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "sweeper.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", SWEEPER], cwd=ROOT, env=pg_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


async def test_a_database_outage_ends_no_live_call_and_loses_no_hangup(
    pg: PgServer,
    pg_env: dict[str, str],
    sweeper: subprocess.Popen[bytes],
    hub_factory: Callable[..., Proc],
) -> None:
    account = json.loads(manage(pg_env, "create_account", "Acme"))
    newcomer = json.loads(manage(pg_env, "create_account", "Newcomer"))  # never connects before the outage
    hub = hub_factory(**{k: v for k, v in pg_env.items() if k.startswith(("DATABASE_URL", "STREAMHUB_"))})
    auth = basic_auth(account["auth_id"], account["auth_token"])

    def gateway() -> Gateway:
        return Gateway(f"{hub.ws}/ingest/audio-fork", auth)

    callback = {"statusCallbackUrl": "http://127.0.0.1:9/cb"}
    async with Customer() as hanging_up, Customer() as staying:
        gw_a = await gateway().open({"streams": [{"serviceUrl": hanging_up.url, **callback}]})
        gw_b = await gateway().open({"streams": [{"serviceUrl": staying.url, **callback}]})
        feeding = [asyncio.create_task(gw.send_frames(ramp(8000 * 120), interval=0.02)) for gw in (gw_a, gw_b)]
        await eventually(lambda: hanging_up.events("media") and staying.events("media"), timeout=20)
        await eventually(lambda: len(pg.query("SELECT 1 FROM streams_stream WHERE status = 'in-progress'")) == 2)

        await asyncio.to_thread(pg.stop)
        outage_began = time.monotonic()
        feeding[0].cancel()
        hung_up_at = datetime.now(UTC)
        await gw_a.close()  # the caller hangs up while the database is down

        answer = await asyncio.to_thread(
            requests.get,
            f"{hub.http}/v1/Account/{account['auth_id']}/Call/",
            auth=(account["auth_id"], account["auth_token"]),
            timeout=30,
        )
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5", answer.text
        assert "database is unavailable" in answer.json()["error"]

        # The gateway's credentials were proven a moment ago (the hub remembers them for 10 s, no
        # query): the call is refused when its set-up needs the database, after its metadata.
        async with connect(f"{hub.ws}/ingest/audio-fork", additional_headers=auth) as refused:
            await refused.send(json.dumps({"streams": [{"serviceUrl": staying.url}]}))
            reason = await asyncio.wait_for(refused.recv(), 30)
            await asyncio.wait_for(refused.wait_closed(), 30)
        assert json.loads(reason)["data"]["error"] == "hub database unavailable: try again shortly"
        assert refused.close_code == 4503
        # Credentials the hub has not seen need the database at once: refused on the upgrade.
        unseen = basic_auth(newcomer["auth_id"], newcomer["auth_token"])
        async with connect(f"{hub.ws}/ingest/audio-fork", additional_headers=unseen) as turned_away:
            reason = await asyncio.wait_for(turned_away.recv(), 30)
            await asyncio.wait_for(turned_away.wait_closed(), 30)
        assert json.loads(reason)["data"]["error"] == "hub database unavailable: try again shortly"
        assert turned_away.close_code == 4503

        await asyncio.sleep(max(0.0, 8 - (time.monotonic() - outage_began)))  # longer than the 2 s window
        await asyncio.to_thread(pg.start)

        def ended_a() -> list[tuple[Any, ...]]:
            return pg.query(
                "SELECT s.status, s.hangup_reason, c.status, s.end_time FROM streams_stream s "
                "JOIN streams_call c ON c.id = s.call_id WHERE s.service_url = %s AND c.status = 'ended'",
                hanging_up.url,
            )

        [(status, reason, call_status, end_time)] = await eventually(ended_a, timeout=40)
        assert (status, reason, call_status) == ("stopped", "Call hangup", "ended")
        assert abs((end_time - hung_up_at).total_seconds()) < 3  # when it hung up, not when the write got through
        finals = pg.query(
            "SELECT d.event FROM callbacks_callbackdelivery d JOIN streams_stream s ON s.id = d.stream_id "
            "WHERE s.service_url = %s ORDER BY d.id",
            hanging_up.url,
        )
        assert [event for (event,) in finals] == ["StartStream", "StopStream"]

        # The sweeper ran all along (window 2 s, fence 5 s): the live call survived the outage.
        await asyncio.sleep(9)
        [(b_status,)] = pg.query("SELECT status FROM streams_stream WHERE service_url = %s", staying.url)
        assert b_status == "in-progress"
        before = len(staying.events("media"))
        await eventually(lambda: len(staying.events("media")) > before + 25)
        assert gw_b.ws is not None and gw_b.ws.close_code is None
        feeding[1].cancel()
        await gw_b.close()
