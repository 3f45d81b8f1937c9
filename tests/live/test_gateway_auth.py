"""Gateway credentials: a burst of calls with the same credentials costs one query."""

from __future__ import annotations

import base64
from typing import Any

from streams.live import gateway_auth
from streams.models import Account


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
