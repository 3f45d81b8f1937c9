"""manage.py simulate_call WAV: play a media gateway for one call, with no phone line.

It speaks FreeSWITCH mod_audio_fork's framing to the hub's `/ingest/audio-fork`: HTTP
Basic auth on the upgrade, a first TEXT frame of JSON metadata (callId, from, to,
sampleRate, mixType and, with `--via metadata`, the `streams` to open), then the WAV as
BINARY 16-bit PCM in 20 ms frames on an absolute clock (`--speed` scales it), DTMF as
TEXT `{"event":"dtmf",…}` at the given audio times. With `--via api` the streams are
started through the REST API instead, and the audio begins once they are connected, so
the service hears all of it.

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
import base64
import errno
import json
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import requests
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from streams.wavio import (
    FRAME_SECONDS,
    Clip,
    Recording,
    WavError,
    frame_size,
    parse_dtmf,
    progress_bar,
    read_wav,
    to_call_format,
    write_wav,
)

INGEST_PATH = "/ingest/audio-fork"
SUBPROTOCOL = Subprotocol("audio.drachtio.org")
OPEN_TIMEOUT = 10.0
API_TIMEOUT = 5.0
CALL_APPEARS_WITHIN = 5.0
STREAM_CONNECTS_WITHIN = 20.0  # three connect attempts with the hub's default 5 s timeout
STREAMS_END_WITHIN = 15.0
DTMF_DURATION_MS = 100
CDR_FIELDS = (
    ("status", "status"),
    ("hangup_reason", "hangup reason"),
    ("start_time", "start time"),
    ("end_time", "end time"),
    ("bill_duration", "bill duration (s)"),
    ("rounded_bill_duration", "rounded bill duration (s)"),
    ("billed_amount", "billed amount"),
)


class SimulationError(Exception):
    """Ends the command with this one-line message."""


# --- the hub's REST API ------------------------------------------------------------------


class ApiUnavailable(SimulationError):
    pass


class HubApi:
    def __init__(self, base: str, auth_id: str, auth_token: str) -> None:
        self.base = base.rstrip("/")
        self.auth_id = auth_id
        self.session = requests.Session()
        self.session.auth = (auth_id, auth_token)

    def _url(self, *parts: str) -> str:
        return f"{self.base}/v1/Account/{self.auth_id}/" + "".join(f"{part}/" for part in parts)

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=API_TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise ApiUnavailable(f"the hub's REST API at {self.base} cannot be reached ({type(exc).__name__})") from exc

    @staticmethod
    def _error(response: requests.Response) -> str:
        try:
            return str(response.json().get("error") or response.text)[:300]
        except ValueError:
            return response.text[:300] or response.reason

    def call(self, call_uuid: str) -> dict[str, Any] | None:
        response = self._request("GET", self._url("Call", call_uuid))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ApiUnavailable(f"GET call: HTTP {response.status_code} {self._error(response)}")
        return dict(response.json())

    def start_stream(self, call_uuid: str, body: dict[str, Any]) -> str:
        response = self._request("POST", self._url("Call", call_uuid, "Stream"), json=body)
        if response.status_code != 201:
            raise SimulationError(f"the hub refused the stream (HTTP {response.status_code}): {self._error(response)}")
        return str(response.json()["stream_id"])

    def stream(self, call_uuid: str, stream_id: str) -> dict[str, Any]:
        response = self._request("GET", self._url("Call", call_uuid, "Stream", stream_id))
        if response.status_code != 200:
            raise ApiUnavailable(f"GET stream: HTTP {response.status_code} {self._error(response)}")
        return dict(response.json())

    def streams(self, call_uuid: str) -> list[dict[str, Any]]:
        response = self._request("GET", self._url("Call", call_uuid, "Stream"), params={"limit": 20})
        if response.status_code != 200:
            raise ApiUnavailable(f"GET streams: HTTP {response.status_code} {self._error(response)}")
        return list(response.json().get("objects", []))


# --- what to do ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRequest:
    service_url: str
    bidirectional: bool | None = None
    audio_track: str | None = None
    content_type: str | None = None
    stream_timeout: int | None = None
    status_callback_url: str | None = None
    status_callback_method: str | None = None
    extra_headers: str | None = None
    keep_call_alive: bool | None = None

    def as_api(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}

    def as_metadata(self) -> dict[str, Any]:
        """The same settings under the <Stream> XML attribute names, as a gateway sends them."""
        camel = {
            "service_url": "serviceUrl",
            "audio_track": "audioTrack",
            "content_type": "contentType",
            "stream_timeout": "streamTimeout",
            "status_callback_url": "statusCallbackUrl",
            "status_callback_method": "statusCallbackMethod",
            "extra_headers": "extraHeaders",
            "keep_call_alive": "keepCallAlive",
        }
        return {camel.get(key, key): value for key, value in self.as_api().items()}


@dataclass
class Plan:
    clip: Clip
    ingest_url: str
    auth_id: str
    auth_token: str
    call_uuid: str
    from_number: str
    to_number: str
    streams: list[StreamRequest]
    via: str
    speed: float
    dtmf: list[tuple[float, str]]
    tail: float
    quiet: float

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "callId": self.call_uuid,
            "from": self.from_number,
            "to": self.to_number,
            "sampleRate": self.clip.rate,
            "mixType": "stereo" if self.clip.channels == 2 else "mono",
        }
        if self.via == "metadata" and self.streams:
            meta["streams"] = [stream.as_metadata() for stream in self.streams]
        return meta


@dataclass
class Outcome:
    recording: Recording
    streamed_seconds: float = 0.0
    hub_errors: list[str] = field(default_factory=list)
    hub_closed: tuple[int | None, str] | None = None  # (code, reason) when the hub hung up first
    stream_ids: list[str] = field(default_factory=list)


# --- the console -------------------------------------------------------------------------


class Console:
    """A redrawn progress bar on a terminal; a plain line per second of audio otherwise."""

    def __init__(self, out: TextIO, *, tty: bool, total: float) -> None:
        self.out, self.tty, self.total = out, tty, total
        self._bar = ""
        self._drawn_at = 0.0
        self._last_second = -1

    def line(self, text: str) -> None:
        if self.tty and self._bar:
            self.out.write("\r\x1b[2K")
        self.out.write(text + "\n")
        if self.tty and self._bar:
            self.out.write(self._bar)
        self.out.flush()

    def progress(self, position: float, played: float, *, force: bool = False) -> None:
        position = min(position, self.total)
        status = f"{position:5.1f} / {self.total:.1f} s streamed, {played:5.1f} s played back"
        if self.tty:
            now = time.monotonic()
            if force or now - self._drawn_at >= 0.1:
                self._drawn_at = now
                self._bar = f"{progress_bar(position, self.total)} {status}"
                self.out.write("\r\x1b[2K" + self._bar)
                self.out.flush()
        elif int(position) > self._last_second or force:
            self._last_second = int(position)
            self.out.write(f"  {status}\n")
            self.out.flush()

    def close_bar(self) -> None:
        if self.tty and self._bar:
            self.out.write("\n")
            self.out.flush()
            self._bar = ""


# --- the call --------------------------------------------------------------------------------


def basic_auth(auth_id: str, auth_token: str) -> str:
    return "Basic " + base64.b64encode(f"{auth_id}:{auth_token}".encode()).decode("ascii")


class CallSimulator:
    def __init__(self, plan: Plan, console: Console, api: HubApi) -> None:
        self.plan = plan
        self.console = console
        self.api = api
        self.outcome = Outcome(recording=Recording(plan.clip.rate))
        self.audio_started: float | None = None
        self.last_played = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def run(self) -> Outcome:
        self._loop = asyncio.get_running_loop()
        ws = await self._connect()
        reader = self._loop.create_task(self._read(ws))
        try:
            await ws.send(json.dumps(self.plan.metadata()))
            if self.plan.via == "api":
                for stream in self.plan.streams:
                    stream_id = await asyncio.to_thread(self._start_via_api, stream)
                    self.outcome.stream_ids.append(stream_id)
                    self.console.line(f"started stream {stream_id} through the REST API")
            await self._stream_audio(ws)
        except ConnectionClosed:
            pass  # the hub hung up; the reader saw why
        finally:
            await ws.close(1000)
            await asyncio.wait([reader], timeout=5)
            self.console.close_bar()
        protocol = ws.protocol
        if protocol.close_rcvd is None:  # no closing handshake: the connection dropped
            self.outcome.hub_closed = (ws.close_code, "connection lost")
        elif protocol.close_rcvd_then_sent:
            self.outcome.hub_closed = (protocol.close_rcvd.code, protocol.close_rcvd.reason)
        return self.outcome

    async def _connect(self) -> ClientConnection:
        url = self.plan.ingest_url
        try:
            return await connect(
                url,
                additional_headers={"Authorization": basic_auth(self.plan.auth_id, self.plan.auth_token)},
                subprotocols=[SUBPROTOCOL],
                open_timeout=OPEN_TIMEOUT,
                max_size=None,
                compression=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise SimulationError(
                    f"the hub refused the login (HTTP {status}): check --auth-id and --auth-token"
                ) from None
            raise SimulationError(f"the hub refused the call (HTTP {status} {exc.response.reason_phrase})") from None
        except InvalidURI as exc:
            raise SimulationError(f"--hub is not a usable URL: {exc}") from None
        except TimeoutError:
            raise SimulationError(f"cannot reach the hub at {url}: no answer in {OPEN_TIMEOUT:g} s") from None
        except (OSError, InvalidHandshake) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
                reason = "connection refused (is the hub running?)"
            else:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SimulationError(f"cannot reach the hub at {url}: {reason}") from None

    def _start_via_api(self, stream: StreamRequest) -> str:
        # The hub creates the call when our metadata arrives; give it a moment to exist.
        deadline = time.monotonic() + CALL_APPEARS_WITHIN
        while self.api.call(self.plan.call_uuid) is None:
            if time.monotonic() > deadline:
                raise SimulationError(f"call {self.plan.call_uuid} did not appear in the REST API")
            time.sleep(0.1)
        stream_id = self.api.start_stream(self.plan.call_uuid, stream.as_api())
        # The 201 comes before the call's process has the stream (it learns of it over the
        # channel layer), and audio reaching the call before that is not the stream's.
        # Start the WAV once the service is connected, so it hears all of it.
        deadline = time.monotonic() + STREAM_CONNECTS_WITHIN
        while self.api.stream(self.plan.call_uuid, stream_id).get("status") == "initiated":
            if time.monotonic() > deadline:
                break  # still dialling: stream anyway, the record will say how it went
            time.sleep(0.05)
        return stream_id

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    self.last_played = self.now()
                    at = 0.0 if self.audio_started is None else self.last_played - self.audio_started
                    self.outcome.recording.add(at, message)
                else:
                    self._on_text(message)
        except ConnectionClosed:
            pass  # run() tells who hung up from the closing handshake

    def _on_text(self, text: str) -> None:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        message: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        kind = message.get("type")
        data: dict[str, Any] = message["data"] if isinstance(message.get("data"), dict) else {}
        if kind == "killAudio":
            self.console.line("hub → killAudio: a bot cleared its audio (barge-in)")
        elif kind == "sendDTMF":
            self.console.line(f"hub → sendDTMF {data.get('dtmf', '?')}: a bot played digits into the call")
        elif kind == "error":
            error = str(data.get("error", text))
            self.outcome.hub_errors.append(error)
            self.console.line(f"hub → error: {error}")
        else:
            self.console.line(f"hub → {text[:200]}")

    async def _stream_audio(self, ws: ClientConnection) -> None:
        plan = self.plan
        size = frame_size(plan.clip.rate, plan.clip.channels)
        pcm = plan.clip.pcm
        silence = b"\x00" * size
        pending = sorted(plan.dtmf)
        frames = -(-len(pcm) // size)
        step = FRAME_SECONDS / plan.speed if plan.speed > 0 else 0.0
        start = self.audio_started = self.now()
        wav_ended_at: float | None = None
        k = 0
        while True:
            position = k * FRAME_SECONDS
            while pending and pending[0][0] <= position:
                at, digits = pending.pop(0)
                await ws.send(json.dumps({"event": "dtmf", "dtmf": digits, "duration": DTMF_DURATION_MS}))
                self.console.line(f"{at:5.1f} s  DTMF {digits} sent")
            if k < frames:
                frame = pcm[k * size : (k + 1) * size]
                due = start + k * step
            else:
                if wav_ended_at is None:
                    wav_ended_at = self.now()
                    self.outcome.streamed_seconds = plan.clip.seconds
                    self.console.progress(plan.clip.seconds, self.outcome.recording.audio_seconds, force=True)
                    self.console.close_bar()
                    if plan.tail > 0:
                        self.console.line(
                            f"audio sent; the call stays up until the hub is quiet (at most {plan.tail:g} s)"
                        )
                if self._may_hang_up(wav_ended_at, bool(pending)):
                    return
                frame = silence
                # After the WAV the line idles in real time: the hub plays back in real time.
                due = wav_ended_at + (k - frames) * FRAME_SECONDS
            delay = due - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(frame.ljust(size, b"\x00"))
            k += 1
            if k <= frames:
                self.outcome.streamed_seconds = min(k * FRAME_SECONDS, plan.clip.seconds)
                self.console.progress(self.outcome.streamed_seconds, self.outcome.recording.audio_seconds)

    def _may_hang_up(self, wav_ended_at: float, dtmf_pending: bool) -> bool:
        now = self.now()
        if now - wav_ended_at >= self.plan.tail:
            return True
        quiet_since = max(wav_ended_at, self.last_played)
        return not dtmf_pending and now - quiet_since >= self.plan.quiet


# --- after the call ------------------------------------------------------------------------


def wait_for_stream_records(api: HubApi, call_uuid: str) -> list[dict[str, Any]]:
    """Every stream of the call once ended (or as it is after STREAMS_END_WITHIN)."""
    deadline = time.monotonic() + STREAMS_END_WITHIN
    while True:
        streams = api.streams(call_uuid)
        if all(stream.get("end_time") for stream in streams) or time.monotonic() > deadline:
            return list(reversed(streams))  # oldest first, as they were asked for
        time.sleep(0.2)


def stream_records_from_db(call_uuid: str) -> list[dict[str, Any]]:
    from streams.models import Stream

    deadline = time.monotonic() + STREAMS_END_WITHIN
    while True:
        rows = list(Stream.objects.filter(call__call_uuid=call_uuid).order_by("created_at", "id"))
        if all(row.end_time for row in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [
        {
            "stream_id": str(row.stream_id),
            "service_url": row.service_url,
            "bidirectional": row.bidirectional,
            "audio_track": row.audio_track,
            "content_type": row.content_type,
            "status": row.status,
            "hangup_reason": row.hangup_reason,
            "start_time": row.start_time.isoformat(sep=" ", timespec="seconds") if row.start_time else None,
            "end_time": row.end_time.isoformat(sep=" ", timespec="seconds") if row.end_time else None,
            "bill_duration": row.bill_duration,
            "rounded_bill_duration": row.rounded_bill_duration,
            "billed_amount": f"{row.billed_amount:.5f}",
        }
        for row in rows
    ]


def admin_links(http_base: str, stream_ids: list[str]) -> dict[str, str]:
    """The stream pages in the admin: by primary key when this process shares the hub's
    database, else the admin's search for the stream id (one click away)."""
    links = {sid: f"{http_base}/admin/streams/stream/?q={sid}" for sid in stream_ids}
    try:
        from streams.models import Stream

        for sid, pk in Stream.objects.filter(stream_id__in=stream_ids).values_list("stream_id", "pk"):
            links[str(sid)] = f"{http_base}/admin/streams/stream/{pk}/change/"
    except DatabaseError:
        pass  # another machine's hub, or no database here: the search link works anyway
    return links


def hub_urls(hub: str) -> tuple[str, str]:
    """(ingest WebSocket URL, HTTP base URL) from --hub (ws, wss, http or https)."""
    parts = urlsplit(hub if "://" in hub else f"ws://{hub}")
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise SimulationError(f"--hub {hub!r} is not a ws://, wss://, http:// or https:// URL")
    secure = scheme in ("wss", "https")
    path = parts.path.rstrip("/")
    ingest = urlunsplit(("wss" if secure else "ws", parts.netloc, path + INGEST_PATH, "", ""))
    http = urlunsplit(("https" if secure else "http", parts.netloc, path, "", ""))
    return ingest, http


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
        )
        tty = self.stdout.isatty()
        # The bar redraws with "\r", which Django's OutputWrapper would end with a newline.
        out: TextIO = sys.stdout if tty else self.stdout._out
        mix = "stereo" if clip.channels == 2 else "mono"
        self.stdout.write(
            f"call {plan.call_uuid}: {clip.seconds:.1f} s from {path.name} at {clip.rate} Hz {mix} "
            f"→ {ingest_url} ({len(plan.streams)} stream(s) via {plan.via}, speed {plan.speed:g})"
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
