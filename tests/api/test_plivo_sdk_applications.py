"""The official plivo SDK's `client.applications` against a live hub, unchanged but for its base URL
(spec §8): create, get, list, iterate, update, delete, with Plivo's status codes and shapes."""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import plivo
import pytest
from plivo import exceptions as plivo_errors

from streams.models import Account, Application
from tests.conftest import Proc

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ANSWER = "https://bot.example.com/answer"


def client_for(hub: Proc, account: Account) -> plivo.RestClient:
    return plivo.RestClient(account.auth_id, account.auth_token)


@pytest.fixture
def patched(hub: Proc) -> Iterator[None]:
    base = f"{hub.http}/v1/Account"
    with mock.patch.multiple(
        "plivo.rest.client",
        API_VOICE_BASE_URI=base,
        API_VOICE_BASE_URI_FALLBACK_1=base,
        API_VOICE_BASE_URI_FALLBACK_2=base,
        PLIVO_API_BASE_URI=base,
    ):
        yield


@pytest.fixture
def sdk(patched: None, hub: Proc, account: Account) -> Iterator[plivo.RestClient]:
    client = client_for(hub, account)
    yield client
    client.session.close()


def test_create_get_update_and_delete_as_the_sdk_does_them(sdk: plivo.RestClient, account: Account) -> None:
    created = sdk.applications.create(
        app_name="Demo Speak",  # Plivo's own fixtures use spaces and dots in names
        answer_url=ANSWER,
        answer_method="GET",
        fallback_answer_url="https://bot.example.com/fallback",
        default_number_app=True,
    )
    assert created.message == "created" and created.api_id
    app_id = created.app_id
    assert isinstance(app_id, str) and app_id.isdigit() and len(app_id) == 17

    app = sdk.applications.get(app_id)
    assert app.id == app_id  # the SDK's resource reads app_id
    assert (app.app_name, app.answer_url, app.answer_method) == ("Demo Speak", ANSWER, "GET")
    assert app.hangup_url == ANSWER  # Plivo: hangup_url defaults to answer_url
    assert (app.fallback_answer_url, app.fallback_method) == ("https://bot.example.com/fallback", "POST")
    assert (app.default_app, app.default_endpoint_app, app.enabled, app.public_uri) == (True, False, True, False)
    assert app.sub_account is None and app.log_incoming_messages is True
    assert app.resource_uri == f"/v1/Account/{account.auth_id}/Application/{app_id}/"
    assert app.sip_uri == f"sip:{app_id}@127.0.0.1"

    changed = sdk.applications.update(
        app_id, answer_url="https://bot.example.com/v2", hangup_url="http://h.example.com/"
    )
    assert changed.message == "changed" and changed.api_id
    app = sdk.applications.get(app_id)
    assert (app.answer_url, app.hangup_url) == ("https://bot.example.com/v2", "http://h.example.com/")
    # the SDK sends its defaults with every update, and the hub stores what it is sent
    assert (app.answer_method, app.default_app) == ("POST", False)
    assert app.fallback_answer_url == "https://bot.example.com/fallback"  # not sent: unchanged

    app.update("https://bot.example.com/v3")  # the resource's own update
    assert sdk.applications.get(app_id).answer_url == "https://bot.example.com/v3"

    assert sdk.applications.delete(app_id) is None  # 204, and the SDK's JSON body on DELETE is fine
    with pytest.raises(plivo_errors.ResourceNotFoundError):
        sdk.applications.get(app_id)
    with pytest.raises(plivo_errors.ResourceNotFoundError):
        sdk.applications.delete(app_id)


def test_list_filters_pages_and_iterates_every_application(sdk: plivo.RestClient, account: Account) -> None:
    ids = [sdk.applications.create(app_name=f"app-{n}", answer_url=ANSWER).app_id for n in range(45)]
    page = sdk.applications.list(limit=20, offset=0)
    assert len(page) == 20 and page.meta.total_count == 45
    assert page.meta.next == f"/v1/Account/{account.auth_id}/Application/?limit=20&offset=20"
    assert [a.app_id for a in page] == ids[::-1][:20]  # newest first
    last = sdk.applications.list(limit=20, offset=40)
    assert len(last) == 5 and last.meta.next is None
    named = sdk.applications.list(app_name="app-7")
    assert [a.app_id for a in named] == [ids[7]]

    iterated = [app.id for app in sdk.applications]  # follows meta.next
    assert len(iterated) == 45 and set(iterated) == set(ids)


def test_plivo_errors_and_tenancy(sdk: plivo.RestClient, hub: Proc, other_account: Account) -> None:
    with pytest.raises(plivo_errors.ValidationError, match="answer_url: is required"):
        sdk.applications.create(app_name="no answer")
    with pytest.raises(plivo_errors.ValidationError, match="answer_url: must be an http"):
        sdk.applications.create(app_name="bad", answer_url="None")
    with pytest.raises(plivo_errors.ValidationError, match="answer_method: must be GET or POST"):
        sdk.applications.create(app_name="bad", answer_url=ANSWER, answer_method="FOO")

    theirs = Application.objects.create(account=other_account, app_name="theirs", answer_url=ANSWER)
    with pytest.raises(plivo_errors.ResourceNotFoundError, match="Application not found"):
        sdk.applications.get(theirs.app_id)
    with pytest.raises(plivo_errors.ResourceNotFoundError):
        sdk.applications.update(theirs.app_id, answer_url="https://evil.example.com/")
    with pytest.raises(plivo_errors.ResourceNotFoundError):
        sdk.applications.delete(theirs.app_id)
    assert [a.app_id for a in sdk.applications.list()] == []
    theirs.refresh_from_db()
    assert theirs.answer_url == ANSWER

    # (list() cannot show a 401: the SDK tests the truth of its list object, which has no objects then)
    wrong = plivo.RestClient(other_account.auth_id, "not-the-token")
    with pytest.raises(plivo_errors.AuthenticationError):
        wrong.applications.get(theirs.app_id)


def test_one_default_application_per_account(sdk: plivo.RestClient, other_account: Account) -> None:
    theirs = Application.objects.create(
        account=other_account, app_name="theirs", answer_url=ANSWER, default_number_app=True
    )
    first = sdk.applications.create(app_name="first", answer_url=ANSWER, default_number_app=True).app_id
    second = sdk.applications.create(app_name="second", answer_url=ANSWER, default_number_app=True).app_id
    assert sdk.applications.get(first).default_app is False
    assert sdk.applications.get(second).default_app is True
    theirs.refresh_from_db()
    assert theirs.default_number_app  # another account's default is its own business
