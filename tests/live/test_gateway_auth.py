"""Gateway credentials on the upgrade: an unknown auth_id or ingest token costs the same work as a
wrong one (issue 15 §6; structural: one query and one constant-time comparison of the same lengths),
and a burst of calls with the same proven credentials costs one query."""

from __future__ import annotations

import base64
import hmac
from typing import Any

import pytest

from streams.live import gateway_auth
from streams.models import Account

pytestmark = pytest.mark.django_db


def scope(*, auth_id: str | None = None, token: str | None = None, query: str = "") -> dict[str, Any]:
    headers = []
    if auth_id is not None and token is not None:
        headers.append((b"authorization", b"Basic " + base64.b64encode(f"{auth_id}:{token}".encode())))
    return {"headers": headers, "query_string": query.encode(), "client": ("192.0.2.1", 5000)}


def test_unknown_and_wrong_credentials_do_the_same_work(
    account: Account, monkeypatch: pytest.MonkeyPatch, django_assert_num_queries: Any
) -> None:
    gateway_auth.forget()
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr("streams.live.gateway_auth.hmac.compare_digest", spy)
    guess = "y" * len(account.auth_token)
    for auth_id in ("MA" + "7" * 18, account.auth_id):
        with django_assert_num_queries(1):
            assert gateway_auth.authenticate(scope(auth_id=auth_id, token=guess)) is None
    assert calls == [(40, 40), (40, 40)]

    calls.clear()
    wrong = "gw_" + "z" * (len(account.ingest_token) - 3)
    with django_assert_num_queries(1):
        assert gateway_auth.authenticate(scope(query=f"token={wrong}")) is None
    assert calls == [(len(account.ingest_token), len(wrong))]
    assert gateway_auth.authenticate(scope(auth_id=account.auth_id, token=account.auth_token)) == account
    assert gateway_auth.authenticate(scope(query=f"token={account.ingest_token}")) == account


def test_a_nul_byte_in_credentials_matches_nothing_instead_of_failing_the_query(account: Account) -> None:
    assert gateway_auth.authenticate(scope(auth_id="MA\x00", token=account.auth_token)) is None
    assert gateway_auth.authenticate(scope(query="token=gw_%00x")) is None


def scope_for(auth_id: str, token: str) -> dict[str, Any]:
    creds = base64.b64encode(f"{auth_id}:{token}".encode())
    return {"headers": [(b"authorization", b"Basic " + creds)], "query_string": b""}


def test_proven_credentials_are_remembered_and_wrong_ones_never(
    account: Account, django_assert_num_queries: Any
) -> None:
    gateway_auth.forget()
    good, bad = scope_for(account.auth_id, account.auth_token), scope_for(account.auth_id, "wrong")
    assert gateway_auth.cached(good) is None
    with django_assert_num_queries(1):
        assert gateway_auth.authenticate(good) == account
    with django_assert_num_queries(0):
        assert gateway_auth.cached(good) == account
    assert gateway_auth.authenticate(bad) is None and gateway_auth.cached(bad) is None


def test_saving_an_account_forgets_what_was_remembered(account: Account) -> None:
    gateway_auth.forget()
    good = scope_for(account.auth_id, account.auth_token)
    assert gateway_auth.authenticate(good) == account
    account.is_active = False
    account.save()
    assert gateway_auth.cached(good) is None
    assert gateway_auth.authenticate(good) is None
