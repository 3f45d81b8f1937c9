"""HTTP Basic auth_id:auth_token; the path's auth_id must be the authenticated account's (D19)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from streams.models import Account, Call
from tests.api.conftest import api_path, basic, client_for

pytestmark = pytest.mark.django_db


def assert_401(response: Any, message: str) -> None:
    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"api_id", "error"} and uuid.UUID(body["api_id"])
    assert message in body["error"]
    assert response["WWW-Authenticate"] == 'Basic realm="streamhub"'


def test_it_answers_401_without_credentials(account: Account) -> None:
    assert_401(APIClient().get(api_path(account, "Call")), "credentials were not provided")


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not-base64!!!",
        "Basic " + "b25seXVzZXI=",  # "onlyuser", no colon
        "Basic",
        "Basic a b",
    ],
)
def test_it_answers_401_for_a_malformed_authorization_header(account: Account, header: str) -> None:
    response = APIClient().get(api_path(account, "Call"), HTTP_AUTHORIZATION=header)
    assert_401(response, "basic header")


def test_it_answers_401_for_a_wrong_token(account: Account) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic(account.auth_id, account.auth_token + "x"))
    assert_401(client.get(api_path(account, "Call")), "Invalid auth_id or auth_token")


@pytest.mark.parametrize("auth_id", ["MA" + "0" * 18, "", "x" * 200, "MA\x00"])
def test_it_answers_401_for_an_unknown_auth_id(account: Account, auth_id: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic(auth_id, account.auth_token))
    assert_401(client.get(api_path(account, "Call")), "Invalid auth_id or auth_token")


def test_it_answers_401_for_an_inactive_account(account: Account, call: Call) -> None:
    Account.objects.filter(pk=account.pk).update(is_active=False)
    response = client_for(account).get(api_path(account, "Call", call.call_uuid))
    assert_401(response, "inactive")


def test_it_answers_401_when_the_path_names_another_account(account: Account, other_account: Account) -> None:
    # Valid credentials, but for a different account than the one in the URL.
    response = client_for(account).get(api_path(other_account, "Call"))
    assert_401(response, "auth_id in the URL does not match")


def test_the_token_of_one_account_does_not_open_another(account: Account, other_account: Account) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic(other_account.auth_id, account.auth_token))
    assert_401(client.get(api_path(other_account, "Call")), "Invalid auth_id or auth_token")


def test_valid_credentials_reach_the_endpoint(account: Account) -> None:
    response = client_for(account).get(api_path(account, "Call"))
    assert response.status_code == 200
