"""The Application API through DRF's test client: bodies, defaults, errors and tenancy."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from streams.models import Account, Application
from tests.api.conftest import api_path

pytestmark = pytest.mark.django_db
ANSWER = "https://bot.example.com/answer"


def create(api: APIClient, account: Account, fmt: str = "json", **body: object) -> dict[str, object]:
    response = api.post(api_path(account, "Application"), body, format=fmt)
    assert response.status_code == 201, response.json()
    return dict(response.json())


def test_a_form_body_with_string_booleans_creates_the_default_app(api: APIClient, account: Account) -> None:
    data = create(
        api,
        account,
        "multipart",
        app_name="form app",
        answer_url=ANSWER,
        answer_method="get",
        default_number_app="True",
        public_uri="false",
    )
    assert data["message"] == "created" and set(data) == {"api_id", "app_id", "message"}
    app = Application.objects.get(app_id=data["app_id"])
    assert (app.answer_method, app.default_number_app, app.public_uri, app.hangup_url) == ("GET", True, False, ANSWER)


def test_it_names_every_bad_field(api: APIClient, account: Account) -> None:
    response = api.post(
        api_path(account, "Application"),
        {"app_name": "", "answer_url": "ftp://x", "hangup_method": "PUT", "colour": "red", "subaccount": "SA1"},
        format="json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    for part in (
        "app_name: must be a non-empty name",
        "answer_url: must be an http:// or https:// URL",
        "hangup_method: must be GET or POST",
        "colour: is not an application parameter",
        "subaccount: must be a subaccount auth_id",
    ):
        assert part in error
    assert not Application.objects.exists()


def test_an_update_stores_what_it_is_sent_and_leaves_the_rest(api: APIClient, account: Account) -> None:
    app_id = create(api, account, app_name="a", answer_url=ANSWER, fallback_answer_url="https://f.example.com/")[
        "app_id"
    ]
    path = api_path(account, "Application", app_id)
    response = api.post(
        path, {"hangup_url": "", "app_name": "renamed", "callback_url": "https://ignored/"}, format="json"
    )
    assert response.status_code == 202 and response.json()["message"] == "changed"
    body = api.get(path).json()
    assert (body["app_name"], body["hangup_url"], body["fallback_answer_url"]) == (
        "renamed",
        "",
        "https://f.example.com/",
    )
    assert body["default_app"] is False and body["sub_account"] is None and body["api_id"]


def test_delete_takes_the_sdks_json_body_and_calls_keep_their_records(api: APIClient, account: Account) -> None:
    from tests.api.conftest import open_call

    app_id = create(api, account, app_name="a", answer_url=ANSWER)["app_id"]
    call = open_call(account)
    call.application = Application.objects.get(app_id=app_id)
    call.save()
    response = api.delete(api_path(account, "Application", app_id), {"app_id": app_id, "cascade": False}, format="json")
    assert response.status_code == 204 and response.content == b""
    call.refresh_from_db()
    assert call.application is None


def test_other_accounts_see_nothing(api: APIClient, account: Account, other_account: Account) -> None:
    theirs = Application.objects.create(account=other_account, app_name="theirs", answer_url=ANSWER)
    for path in (api_path(account, "Application", theirs.app_id), api_path(account, "Application", "not-digits")):
        assert api.get(path).status_code == 404
        assert api.post(path, {"app_name": "x"}, format="json").status_code == 404
        assert api.delete(path).status_code == 404
    assert api.get(api_path(account, "Application")).json()["objects"] == []
    assert api.get(api_path(other_account, "Application")).status_code == 401  # someone else's auth_id
    assert api.get(api_path(account, "Application") + "?limit=21").status_code == 400
