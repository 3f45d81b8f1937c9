"""manage.py simulate_call WAV: play a media gateway for one call, with no phone line.

It speaks FreeSWITCH mod_audio_fork's framing to the hub's `/ingest/audio-fork`: HTTP
Basic auth on the upgrade, a first TEXT frame of JSON metadata (callId, from, to,
sampleRate, mixType and, with `--via metadata`, the `streams` to open), then the WAV as
BINARY 16-bit PCM in 20 ms frames on an absolute clock (`--speed` scales it), DTMF as
TEXT `{"event":"dtmf",…}` at the given audio times. With `--via api` the streams are
started through the REST API instead, and the audio begins once they are connected, so
the service hears all of it.

With `--app APP_ID` the call runs the account's Plivo application instead (metadata
`appId`): the hub requests its answer URL and the Plivo XML it returns starts the streams;
the hub hangs up when the document ends, as Plivo does.

What the hub plays back (bidirectional streams) is recorded on its timeline into
`--record`. After the WAV the call stays up, sending silence as a real call would, until
the hub has been quiet for `--quiet` seconds (the bot has answered) or `--tail` seconds
passed; then the simulator hangs up, waits for every stream to end and prints each
stream's record (REST API, or the database when the API cannot be reached) with its
admin link. Failures are one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from streams.simulator.gateway import CallSimulator, Outcome, Plan, StreamRequest
from streams.simulator.hubapi import (
    CDR_FIELDS,
    ApiUnavailable,
    HubApi,
    SimulationError,
    admin_links,
    hub_urls,
    stream_records_from_db,
    wait_for_stream_records,
)
from streams.simulator.progress import Console
from streams.simulator.wavio import WavError, parse_dtmf, read_wav, to_call_format, write_wav


def positive_speed(value: str) -> float:
    try:
        speed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(speed) or speed < 0:
        raise argparse.ArgumentTypeError("--speed is a factor ≥ 0 (1 = real time, 0 = as fast as possible)")
    return speed


def dtmf_spec(value: str) -> tuple[float, str]:
    try:
        return parse_dtmf(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def call_uuid_arg(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError("--call-id must be a UUID (the hub uses it as the CallUUID)") from None


def bool_arg(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError("use true or false")
    return value.lower() == "true"


class Command(BaseCommand):
    help = "Simulate one phone call: stream a WAV into the hub as a media gateway and record what is played back."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("wav", help="the caller's audio: a PCM WAV, mono or stereo (left = caller), any rate")
        parser.add_argument("--hub", default="ws://127.0.0.1:8000", help="hub base URL (default ws://127.0.0.1:8000)")
        parser.add_argument("--auth-id", default=os.getenv("STREAMHUB_AUTH_ID"), help="default $STREAMHUB_AUTH_ID")
        parser.add_argument(
            "--auth-token", default=os.getenv("STREAMHUB_AUTH_TOKEN"), help="default $STREAMHUB_AUTH_TOKEN"
        )
        parser.add_argument("--call-id", type=call_uuid_arg, help="the call's UUID (default: a new one)")
        parser.add_argument("--from", dest="from_number", default="+15550100", help="caller number")
        parser.add_argument("--to", dest="to_number", default="+15550199", help="called number")
        parser.add_argument("--rate", type=int, choices=(8000, 16000), help="call sample rate (default: from the WAV)")
        parser.add_argument(
            "--app",
            metavar="APP_ID",
            help="run this application of the account: its answer URL's Plivo XML starts the streams",
        )
        stream = parser.add_argument_group("streams to open (each --stream gets the options below)")
        stream.add_argument("--stream", action="append", default=[], metavar="URL", help="ws:// or wss:// service")
        stream.add_argument("--via", choices=("metadata", "api"), default="metadata", help="how to ask for them")
        stream.add_argument("--bidirectional", action="store_true", help="let the service play audio into the call")
        stream.add_argument("--audio-track", choices=("inbound", "outbound", "both"))
        stream.add_argument(
            "--content-type", choices=("audio/x-l16;rate=8000", "audio/x-l16;rate=16000", "audio/x-mulaw;rate=8000")
        )
        stream.add_argument("--stream-timeout", type=int, metavar="SECONDS")
        stream.add_argument("--status-callback-url", metavar="URL")
        stream.add_argument("--status-callback-method", choices=("GET", "POST"))
        stream.add_argument("--extra-headers", metavar="K=V,…")
        stream.add_argument("--keep-call-alive", type=bool_arg, metavar="true|false")
        timing = parser.add_argument_group("timing")
        timing.add_argument("--speed", type=positive_speed, default=1.0, help="1 = real time, 0 = as fast as possible")
        timing.add_argument(
            "--dtmf", type=dtmf_spec, action="append", default=[], metavar="SECONDS:DIGITS", help="e.g. 2.5:5"
        )
        timing.add_argument("--tail", type=float, default=10.0, help="most seconds to stay on after the WAV")
        timing.add_argument("--quiet", type=float, default=1.5, help="hang up after this long with no playback")
        parser.add_argument("--record", type=Path, metavar="OUT.wav", help="write what the hub played back here")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self.simulate(options)
        except SimulationError as exc:
            raise CommandError(str(exc)) from None

    def simulate(self, options: dict[str, Any]) -> None:
        path = Path(options["wav"])
        if not path.exists():
            raise SimulationError(f"no such file: {path}")
        if not path.is_file():
            raise SimulationError(f"not a file: {path}")
        try:
            clip = to_call_format(read_wav(path), options["rate"])
        except WavError as exc:
            raise SimulationError(str(exc)) from None
        except OSError as exc:
            raise SimulationError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not options["auth_id"] or not options["auth_token"]:
            raise SimulationError("give --auth-id and --auth-token (or $STREAMHUB_AUTH_ID and $STREAMHUB_AUTH_TOKEN)")
        ingest_url, http_base = hub_urls(options["hub"])
        api = HubApi(http_base, options["auth_id"], options["auth_token"])
        if options["app"]:
            try:
                app = api.application(options["app"])
            except ApiUnavailable:
                app = {}  # connecting will say what is wrong
            if app is None:
                raise SimulationError(f"--app {options['app']}: no such application on account {options['auth_id']}")
        if options["call_id"]:
            try:
                if api.call(options["call_id"]) is not None:
                    raise SimulationError(
                        f"call {options['call_id']} already exists; leave --call-id out for a new one"
                    )
            except ApiUnavailable:
                pass  # connecting will say what is wrong
        plan = Plan(
            clip=clip,
            ingest_url=ingest_url,
            auth_id=options["auth_id"],
            auth_token=options["auth_token"],
            call_uuid=options["call_id"] or str(uuid.uuid4()),
            from_number=options["from_number"],
            to_number=options["to_number"],
            streams=[self.stream_request(url, options) for url in options["stream"]],
            via=options["via"],
            speed=options["speed"],
            dtmf=options["dtmf"],
            tail=max(0.0, options["tail"]),
            quiet=max(0.0, options["quiet"]),
            app_id=options["app"],
        )
        tty = self.stdout.isatty()
        # The bar redraws with "\r", which Django's OutputWrapper would end with a newline.
        out: TextIO = sys.stdout if tty else cast(TextIO, self.stdout._out)
        mix = "stereo" if clip.channels == 2 else "mono"
        asks = f"application {plan.app_id}" if plan.app_id else f"{len(plan.streams)} stream(s) via {plan.via}"
        self.stdout.write(
            f"call {plan.call_uuid}: {clip.seconds:.1f} s from {path.name} at {clip.rate} Hz {mix} "
            f"→ {ingest_url} ({asks}, speed {plan.speed:g})"
        )
        console = Console(out, tty=tty, total=clip.seconds)
        outcome = run_interruptibly(CallSimulator(plan, console, api))
        self.report(plan, outcome, api, http_base, options["record"])

    @staticmethod
    def stream_request(url: str, options: dict[str, Any]) -> StreamRequest:
        return StreamRequest(
            service_url=url,
            bidirectional=True if options["bidirectional"] else None,
            audio_track=options["audio_track"],
            content_type=options["content_type"],
            stream_timeout=options["stream_timeout"],
            status_callback_url=options["status_callback_url"],
            status_callback_method=options["status_callback_method"],
            extra_headers=options["extra_headers"],
            keep_call_alive=options["keep_call_alive"],
        )

    def report(self, plan: Plan, outcome: Outcome, api: HubApi, http_base: str, record: Path | None) -> None:
        recording = outcome.recording
        if outcome.hub_closed is not None:
            code, reason = outcome.hub_closed
            self.stdout.write(f"the hub ended the call (close code {code}{': ' + reason if reason else ''})")
        else:
            self.stdout.write(f"hung up after {outcome.streamed_seconds:.1f} s of caller audio")
        self.stdout.write(f"played back by the hub: {recording.audio_seconds:.2f} s of audio")
        if record is not None:
            write_wav(record, recording.pcm(), rate=recording.rate)
            self.stdout.write(f"recording of the playback ({recording.seconds:.1f} s): {record.resolve()}")
        try:
            streams = wait_for_stream_records(api, plan.call_uuid)
        except ApiUnavailable as exc:
            self.stdout.write(f"{exc}; reading the stream records from the database")
            try:
                streams = stream_records_from_db(plan.call_uuid)
            except DatabaseError as db_exc:
                raise SimulationError(f"no stream records: {exc}, and the database failed ({db_exc})") from None
        self.print_records(streams, http_base)
        if outcome.hub_errors:
            raise SimulationError(f"the hub reported {len(outcome.hub_errors)} error(s): {outcome.hub_errors[0]}")
        if outcome.hub_closed is not None and outcome.hub_closed[0] not in (1000, None):
            raise SimulationError(f"the hub closed the call with code {outcome.hub_closed[0]}")

    def print_records(self, streams: list[dict[str, Any]], http_base: str) -> None:
        if not streams:
            self.stdout.write("no streams on this call")
            return
        links = admin_links(http_base, [str(stream["stream_id"]) for stream in streams])
        for stream in streams:
            options = [
                "bidirectional" if stream.get("bidirectional") else "",
                stream.get("audio_track", ""),
                stream.get("content_type", ""),
            ]
            self.stdout.write("")
            self.stdout.write(f"stream {stream['stream_id']} → {stream.get('service_url')}")
            self.stdout.write(f"  {'settings':<27}{', '.join(o for o in options if o)}")
            for key, label in CDR_FIELDS:
                value = stream.get(key)
                self.stdout.write(f"  {label:<27}{'—' if value in (None, '') else value}")
            self.stdout.write(f"  {'admin':<27}{links[str(stream['stream_id'])]}")


def run_interruptibly(simulator: CallSimulator) -> Outcome:
    """Run the call; Ctrl-C or SIGTERM hangs up cleanly and exits 130."""

    async def main() -> Outcome:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await simulator.run()

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        simulator.console.close_bar()
        raise CommandError("interrupted: hung up", returncode=130) from None
