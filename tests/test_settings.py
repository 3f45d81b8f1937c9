"""The settings switch: embedded defaults with no environment, PostgreSQL/Redis by env vars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, django
from django.conf import settings
django.setup()
print(json.dumps({
  "db": settings.DATABASES["default"]["ENGINE"], "db_name": str(settings.DATABASES["default"]["NAME"]),
  "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"], "broker": settings.CELERY_BROKER_URL,
  "debug": settings.DEBUG, "hosts": settings.ALLOWED_HOSTS, "ssl": settings.SECURE_SSL_REDIRECT,
  "data": str(settings.DATA_DIR), "server_id": settings.STREAMHUB_SERVER_ID,
  "transport": getattr(settings, "CELERY_BROKER_TRANSPORT", None),
  "lock_timeout": settings.STREAMHUB_DB_LOCK_TIMEOUT_SECONDS,
  "statement_timeout": settings.STREAMHUB_DB_STATEMENT_TIMEOUT_SECONDS,
}))
"""


def probe(tmp_path: Path, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "DJANGO_"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "streamhub.settings", "STREAMHUB_DATA_DIR": str(tmp_path), **env})
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr}
    return dict(json.loads(out.stdout))


def test_a_fresh_checkout_needs_no_server(tmp_path: Path) -> None:
    got = probe(tmp_path)
    assert got["db"] == "django.db.backends.sqlite3"
    assert str(got["db_name"]).startswith(str(tmp_path))
    assert got["layer"] == "channels.layers.InMemoryChannelLayer"
    assert got["broker"].startswith("filesystem://") and got["transport"] == "streamhub.broker:Transport"
    assert got["lock_timeout"] == 5.0 and got["statement_timeout"] == 15.0
    assert got["debug"] is False and got["ssl"] is False
    assert got["hosts"] == ["localhost", "127.0.0.1"]
    key = tmp_path / "secret_key"
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"


def test_environment_switches_to_postgres_and_redis(tmp_path: Path) -> None:
    got = probe(
        tmp_path,
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
        REDIS_URL="redis://127.0.0.1:6379/0",
        DJANGO_ALLOWED_HOSTS="hub.example.com",
        DJANGO_DEBUG="true",
        DJANGO_SECRET_KEY="x" * 50,
    )
    assert got["db"] == "django.db.backends.postgresql"
    assert got["layer"] == "channels_redis.core.RedisChannelLayer"
    assert got["broker"] == "redis://127.0.0.1:6379/0"
    assert got["hosts"] == ["hub.example.com"] and got["debug"] is True
    assert not (tmp_path / "secret_key").exists()


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_malformed_boolean_fails_loudly(tmp_path: Path, value: str) -> None:
    got = probe(tmp_path, DJANGO_DEBUG=value)
    assert "ImproperlyConfigured" in str(got.get("error")) and "DJANGO_DEBUG" in str(got.get("error"))


def test_a_callback_try_must_fit_twice_in_the_pending_deadline(tmp_path: Path) -> None:
    """Issue 15 §4: a try still running when the sweep takes its delivery back would be sent twice."""
    got = probe(tmp_path, STREAMHUB_CALLBACK_TIMEOUT_SECONDS="70")  # pending deadline 120 by default
    error = str(got.get("error"))
    assert "ImproperlyConfigured" in error
    assert (
        "STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS=120 must be at least twice STREAMHUB_CALLBACK_TIMEOUT_SECONDS=70"
        in error
    )
    assert "error" not in probe(tmp_path, STREAMHUB_CALLBACK_TIMEOUT_SECONDS="60")
    assert "error" not in probe(
        tmp_path, STREAMHUB_CALLBACK_TIMEOUT_SECONDS="70", STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS="140"
    )


