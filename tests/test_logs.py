"""Process logs: text by default, JSON lines with STREAMHUB_LOG_FORMAT=json, ids from the context, no secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from streamhub import logs
from streams.models import Account
from tests.callbacks.receiver import Receiver, running_receiver
from tests.conftest import Proc, free_port
from tests.support import Gateway, basic_auth, eventually

SECRETS = {
    "https://bot.example.com/ws?token=abc123SECRET&x=1": "abc123SECRET",
    "wss://user:hunter2pass@bot.example.com/ws": "hunter2pass",
    "Authorization: Basic QUJDREVGOnNlY3JldHRva2VuMTIz": "QUJDREVGOnNlY3JldHRva2VuMTIz",
    "headers {'Authorization': 'Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig'}": "eyJhbGciOiJIUzI1NiJ9.payload.sig",
    "GET /ingest/audio-fork?token=gw_S3cr3tIngestToken": "gw_S3cr3tIngestToken",
    "callback http://app/cb?auth_token=Zx9Zx9Zx9&id=4": "Zx9Zx9Zx9",
    "signed with X-Plivo-Signature-V3=Sig0123456789abcdef": "Sig0123456789abcdef",
}


def record(message: str, *args: object, exc: bool = False, **extra: str) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("failed at wss://u:p4ssw0rd@host/ws?token=tok3n")
        except RuntimeError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("streams.live.relay", logging.INFO, __file__, 1, message, args, exc_info)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


@pytest.mark.parametrize("text, secret", list(SECRETS.items()))
def test_both_formats_blank_credentials(text: str, secret: str) -> None:
    for formatter in (logs.TextFormatter(), logs.JsonFormatter()):
        out = formatter.format(record("connecting to %s", text))
        assert secret not in out
        assert logs.REDACTED in out


def test_ordinary_words_are_left_alone() -> None:
    line = "Basic auth failed for account MA123; bearer missing; key rotation done; auth_id=MA123"
    assert logs.redact(line) == line


def test_a_json_line_has_the_fields_and_the_ids_of_its_context() -> None:
    with logs.log_context(call_uuid="c-1", account="MA1"), logs.log_context(stream_id="s-1"):
        line = logs.JsonFormatter().format(record("stream %s: attempt %d failed", "s-1", 2))
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "streams.live.relay"
    assert entry["message"] == "stream s-1: attempt 2 failed"
    assert entry["call_uuid"] == "c-1" and entry["stream_id"] == "s-1" and entry["account"] == "MA1"
    assert "event" not in entry
    assert entry["timestamp"].endswith("+00:00") and "T" in entry["timestamp"]
    # outside the block the ids are gone
    assert "call_uuid" not in json.loads(logs.JsonFormatter().format(record("later")))


def test_extra_ids_win_over_the_context_and_exceptions_are_redacted() -> None:
    with logs.log_context(call_uuid="from-context"):
        rec = record("callback sent", exc=True, **logs.callback_log_ids({"CallUUID": "c-9", "StreamID": "s-9"}, "Stop"))
        entry = json.loads(logs.JsonFormatter().format(rec))
        text = logs.TextFormatter().format(rec)
    assert entry["call_uuid"] == "c-9" and entry["stream_id"] == "s-9" and entry["event"] == "Stop"
    assert "RuntimeError" in entry["exception"]
    for out in (json.dumps(entry), text):
        assert "p4ssw0rd" not in out and "tok3n" not in out
    assert "call_uuid=c-9 stream_id=s-9 event=Stop" in text.splitlines()[0]


def test_text_stays_the_default_format() -> None:
    from django.conf import settings

    assert settings.STREAMHUB_LOG_FORMAT == "text"
    assert settings.LOGGING["formatters"]["main"]["()"] == "streamhub.logs.TextFormatter"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def json_lines(proc: Proc) -> list[dict[str, object]]:
    lines = [line for line in proc.log().splitlines() if line.strip()]
    assert lines
    return [json.loads(line) for line in lines]  # every line is one JSON object


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_json_logs_of_a_real_hub_and_worker_carry_the_ids_and_no_secret(
    hub_factory: Callable[..., Proc], worker_factory: Callable[..., Proc], account: Account, receiver: Receiver
) -> None:
    hub = hub_factory(STREAMHUB_LOG_FORMAT="json", server="uvicorn")  # the production server; its access log too
    worker = worker_factory(STREAMHUB_LOG_FORMAT="json")
    call_id = str(uuid.uuid4())
    service = f"ws://127.0.0.1:{free_port()}/ws?token=service-secret-123"  # refused: logged per attempt
    callback = receiver.url("/cb", account.auth_token) + "?auth_token=callback-secret-456"

    async def call() -> None:
        gateway = Gateway(f"{hub.ws}/ingest/audio-fork", basic_auth(account.auth_id, account.auth_token))
        await gateway.open({"callId": call_id, "streams": [{"serviceUrl": service, "statusCallbackUrl": callback}]})
        await eventually(lambda: "attempt 3" in hub.log(), timeout=20)
        await gateway.close()

    asyncio.run(call())
    receiver.wait(lambda: len(receiver.acknowledged) >= 1, 30, "the DroppedStream callback")

    def delivery_lines() -> list[dict[str, object]]:
        # this call's only (a worker on a shared broker may also finish an earlier test's deliveries)
        return [
            e for e in json_lines(worker) if str(e["message"]).startswith("callback ") and e.get("call_uuid") == call_id
        ]

    asyncio.run(eventually(delivery_lines, timeout=15))

    hub_entries = json_lines(hub)
    attempts = [e for e in hub_entries if ": attempt " in str(e["message"])]
    assert len(attempts) == 3
    for entry in attempts:
        assert entry["call_uuid"] == call_id and entry["account"] == account.auth_id
        assert entry["stream_id"] and entry["level"] == "INFO" and entry["logger"] == "streams.live.relay"
    sent = delivery_lines()
    assert [e["event"] for e in sent] == ["DroppedStream"]
    assert sent[0]["stream_id"] == attempts[0]["stream_id"] and sent[0]["account"] == account.auth_id
    assert any("ready" in str(e["message"]) for e in json_lines(worker))
    for proc in (hub, worker):
        text = proc.log()
        for secret in ("service-secret-123", "callback-secret-456", account.auth_token, account.ingest_token):
            assert secret not in text
