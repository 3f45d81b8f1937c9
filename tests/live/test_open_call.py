"""A gateway's call id becomes the call's CallUUID when it is a UUID not taken, else a new one (D1).

On PostgreSQL the set-up statement itself refuses a taken call_uuid (nothing written), so a call
whose gateway sends its UUID costs no look-up first; SQLite looks it up. Both paths run here.
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from streams.core import audiofork
from streams.core.validation import validate_stream_params
from streams.live.session import _open_call
from streams.models import Account, Call, Stream, StreamEvent

pytestmark = pytest.mark.django_db


def open_call(account: Account, call_id: str | None) -> tuple[Call, list[Stream]]:
    text = json.dumps({"callId": call_id, "streams": [{"serviceUrl": "wss://bot.example.com/ws"}]})
    meta = audiofork.parse_gateway_metadata(text, defaults={})
    params = [validate_stream_params(entry, forbid_private_callbacks=False) for entry in meta.streams]
    call, created = _open_call(account=account, meta=meta, gateway="audio-fork", server_id="test#1", streams=params)
    assert all(isinstance(stream, Stream) for stream in created)
    return call, [s for s in created if isinstance(s, Stream)]


def test_a_uuid_call_id_becomes_the_call_uuid(account: Account) -> None:
    given = str(uuid.uuid4())
    call, _ = open_call(account, given)
    stored = Call.objects.get(pk=call.pk)
    assert str(stored.call_uuid) == given
    assert stored.gateway_metadata["gateway_call_id"] == given


def test_a_taken_uuid_gets_a_new_one_and_the_call_keeps_its_streams(account: Account) -> None:
    given = str(uuid.uuid4())
    first, _ = open_call(account, given)
    second, streams = open_call(account, given)
    assert second.pk != first.pk and str(second.call_uuid) != given
    stored = Call.objects.get(pk=second.pk)
    assert stored.gateway_metadata["gateway_call_id"] == given  # the gateway's id is kept
    assert [s.pk for s in Stream.objects.filter(call=stored)] == [streams[0].pk]
    assert StreamEvent.objects.filter(stream=streams[0], event="StreamCreated").count() == 1
    assert Stream.objects.filter(call=first).count() == 1  # the first call's rows untouched
    assert Call.objects.filter(call_uuid=given).count() == 1


def test_a_call_id_that_is_no_uuid_gets_a_new_one(account: Account) -> None:
    call, _ = open_call(account, "1795636860.2")
    stored = Call.objects.get(pk=call.pk)
    uuid.UUID(str(stored.call_uuid))
    assert stored.gateway_metadata["gateway_call_id"] == "1795636860.2"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement set-up is PostgreSQL's")
def test_on_postgresql_a_new_uuid_call_id_costs_one_statement(account: Account) -> None:
    with CaptureQueriesContext(connection) as context:
        open_call(account, str(uuid.uuid4()))
    sql = [q["sql"] for q in context.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
    assert len(sql) == 1 and sql[0].startswith("WITH c AS (INSERT"), sql
