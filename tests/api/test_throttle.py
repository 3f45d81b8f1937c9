"""Failed authentication is throttled per client address, and an unknown auth_id costs the same
work as a wrong token (issue 15 §6). The REST API in-process; the gateway upgrade against a real
hub is in tests/e2e/test_hostile_peers.py, the admin sign-in in tests/console/test_login_throttle.py.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Any

import pytest
from rest_framework import exceptions
from rest_framework.test import APIClient

from streams import throttle
from streams.api.auth import AccountBasicAuthentication
from streams.models import Account
from tests.api.conftest import api_path, basic

pytestmark = pytest.mark.django_db


def an_address() -> str:
    """A client address no other test uses (the counters outlive a test)."""
    return f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"


def get_calls(account: Account, token: str, address: str) -> Any:
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=basic(account.auth_id, token))
    return client.get(api_path(account, "Call"))


def test_ten_wrong_tokens_then_429_for_that_address_only(account: Account, settings: Any) -> None:
    settings.STREAMHUB_AUTH_FAILURE_RATE = "10/min"
    guesser, other = an_address(), an_address()
    for _ in range(10):
        assert get_calls(account, "wrong", guesser).status_code == 401
    refused = get_calls(account, account.auth_token, guesser)  # even the right token, until the window ends
    assert refused.status_code == 429
    assert refused.json()["error"].startswith(
        "Too many failed authentication attempts from this address; try again later. Expected available in"
    )
    assert 1 <= int(refused["Retry-After"]) <= 120
    assert get_calls(account, account.auth_token, other).status_code == 200


def test_unknown_auth_ids_count_as_failures_too(account: Account, settings: Any) -> None:
    settings.STREAMHUB_AUTH_FAILURE_RATE = "3/min"
    address = an_address()
    for n in range(3):
        client = APIClient(REMOTE_ADDR=address)
        client.credentials(HTTP_AUTHORIZATION=basic(f"MA{n:018d}", "whatever"))
        assert client.get(api_path(account, "Call")).status_code == 401
    assert get_calls(account, account.auth_token, address).status_code == 429


def test_successes_do_not_count(account: Account, settings: Any) -> None:
    settings.STREAMHUB_AUTH_FAILURE_RATE = "3/min"
    address = an_address()
    for _ in range(10):
        assert get_calls(account, account.auth_token, address).status_code == 200


def test_failures_on_both_sides_of_a_window_boundary_count_together(settings: Any) -> None:
    settings.STREAMHUB_AUTH_FAILURE_RATE = "2/min"
    address, boundary = an_address(), 6_000_000.0
    throttle.record_failure(address, now=boundary - 1)
    assert throttle.retry_after(address, now=boundary - 0.5) is None
    throttle.record_failure(address, now=boundary + 1)
    assert throttle.retry_after(address, now=boundary + 2) == 58  # to the end of this window
    assert throttle.retry_after(address, now=boundary + 60) is None  # the earlier failure has aged out


def test_an_address_over_the_limit_in_one_window_waits_for_the_next_one_to_end(settings: Any) -> None:
    settings.STREAMHUB_AUTH_FAILURE_RATE = "2/min"
    address, start = an_address(), 6_000_000.0
    throttle.record_failure(address, now=start + 10)
    throttle.record_failure(address, now=start + 11)
    assert throttle.retry_after(address, now=start + 12) == 108
    assert throttle.retry_after(address, now=start + 119) == 1
    assert throttle.retry_after(address, now=start + 120) is None


def test_x_forwarded_for_counts_only_behind_trusted_proxies(settings: Any) -> None:
    settings.STREAMHUB_TRUSTED_PROXIES = 0
    assert throttle.client_address("10.0.0.9", "198.51.100.7") == "10.0.0.9"  # a client cannot pick its address
    settings.STREAMHUB_TRUSTED_PROXIES = 1
    assert throttle.client_address("10.0.0.9", "6.6.6.6, 198.51.100.7") == "198.51.100.7"


@pytest.mark.parametrize("rate", ["10/min", "1/s", "100/hour", "5/day"])
def test_rates_use_drfs_syntax(rate: str) -> None:
    assert throttle.parse_rate(rate).limit >= 1


class CompareSpy:
    """Records every constant-time comparison (lengths only), then does it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.real = hmac.compare_digest

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls.append((len(a), len(b)))
        return self.real(a, b)


def test_an_unknown_auth_id_costs_the_same_query_and_comparison_as_a_wrong_token(
    account: Account, monkeypatch: pytest.MonkeyPatch, django_assert_num_queries: Any
) -> None:
    """Structural: the same code path, one query and one constant-time comparison of equal lengths."""
    spy = CompareSpy()
    monkeypatch.setattr("streams.api.auth.hmac.compare_digest", spy)
    auth = AccountBasicAuthentication()
    guess = "x" * len(account.auth_token)
    for auth_id in ("MA" + "9" * 18, account.auth_id):
        with django_assert_num_queries(1), pytest.raises(exceptions.AuthenticationFailed) as info:
            auth.authenticate_credentials(auth_id, guess)
        assert str(info.value.detail) == "Invalid auth_id or auth_token."
    assert spy.calls == [(40, 40), (40, 40)]
