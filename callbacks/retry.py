"""Retry policy for status callbacks (pure: no sockets, no ORM, time passed in).

- Which outcomes are retried: connection errors, timeouts, 5xx, 408 and 429. Any 2xx
  acknowledges; every other status (3xx included: a redirect would change the signed
  URL, so it is not followed) fails the delivery at once.
- How long to wait before try n+1: exponential backoff with full jitter, a uniform
  pick in [0, min(cap, base * 2**(n-1))]. The pick is derived from the delivery's
  idempotency id and the try number rather than a global RNG: just as decorrelated
  across deliveries (the ids are random UUIDs), and reproducible in a test or when
  reading the console.
- `Retry-After` (seconds or an HTTP date) is a floor under that wait.
- A delivery gives up after `max_attempts` tries, or when the next try would start
  later than `max_age` after the callback was created.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

RETRYABLE_STATUS = frozenset({408, 429})


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAIL = "fail"


def classify(status_code: int | None) -> Verdict:
    """`None` stands for "no HTTP answer" (connection error, timeout)."""
    if status_code is None or status_code >= 500 or status_code in RETRYABLE_STATUS:
        return Verdict.RETRY
    if 200 <= status_code < 300:
        return Verdict.DELIVERED
    return Verdict.FAIL


def jitter_fraction(idempotency_id: str, attempt: int) -> float:
    """A uniform value in [0, 1) fixed by (delivery, try number)."""
    digest = hashlib.sha256(f"{idempotency_id}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def backoff_window(attempt: int, *, base: float, cap: float) -> float:
    """Upper bound of the wait after try `attempt` (1-based)."""
    exponent = min(max(attempt - 1, 0), 62)  # beyond 2**62 the cap has long applied
    return min(cap, base * 2.0**exponent)


def backoff_delay(idempotency_id: str, attempt: int, *, base: float, cap: float) -> float:
    return backoff_window(attempt, base=base, cap=cap) * jitter_fraction(idempotency_id, attempt)


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class Policy:
    max_attempts: int
    base: float
    cap: float
    max_age: float


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    retry_at: datetime | None = None
    reason: str = ""


def decide(
    *,
    status_code: int | None,
    error: str,
    attempt: int,
    created_at: datetime,
    now: datetime,
    idempotency_id: str,
    policy: Policy,
    retry_after: str | None = None,
    permanent: bool = False,
) -> Decision:
    """What to do after try number `attempt` ended with `status_code` / `error`.

    `permanent`: an error no retry can fix (the hub's address policy refused the host).
    """
    verdict = classify(status_code)
    what = error or f"HTTP {status_code}"
    if verdict is Verdict.DELIVERED:
        return Decision(Verdict.DELIVERED)
    if verdict is Verdict.FAIL or permanent:
        return Decision(Verdict.FAIL, reason=f"{what} (not retried)")
    if attempt >= policy.max_attempts:
        return Decision(Verdict.FAIL, reason=f"{what}; gave up after {attempt} attempts")
    delay = backoff_delay(idempotency_id, attempt, base=policy.base, cap=policy.cap)
    floor = parse_retry_after(retry_after, now=now)
    if floor is not None:
        delay = max(delay, floor)
    retry_at = now + timedelta(seconds=delay)
    if retry_at > created_at + timedelta(seconds=policy.max_age):
        return Decision(Verdict.FAIL, reason=f"{what}; gave up: next try would pass the {policy.max_age:g} s limit")
    return Decision(Verdict.RETRY, retry_at=retry_at, reason=what)
