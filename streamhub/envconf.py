"""Environment parsing for settings: strict, so a typo in production fails loudly at start."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

REDIS_HEALTH_CHECK_SECONDS = 10
REDIS_RETRIES = 3

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_bool(name: str, *, default: bool) -> bool:
    raw = os.getenv(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def env_int(name: str, *, default: int, minimum: int | None = None) -> int:
    raw = os.getenv(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum {minimum}")
    return value


def env_float(name: str, *, default: float, minimum: float | None = None) -> float:
    raw = os.getenv(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum {minimum}")
    return value


def env_choice(name: str, *, default: str, choices: tuple[str, ...]) -> str:
    raw = os.getenv(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return value


def env_list(name: str, *, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


def env_networks(name: str) -> tuple[str, ...]:
    """Comma-separated CIDRs (a bare address is one host), each checked at start."""
    values = tuple(env_list(name, default=""))
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {value!r} is not an IP network (e.g. 10.0.0.0/8)") from exc
    return values


_RATE = re.compile(r"^\s*[1-9]\d*\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")


def env_rate(name: str, *, default: str) -> str:
    """A rate in DRF's syntax ("10/min", "100/hour")."""
    value = os.getenv(name) or default
    if not _RATE.match(value):
        raise ImproperlyConfigured(f"{name}={value!r} is not a rate such as 10/min (a number per s, min, hour or day)")
    return value


def local_secret_key(data_dir: Path) -> str:
    """A per-installation key kept under the data dir (mode 0600); never in the repo."""
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


def channel_layer(redis_url: str | None, max_connections: int = 2000) -> dict[str, Any]:
    if redis_url:
        return {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, exactly channels-redis's
            # BZPOPMIN timeout: an idle call's receive then dies with TimeoutError (1011).
            "CONFIG": {
                # redis-py 8 also caps a pool at 100 connections and raises beyond: a burst
                # of control messages (REST stops) must not fail on that.
                # After a Redis restart the pool's idle connections are dead: a PING before
                # reuse (health check) and a few retries with backoff on connection errors
                # reconnect them, instead of failing the first call set-up or stop with 4500.
                "hosts": [
                    {
                        "address": redis_url,
                        "socket_timeout": 30,
                        "socket_connect_timeout": 5,
                        "max_connections": max_connections,
                        "health_check_interval": REDIS_HEALTH_CHECK_SECONDS,
                        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRIES),
                    }
                ],
                "capacity": 1000,
                "expiry": 30,
            },
        }
    # a process's control mailbox is one channel for all its calls (streams/live/mailbox.py):
    # room for a burst of stops, as on Redis
    return {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}