def test_allowed_private_networks_are_cidrs_checked_at_start(tmp_path: Path) -> None:
    assert "error" not in probe(tmp_path, STREAMHUB_ALLOWED_PRIVATE_NETWORKS="10.0.0.0/8, fd00::/8,192.168.1.7")
    got = probe(tmp_path, STREAMHUB_ALLOWED_PRIVATE_NETWORKS="10.0.0.0/8,intranet")
    assert "ImproperlyConfigured" in str(got.get("error")) and "'intranet' is not an IP network" in str(got["error"])


@pytest.mark.parametrize("rate", ["10", "ten/min", "0/min", "5/fortnight"])
def test_a_malformed_auth_failure_rate_fails_loudly(tmp_path: Path, rate: str) -> None:
    got = probe(tmp_path, STREAMHUB_AUTH_FAILURE_RATE=rate)
    assert "ImproperlyConfigured" in str(got.get("error")) and "is not a rate such as 10/min" in str(got["error"])


def test_create_account_prints_credentials_as_json(tmp_path: Path, transactional_db: None) -> None:
    import io

    from django.core.management import call_command

    from streams.models import Account

    out = io.StringIO()
    call_command("create_account", "Acme", "--rate", "0.004", stdout=out)
    data = json.loads(out.getvalue())
    account = Account.objects.get(auth_id=data["auth_id"])
    assert data["auth_token"] == account.auth_token
    assert str(account.rate_per_minute) == "0.00400"


def test_the_answer_url_settings_have_defaults_and_refuse_nonsense(tmp_path: Path) -> None:
    code = (
        "import json, django; from django.conf import settings; django.setup(); print(json.dumps(["
        "settings.STREAMHUB_ANSWER_TIMEOUT_SECONDS, settings.STREAMHUB_ANSWER_TRIES,"
        " settings.STREAMHUB_ANSWER_RETRY_DELAY_SECONDS]))"
    )

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "STREAMHUB_"))}
        clean.update({"DJANGO_SETTINGS_MODULE": "streamhub.settings", "STREAMHUB_DATA_DIR": str(tmp_path), **env})
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True)

    assert json.loads(run().stdout) == [5.0, 3, 0.5]
    assert json.loads(run(STREAMHUB_ANSWER_TRIES="1", STREAMHUB_ANSWER_TIMEOUT_SECONDS="2.5").stdout)[:2] == [2.5, 1]
    for bad in ({"STREAMHUB_ANSWER_TRIES": "0"}, {"STREAMHUB_ANSWER_TIMEOUT_SECONDS": "soon"}):
        failed = run(**bad)
        assert failed.returncode != 0 and "STREAMHUB_ANSWER_" in failed.stderr


OPS_PROBE = """
import json, django
from django.conf import settings
django.setup()
names = ["STREAMHUB_LOG_FORMAT", "STREAMHUB_METRICS_TOKEN", "STREAMHUB_WORKER_METRICS_PORT",
         "STREAMHUB_READY_MAX_LOOP_LAG_SECONDS", "STREAMHUB_RETAIN_DEBUG_EVENTS_DAYS",
         "STREAMHUB_RETAIN_CALLBACKS_DAYS", "STREAMHUB_RETAIN_RECORDS_DAYS", "STREAMHUB_RETAIN_DEAD_PROCESSES_DAYS",
         "STREAMHUB_PRUNE_BATCH", "STREAMHUB_LIVE_SNAPSHOT_SECONDS"]
out = {name: getattr(settings, name) for name in names}
out["formatter"] = settings.LOGGING["formatters"]["main"]["()"]
out["prune_every"] = settings.CELERY_BEAT_SCHEDULE["streams-prune"]["schedule"]
print(json.dumps(out))
"""


def ops_probe(tmp_path: Path, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "STREAMHUB_"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "streamhub.settings", "STREAMHUB_DATA_DIR": str(tmp_path), **env})
    out = subprocess.run([sys.executable, "-c", OPS_PROBE], cwd=ROOT, env=clean, capture_output=True, text=True)
    return {"error": out.stderr} if out.returncode else dict(json.loads(out.stdout))


