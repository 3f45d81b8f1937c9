"""The admin sign-in: failed attempts throttled per client address (issue 15 §6)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth import hashers
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from tests.console.conftest import PASSWORD

pytestmark = pytest.mark.django_db
LOGIN = reverse("admin:login")


def an_address() -> str:
    return f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"


def sign_in(address: str, username: str, password: str) -> Any:
    client = Client(REMOTE_ADDR=address)
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})


def test_wrong_passwords_then_429_and_another_address_still_signs_in(operator: User, settings: Any) -> None:
    settings.STREAMHUB_AUTH_FAILURE_RATE = "5/min"
    guesser = an_address()
    for _ in range(5):
        response = sign_in(guesser, "operator", "guess")
        assert (
            response.status_code == 200
            and "Please enter the correct username and password" in response.content.decode()
        )
    refused = sign_in(guesser, "operator", PASSWORD)  # the right password too, until the window ends
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 120
    assert "Too many failed sign-in attempts from this address" in refused.content.decode()
    assert sign_in(an_address(), "operator", PASSWORD).status_code == 302  # signed in elsewhere


def test_unknown_user_names_count_and_a_success_does_not(operator: User, settings: Any) -> None:
    settings.STREAMHUB_AUTH_FAILURE_RATE = "2/min"
    address = an_address()
    for _ in range(3):
        assert sign_in(address, "operator", PASSWORD).status_code == 302
    assert sign_in(address, "nobody", "x").status_code == 200
    assert sign_in(address, "nobody-else", "x").status_code == 200
    assert sign_in(address, "operator", PASSWORD).status_code == 429


def test_an_unknown_user_name_runs_the_same_password_hash_as_a_wrong_password(
    operator: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Structural timing check: Django's backend hashes once either way, with the same work factor."""
    hasher = hashers.get_hasher()
    calls: list[int] = []
    real = type(hasher).encode

    def counting(self: Any, password: str, salt: str, iterations: int | None = None) -> str:
        calls.append(iterations or self.iterations)
        return real(self, password, salt, iterations)

    monkeypatch.setattr(type(hasher), "encode", counting)
    for username in ("nobody", "operator"):
        calls.clear()
        assert sign_in(an_address(), username, "wrong-password").status_code == 200
        assert calls == [hasher.iterations], username
