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
  "data": str(settings.DATA_DIR),
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
    assert got["broker"].startswith("filesystem://")
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


@pytest.mark.parametrize("value", ["heavy", "0.5"])
def test_a_bidirectional_weight_that_is_not_a_number_of_at_least_one_fails_loudly(tmp_path: Path, value: str) -> None:
    got = probe(tmp_path, STREAMHUB_BIDI_STREAM_WEIGHT=value)
    assert "ImproperlyConfigured" in str(got.get("error")) and "STREAMHUB_BIDI_STREAM_WEIGHT" in str(got.get("error"))
