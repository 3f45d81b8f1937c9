"""Admission control: a hub process takes calls up to a configured capacity, then refuses
new gateway connections on the upgrade so admitted calls keep their latency."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Admission:
    limit: int
    live: int = 0
    admitted_total: int = 0  # since the process started, for /metrics
    refused_total: int = 0

    def try_admit(self) -> bool:
        if self.live >= self.limit:
            self.refused_total += 1
            return False
        self.live += 1
        self.admitted_total += 1
        return True

    def release(self) -> None:
        self.live = max(0, self.live - 1)


def _from_settings() -> Admission:
    from django.conf import settings

    return Admission(limit=settings.STREAMHUB_MAX_CALLS)


class _Lazy:
    _value: Admission | None = None

    def __getattr__(self, name: str) -> object:
        if _Lazy._value is None:
            _Lazy._value = _from_settings()
        return getattr(_Lazy._value, name)


admission: Admission = _Lazy()  # type: ignore[assignment]
