"""`bin/demo`, the README's first command, run as a user would: a subprocess with its own
data dir on a free port, against the test database (so the records it leaves can be read here).

Leftover processes are looked for twice: by the demo's process group, and by the demo's
unique STREAMHUB_DATA_DIR in every process's environment (a child that changed its group
still inherited that).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

from callbacks.models import CallbackDelivery
from streams.models import Call, Stream
from streams.simulator.wavio import read_wav, rms
from tests.conftest import ROOT, free_port, server_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def proc_entries() -> list[tuple[int, str, int]]:
    """(pid, state, process group) of every live process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        found.append((int(entry.name), fields[0], int(fields[2])))
    return found


def leftovers(pgid: int, marker: str) -> list[str]:
    """Processes (not zombies) still in the demo's group or carrying its environment marker."""
    needle = marker.encode()
    found = []
    for pid, state, group in proc_entries():
        if state == "Z" or pid == os.getpid():
            continue
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if group == pgid or needle in environ:
            found.append(f"{pid} {cmdline[:150]}")
    return found


def assert_nothing_left(pgid: int, marker: str) -> None:
    deadline = time.monotonic() + 5
    while (left := leftovers(pgid, marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], "processes left behind:\n" + "\n".join(left)


class Demo:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.data = (tmp_path / "demo-data").resolve()
        self.port = free_port()
        self.out_path = tmp_path / "demo.out"
        self.marker = f"STREAMHUB_DATA_DIR={self.data}"
        env = server_env(STREAMHUB_DATA_DIR=self.data)
        with self.out_path.open("wb") as out:
            self.popen = subprocess.Popen(
                ["bash", "bin/demo", "--port", str(self.port), *args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal gives a command
            )
        self.pgid = self.popen.pid

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def log(self, name: str) -> str:
        return (self.data / "demo" / "logs" / f"{name}.log").read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.popen.poll() is None, f"the demo exited ({self.popen.returncode}):\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{self.output}"
            time.sleep(0.2)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.pgid, signal.SIGKILL)
            self.popen.wait(10)


def test_the_demo_runs_one_call_end_to_end_and_leaves_nothing_behind(tmp_path: Path) -> None:
    demo = Demo(tmp_path, "--once")
    try:
        returncode = demo.popen.wait(timeout=80)
    finally:
        demo.kill()
    output = demo.output
    assert returncode == 0, output
    assert_nothing_left(demo.pgid, demo.marker)

    # the stream record: times, durations, billing, hangup reason
    stream = Stream.objects.select_related("call", "account").get()
    assert stream.call.status == Call.Status.ENDED
    assert stream.bidirectional and stream.content_type == "audio/x-mulaw;rate=8000"
    assert stream.status == Stream.Status.STOPPED and stream.hangup_reason == Stream.Reason.CALL_HANGUP
    assert stream.start_time is not None and stream.end_time is not None and stream.end_time > stream.start_time
    assert 8 <= stream.bill_duration <= 25  # 8.5 s of caller audio, then the bot's last answer
    assert stream.duration is not None and stream.duration >= stream.bill_duration
    assert stream.rounded_bill_duration == 60 and stream.billed_amount == Decimal("0.00300")
    assert stream.played_ms >= 1500  # the bot's echoes went into the call

    # the callbacks: delivered, and verified by the example receiver with the account's token
    deliveries = list(CallbackDelivery.objects.filter(stream=stream).order_by("id"))
    assert [(d.event, d.state) for d in deliveries] == [
        ("StartStream", CallbackDelivery.State.DELIVERED),
        ("StopStream", CallbackDelivery.State.DELIVERED),
    ]
    received = [
        json.loads(line.removeprefix("callback "))
        for line in demo.log("callback_receiver").splitlines()
        if line.startswith("callback ")
    ]
    assert [(r["params"]["Event"], r["valid"]) for r in received] == [("StartStream", True), ("StopStream", True)]
    assert received[1]["params"]["HangupReason"] == "Call hangup"
    assert received[1]["params"]["StreamID"] == str(stream.stream_id)

    # the bot: echoed after pauses, was told when playback finished, cleared its audio on *
    bot = demo.log("echo_bot")
    assert "upgrade signature verified" in bot
    assert '"event":"playedStream"' in bot and '"name":"echo-1"' in bot
    assert '-> {"event":"clearAudio"' in bot and '"event":"clearedAudio"' in bot

    # the caller's side: what the hub played back is there, and is not silence
    played = read_wav(demo.data / "demo" / "played-back.wav")
    assert played.rate == 8000 and played.seconds >= 2.0
    assert rms(played.pcm) > 300
    assert "killAudio" in output  # the hub told the gateway to drop the cleared audio

    # what the user is told
    assert f"http://127.0.0.1:{demo.port}/admin/   user demo-admin   password " in output
    assert f"/admin/streams/stream/{stream.pk}/change/" in output
    assert str(demo.data / "demo" / "played-back.wav") in output
    assert "all demo processes stopped" in output


def test_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    demo = Demo(tmp_path, "--speed", "4")
    try:
        demo.wait_for_output("Press Ctrl-C to stop everything.", timeout=80)
        running = [pid for pid, state, group in proc_entries() if group == demo.pgid and state != "Z"]
        assert len(running) >= 6, demo.output  # bash + hub, worker, beat, bot, receiver
        os.killpg(demo.pgid, signal.SIGINT)  # what a terminal does on Ctrl-C
        returncode = demo.popen.wait(timeout=30)
    finally:
        demo.kill()
    assert returncode == 130, demo.output
    assert "all demo processes stopped" in demo.output
    assert_nothing_left(demo.pgid, demo.marker)


def test_the_demo_runs_the_call_through_a_plivo_application(tmp_path: Path) -> None:
    demo = Demo(tmp_path, "--once", "--via", "app", "--speed", "2")
    try:
        returncode = demo.popen.wait(timeout=150)  # one more process than the plain demo; CI shares the cores
    finally:
        demo.kill()
    output = demo.output
    assert returncode == 0, output
    assert_nothing_left(demo.pgid, demo.marker)

    stream = Stream.objects.select_related("call__application").get()
    app = stream.call.application
    assert app is not None and app.answer_url.endswith("/answer") and app.hangup_url.endswith("/hangup")
    # the XML the example built with plivoxml: a bidirectional mu-law stream to the echo bot
    assert stream.bidirectional and stream.keep_call_alive and stream.content_type == "audio/x-mulaw;rate=8000"
    assert stream.call.hangup_cause_name == "Normal Hangup"
    hangup = CallbackDelivery.objects.get(call=stream.call)
    assert hangup.state == CallbackDelivery.State.DELIVERED
    requests = [
        json.loads(line.split(" ", 1)[1])
        for line in demo.log("answer_app").splitlines()
        if line.startswith(("answer {", "hangup {"))
    ]
    assert [(r["params"]["Event"], r["valid"]) for r in requests] == [("StartApp", True), ("Hangup", True)]
    assert requests[1]["params"]["CallUUID"] == str(stream.call.call_uuid)
    assert f"application {app.app_id}" in output and "source=Caller" in output
    assert '"event":"playedStream"' in demo.log("echo_bot")
