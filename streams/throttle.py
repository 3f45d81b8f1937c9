"""Failed authentication, throttled per client address: the REST API, the gateway upgrades and
the admin login (issue 15 §6).

Each failed attempt (credentials presented and wrong) counts against the client's address in
Django's cache: a Redis-backed cache when REDIS_URL is set, so every hub process shares the
count, local memory otherwise (the embedded single process). Once an address has
`STREAMHUB_AUTH_FAILURE_RATE` failures within a period (default 10 a minute), every attempt
from it is refused for one to two periods — a right password too, so guessing cannot go on
between wrong ones; other addresses are not affected. Counters are per fixed window (the key
names its window; see retry_after), so counting is one atomic INCR and nothing per success.

The counter is a guard, not a gate: when the cache cannot be reached (a Redis outage) attempts
are let through unthrottled and the failure is logged, rather than failing every sign-in.

The client address is the peer's, unless `STREAMHUB_TRUSTED_PROXIES` says how many proxies in
front append to X-Forwarded-For (DRF's NUM_PROXIES rule, which the API uses too); without it a
client could name any address it likes in that header.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")


@dataclass(frozen=True)
class Rate:
    limit: int
    period: int


def parse_rate(text: str) -> Rate:
    """DRF's rate syntax: "10/min", "100/hour", "5/s"."""
    match = _RATE.match(text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"{text!r} is not a rate such as 10/min (a positive number per s, min, hour or day)")
    return Rate(int(match.group(1)), PERIODS[match.group(2)[0]])


def _rate() -> Rate:
    return parse_rate(settings.STREAMHUB_AUTH_FAILURE_RATE)


def _key(address: str, window: int) -> str:
    return f"streamhub:authfail:{address}:{window}"


def retry_after(address: str, *, now: float | None = None) -> int | None:
    """Seconds until `address` may try again, or None when it may try now.

    Failures are counted in fixed windows of the rate's period; an address is refused while its
    failures in this window and the one before reach the limit, so any `limit` failures within
    one period are caught wherever the window boundary falls (a refused address waits until the
    end of this window, or of the next one when this window alone is over the limit).
    """
    rate = _rate()
    now = time.time() if now is None else now
    window = int(now // rate.period)
    try:
        counts = cache.get_many([_key(address, window), _key(address, window - 1)])
    except Exception:
        log.warning("failed-authentication counter unavailable; not throttling", exc_info=True)
        return None
    current = int(counts.get(_key(address, window)) or 0)
    previous = int(counts.get(_key(address, window - 1)) or 0)
    if current + previous < rate.limit:
        return None
    until = window + (2 if current >= rate.limit else 1)
    return max(1, int(until * rate.period - now + 0.999))


def record_failure(address: str, *, now: float | None = None) -> None:
    rate = _rate()
    now = time.time() if now is None else now
    key = _key(address, int(now // rate.period))
    try:
        cache.add(key, 0, timeout=2 * rate.period + 5)  # read as "the window before" during the next one
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=2 * rate.period + 5)
    except Exception:
        log.warning("failed-authentication counter unavailable; a failure was not counted", exc_info=True)


def client_address(remote: str | None, forwarded_for: str | None) -> str:
    """The client as the trusted proxies saw it (DRF's NUM_PROXIES rule)."""
    proxies = settings.STREAMHUB_TRUSTED_PROXIES
    if proxies and forwarded_for:
        hops = forwarded_for.split(",")
        return hops[-min(proxies, len(hops))].strip()
    return remote or "unknown"
