"""One simulated call: a media gateway speaking mod_audio_fork's framing to the hub.

HTTP Basic auth on the upgrade, a first TEXT frame of JSON metadata, then the WAV as
BINARY 16-bit PCM in 20 ms frames on an absolute clock, DTMF as TEXT events; what the
hub plays back is recorded on the call's timeline. It is the jambonz build of the module
in two-way mode, so its metadata says `"playback": true`, as docs/freeswitch.md tells a
FreeSWITCH user of that build to write.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from streams.simulator.hubapi import HubApi, SimulationError
from streams.simulator.progress import Console
from streams.simulator.wavio import FRAME_SECONDS, Clip, Recording, frame_size

SUBPROTOCOL = Subprotocol("audio.drachtio.org")
OPEN_TIMEOUT = 10.0
CALL_APPEARS_WITHIN = 5.0
STREAM_CONNECTS_WITHIN = 20.0  # three connect attempts with the hub's default 5 s timeout
DTMF_DURATION_MS = 100


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
    app_id: str | None = None  # run the account's application (its answer URL's XML starts the streams)

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "callId": self.call_uuid,
            "from": self.from_number,
            "to": self.to_number,
            "sampleRate": self.clip.rate,
            "mixType": "stereo" if self.clip.channels == 2 else "mono",
            "playback": True,
        }
        if self.via == "metadata" and self.streams:
            meta["streams"] = [stream.as_metadata() for stream in self.streams]
        if self.app_id:
            meta["appId"] = self.app_id
        return meta


@dataclass
class Outcome:
    recording: Recording
    streamed_seconds: float = 0.0
    hub_errors: list[str] = field(default_factory=list)
    hub_closed: tuple[int | None, str] | None = None  # (code, reason) when the hub hung up first
    stream_ids: list[str] = field(default_factory=list)


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