def test_operations_settings_have_defaults_and_parse(tmp_path: Path) -> None:
    got = ops_probe(tmp_path)
    assert got["STREAMHUB_LOG_FORMAT"] == "text" and got["formatter"] == "streamhub.logs.TextFormatter"
    assert got["STREAMHUB_METRICS_TOKEN"] is None and got["STREAMHUB_WORKER_METRICS_PORT"] == 0
    assert got["STREAMHUB_READY_MAX_LOOP_LAG_SECONDS"] == 0.5
    assert (got["STREAMHUB_RETAIN_DEBUG_EVENTS_DAYS"], got["STREAMHUB_RETAIN_RECORDS_DAYS"]) == (30.0, 400.0)
    assert got["STREAMHUB_PRUNE_BATCH"] == 5000 and got["prune_every"] == 3600.0

    got = ops_probe(
        tmp_path,
        STREAMHUB_LOG_FORMAT=" JSON ",
        STREAMHUB_METRICS_TOKEN="t0k",
        STREAMHUB_WORKER_METRICS_PORT="9809",
        STREAMHUB_RETAIN_RECORDS_DAYS="0",
        STREAMHUB_PRUNE_EVERY_SECONDS="600",
    )
    assert got["STREAMHUB_LOG_FORMAT"] == "json" and got["formatter"] == "streamhub.logs.JsonFormatter"
    assert got["STREAMHUB_METRICS_TOKEN"] == "t0k" and got["STREAMHUB_WORKER_METRICS_PORT"] == 9809
    assert got["STREAMHUB_RETAIN_RECORDS_DAYS"] == 0.0 and got["prune_every"] == 600.0


@pytest.mark.parametrize(
    "env",
    [
        {"STREAMHUB_LOG_FORMAT": "yaml"},
        {"STREAMHUB_RETAIN_DEBUG_EVENTS_DAYS": "-1"},
        {"STREAMHUB_PRUNE_BATCH": "0"},
        {"STREAMHUB_WORKER_METRICS_PORT": "http"},
        {"STREAMHUB_READY_MAX_LOOP_LAG_SECONDS": "soon"},
    ],
)
def test_malformed_operations_settings_fail_loudly(tmp_path: Path, env: dict[str, str]) -> None:
    got = ops_probe(tmp_path, **env)
    assert "ImproperlyConfigured" in str(got.get("error")) and next(iter(env)) in str(got.get("error"))


def test_every_boot_gets_its_own_lease_id_even_under_the_same_name(tmp_path: Path) -> None:
    """A container restarting with the same hostname and PID (or the same STREAMHUB_SERVER_ID)
    must not revive a dead process's lease: a boot nonce is always appended."""
    named = [probe(tmp_path, STREAMHUB_SERVER_ID="hub-1")["server_id"] for _ in range(2)]
    assert named[0] != named[1] and all(str(i).startswith("hub-1#") for i in named), named
    default = str(probe(tmp_path)["server_id"])
    assert default.count(":") == 1 and "#" in default


def test_database_timeouts_are_numbers_in_seconds(tmp_path: Path) -> None:
    got = probe(tmp_path, STREAMHUB_DB_LOCK_TIMEOUT_SECONDS="0.5", STREAMHUB_DB_STATEMENT_TIMEOUT_SECONDS="2")
    assert got["lock_timeout"] == 0.5 and got["statement_timeout"] == 2.0
    bad = probe(tmp_path, STREAMHUB_DB_LOCK_TIMEOUT_SECONDS="5s")
    assert "STREAMHUB_DB_LOCK_TIMEOUT_SECONDS" in str(bad.get("error"))


@pytest.mark.parametrize("value", ["heavy", "0.5"])
def test_a_bidirectional_weight_that_is_not_a_number_of_at_least_one_fails_loudly(tmp_path: Path, value: str) -> None:
    got = probe(tmp_path, STREAMHUB_BIDI_STREAM_WEIGHT=value)
    assert "ImproperlyConfigured" in str(got.get("error")) and "STREAMHUB_BIDI_STREAM_WEIGHT" in str(got.get("error"))
