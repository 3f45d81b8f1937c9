"""`manage.py simulate_call` as a user runs it: a subprocess against a real hub and a real customer server."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from streams.models import Account, Call, Stream
from streams.simulator.wavio import rms
from tests.conftest import ROOT, Proc, free_port, server_env
from tests.support import Customer, db, eventually

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def write_wav(path: Path, samples: list[int], *, rate: int, channels: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return path


def simulate(*args: str) -> list[str]:
    return [sys.executable, "manage.py", "simulate_call", *args]


def test_it_fails_with_one_clear_line(hub: Proc, account: Account, tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are notes, not audio")
    short = write_wav(tmp_path / "short.wav", [0] * 1600, rate=8000, channels=1)
    creds = ["--auth-id", account.auth_id, "--auth-token", account.auth_token]
    dead_hub = f"ws://127.0.0.1:{free_port()}"
    expected = {
        "no such file": [str(tmp_path / "missing.wav"), "--hub", hub.ws, *creds],
        "is not a readable PCM WAV file": [str(not_audio), "--hub", hub.ws, *creds],
        "the hub refused the login (HTTP 403)": [str(short), "--hub", hub.ws, *creds[:3], "wrong"],
        f"cannot reach the hub at {dead_hub}/ingest/audio-fork": [str(short), "--hub", dead_hub, *creds],
    }
    running = {
        what: subprocess.Popen(
            simulate(*args), cwd=ROOT, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for what, args in expected.items()
    }
    for what, proc in running.items():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (what, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and what in lines[0], (what, err)
    assert not Call.objects.filter(account=account).exists()  # nothing reached the hub's call table


async def test_it_streams_stereo_44k_as_16k_starts_the_stream_through_the_api_and_prints_the_record(
    hub: Proc, account: Account, tmp_path: Path
) -> None:
    rate = 44100
    caller = [int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(rate)]  # 1 s, left only
    wav = write_wav(tmp_path / "stereo.wav", [v for sample in caller for v in (sample, 0)], rate=rate, channels=2)
    async with Customer() as customer:
        proc = await asyncio.create_subprocess_exec(
            *simulate(
                str(wav),
                "--hub",
                hub.ws,
                "--auth-id",
                account.auth_id,
                "--auth-token",
                account.auth_token,
                "--via",
                "api",
                "--stream",
                customer.url,
                "--audio-track",
                "both",
                "--content-type",
                "audio/x-l16;rate=16000",
                "--dtmf",
                "0.5:5",
                "--speed",
                "0",
                "--quiet",
                "0.3",
            ),
            cwd=ROOT,
            env=server_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out_bytes, err_bytes = await asyncio.wait_for(proc.communicate(), 60)
        await eventually(lambda: customer.connections and customer.ws[0].close_code is not None)
    out, err = out_bytes.decode(), err_bytes.decode()
    assert proc.returncode == 0, err

    call = await db(Call.objects.get)(account=account)
    assert call.gateway_metadata["sampleRate"] == 16000 and call.gateway_metadata["mixType"] == "stereo"
    assert "streams" not in call.gateway_metadata["raw"]  # asked for through the REST API, not the metadata
    stream = await db(Stream.objects.get)(call=call)
    assert stream.hangup_reason == Stream.Reason.CALL_HANGUP and stream.end_time is not None

    [start] = customer.events("start")
    assert start["start"]["tracks"] == ["inbound", "outbound"]
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-l16", "sampleRate": 16000}
    media = customer.events("media")
    inbound = [m for m in media if m["media"]["track"] == "inbound"]
    outbound = [m for m in media if m["media"]["track"] == "outbound"]
    assert len(inbound) >= 50 and len(outbound) == len(inbound)  # 1 s of audio, then the silent tail
    assert all(rms(base64.b64decode(m["media"]["payload"])) > 3000 for m in inbound[2:48])  # the caller (left)
    assert all(rms(base64.b64decode(m["media"]["payload"])) == 0 for m in outbound[:50])  # the right channel
    assert [m["dtmf"]["digit"] for m in customer.events("dtmf")] == ["5"]

    assert f"started stream {stream.stream_id} through the REST API" in out
    assert "hangup reason              Call hangup" in out
    assert "billed amount              0.00300" in out
    assert f"/admin/streams/stream/{stream.pk}/change/" in out


async def test_it_runs_an_application_and_refuses_one_the_account_does_not_have(
    hub: Proc, account: Account, other_account: Account, tmp_path: Path
) -> None:
    from plivo import plivoxml

    from streams.models import Application
    from tests.callbacks.receiver import Reply, running_receiver

    wav = write_wav(tmp_path / "call.wav", [int(4000 * math.sin(i / 5)) for i in range(8000)], rate=8000, channels=1)
    creds = ["--auth-id", account.auth_id, "--auth-token", account.auth_token]
    theirs = await db(Application.objects.create)(account=other_account, app_name="x", answer_url="http://127.0.0.1:9/")
    refused = await asyncio.create_subprocess_exec(
        *simulate(str(wav), "--hub", hub.ws, *creds, "--app", theirs.app_id),
        cwd=ROOT,
        env=server_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(refused.communicate(), 60)
    assert refused.returncode == 1
    assert err.decode().strip().endswith(f"--app {theirs.app_id}: no such application on account {account.auth_id}")

    async with Customer() as customer:
        xml = plivoxml.ResponseElement().add(plivoxml.StreamElement(customer.url, keepCallAlive=True)).to_string()
        with running_receiver() as receiver:
            url = receiver.url(
                "/answer", account.auth_token, default=Reply(200, {"Content-Type": "text/xml"}, xml.encode())
            )
            app = await db(Application.objects.create)(account=account, app_name="bot", answer_url=url)
            proc = await asyncio.create_subprocess_exec(
                *simulate(str(wav), "--hub", hub.ws, *creds, "--app", app.app_id, "--tail", "1"),
                cwd=ROOT,
                env=server_env(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert f"(application {app.app_id}, speed 1)" in text and f"→ {customer.url}" in text
    stream = await db(lambda: Stream.objects.select_related("call").get(call__application=app))()
    assert stream.service_url == customer.url and stream.hangup_reason == "Call hangup"


def test_create_application_prints_the_app_id_and_applies_the_apis_rules(account: Account) -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    from streams.models import Application

    out = StringIO()
    call_command(
        "create_application",
        account.auth_id,
        "Echo bot",
        "--answer-url",
        "http://127.0.0.1:8767/answer",
        "--default",
        stdout=out,
    )
    created = json.loads(out.getvalue())
    app = Application.objects.get(app_id=created["app_id"])
    assert (app.account, app.app_name, app.default_number_app) == (account, "Echo bot", True)
    assert app.hangup_url == "http://127.0.0.1:8767/answer"
    with pytest.raises(CommandError, match="answer_url: must be an http"):
        call_command("create_application", account.auth_id, "x", "--answer-url", "wss://nope")
    with pytest.raises(CommandError, match="no account MAXX"):
        call_command("create_application", "MAXX", "x", "--answer-url", "http://a/")
