"""An example customer service for Plivo Audio Streams: it repeats what the caller said.

The hub (or Plivo) dials this server for every stream. After each pause in the caller's
speech (a simple energy VAD on the inbound audio) the bot sends the utterance back with
`playAudio`, followed by a `checkpoint`; the hub answers `playedStream` once that audio
has been played into the call. When the caller presses `*` (a `dtmf` event) the bot
sends `clearAudio` (barge-in) and the hub answers `clearedAudio`. Every message is
logged: the control messages in full, `media` as a one-line summary per second of audio
(`--verbose` logs each one).

Plivo's `start` message does not say whether the stream is bidirectional, so the bot
echoes on every stream. Only a bidirectional stream plays it: on a one-way stream the hub
(like Plivo) ignores `playAudio`, `checkpoint` and `clearAudio`, and notes `IgnoredMessage`
in the stream's debug log, so no `playedStream` comes.

With `--auth-token` the bot checks the hub's `X-Plivo-Signature-V3` on the WebSocket
upgrade (as signed for Plivo's Node stream SDK) and refuses unsigned connections.

    PLIVO_AUTH_TOKEN=… .venv/bin/python examples/echo_bot.py --port 8765
    # --port 0 picks a free port; the first line printed says which
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib up to 3.12; the audioop-lts package from 3.13

log = logging.getLogger("echo_bot")

FRAME_MS = 20
PLAY_CHUNK_SECONDS = 1.0  # keeps each playAudio message well under Plivo's 64 KB message limit
MAX_UTTERANCE_SECONDS = 15.0


@dataclass(frozen=True)
class VadSettings:
    threshold: int = 300  # RMS of 16-bit samples that counts as speech
    pause_ms: int = 600  # silence that ends an utterance
    min_speech_ms: int = 200  # shorter bursts are noise, not speech
    preroll_ms: int = 100  # audio kept from before the onset, so the echo has its first syllable


@dataclass
class Utterances:
    """Energy VAD over 20 ms frames: collects speech, hands out a finished utterance after a pause."""

    vad: VadSettings
    _preroll: deque[bytes] = field(default_factory=deque)
    _speech: list[bytes] = field(default_factory=list)
    _voiced_ms: int = 0
    _silent_ms: int = 0

    def push(self, payload: bytes, level: int) -> bytes | None:
        frame_ms = FRAME_MS
        if not self._speech:
            if level < self.vad.threshold:
                self._preroll.append(payload)
                while len(self._preroll) * frame_ms > self.vad.preroll_ms:
                    self._preroll.popleft()
                return None
            self._speech = [*self._preroll, payload]
            self._preroll.clear()
            self._voiced_ms, self._silent_ms = frame_ms, 0
            return None
        self._speech.append(payload)
        if level >= self.vad.threshold:
            self._voiced_ms += frame_ms
            self._silent_ms = 0
        else:
            self._silent_ms += frame_ms
        too_long = len(self._speech) * frame_ms >= MAX_UTTERANCE_SECONDS * 1000
        if self._silent_ms < self.vad.pause_ms and not too_long:
            return None
        speech, voiced = self._speech, self._voiced_ms
        self._speech, self._voiced_ms, self._silent_ms = [], 0, 0
        if voiced < self.vad.min_speech_ms:
            return None
        # drop the trailing pause: the echo is the speech, not the silence after it
        keep = len(speech) - (0 if too_long else self.vad.pause_ms // frame_ms)
        return b"".join(speech[:keep])


@dataclass
class Call:
    """One stream's state, from its `start` message."""

    stream_id: str = ""
    call_id: str = ""
    encoding: str = "audio/x-l16"
    rate: int = 8000
    echoes: int = 0
    media_seen: int = 0
    media_logged_at: int = 0
    utterances: Utterances = field(default_factory=lambda: Utterances(VadSettings()))

    def level(self, payload: bytes) -> int:
        pcm = audioop.ulaw2lin(payload, 2) if self.encoding == "audio/x-mulaw" else payload
        return int(audioop.rms(pcm, 2)) if pcm else 0

    @property
    def bytes_per_second(self) -> int:
        return self.rate * (1 if self.encoding == "audio/x-mulaw" else 2)


class EchoBot:
    def __init__(self, *, vad: VadSettings, auth_token: str | None, verbose: bool) -> None:
        self.vad = vad
        self.auth_token = auth_token
        self.verbose = verbose

    def check_signature(self, conn: ServerConnection, request: Request) -> Response | None:
        if not self.auth_token:
            return None
        from plivo.utils.signature_v3 import validate_v3_signature

        headers: Headers = request.headers
        signature = headers.get("X-Plivo-Signature-V3", "")
        nonce = headers.get("X-Plivo-Signature-V3-Nonce", "")
        # The URL as the Node stream SDK rebuilds it: http(s) + the Host header + the request target.
        uri = f"http://{headers.get('Host', '')}{request.path}"
        valid = bool(signature and nonce) and validate_v3_signature("GET", uri, nonce, self.auth_token, signature)
        if not valid:
            log.warning("refused a connection from %s: bad or missing X-Plivo-Signature-V3", conn.remote_address)
            return conn.respond(403, "invalid signature\n")
        log.info("upgrade signature verified for %s", request.path)
        return None

    async def handle(self, conn: ServerConnection) -> None:
        call = Call(utterances=Utterances(self.vad))
        log.info("connection from %s", conn.remote_address)
        try:
            async for raw in conn:
                await self.on_message(conn, call, raw)
        except ConnectionClosed:
            pass
        log.info(
            "stream %s closed by the hub (%s), %d media frames, %d echoes",
            call.stream_id or "?",
            conn.close_code,
            call.media_seen,
            call.echoes,
        )

    async def on_message(self, conn: ServerConnection, call: Call, raw: str | bytes) -> None:
        try:
            message: dict[str, Any] = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            log.warning("<- not JSON: %r", raw[:200])
            return
        event = message.get("event")
        if event == "media":
            self.on_media(call, message)
            utterance = None
            media = message.get("media") or {}
            if media.get("track", "inbound") == "inbound":
                payload = base64.b64decode(media.get("payload", ""))
                utterance = call.utterances.push(payload, call.level(payload))
            if utterance:
                await self.echo(conn, call, utterance)
            return
        log.info("<- %s", json.dumps(message, separators=(",", ":")))
        if event == "start":
            start = message.get("start") or {}
            media_format = start.get("mediaFormat") or {}
            call.stream_id, call.call_id = start.get("streamId", ""), start.get("callId", "")
            call.encoding = media_format.get("encoding", "audio/x-l16")
            call.rate = int(media_format.get("sampleRate", 8000))
        elif event == "dtmf" and (message.get("dtmf") or {}).get("digit") == "*":
            await self.send(conn, {"event": "clearAudio", "streamId": call.stream_id})

    def on_media(self, call: Call, message: dict[str, Any]) -> None:
        call.media_seen += 1
        media = message.get("media") or {}
        if self.verbose:
            log.info(
                "<- media %s chunk %s (%d B)", media.get("track"), media.get("chunk"), len(media.get("payload", ""))
            )
            return
        per_second = 1000 // FRAME_MS
        if call.media_seen - call.media_logged_at >= per_second:
            log.info(
                "<- media ×%d (sequenceNumber %s, %s chunk %s)",
                call.media_seen - call.media_logged_at,
                message.get("sequenceNumber"),
                media.get("track"),
                media.get("chunk"),
            )
            call.media_logged_at = call.media_seen

    async def echo(self, conn: ServerConnection, call: Call, audio: bytes) -> None:
        call.echoes += 1
        seconds = len(audio) / call.bytes_per_second
        log.info("heard %.2f s of speech; echoing it as echo-%d", seconds, call.echoes)
        step = int(PLAY_CHUNK_SECONDS * call.bytes_per_second)
        for i in range(0, len(audio), step):
            media = {
                "contentType": call.encoding,
                "sampleRate": call.rate,
                "payload": base64.b64encode(audio[i : i + step]).decode("ascii"),
            }
            await self.send(conn, {"event": "playAudio", "media": media}, summary=f"{len(audio[i : i + step])} B")
        await self.send(conn, {"event": "checkpoint", "streamId": call.stream_id, "name": f"echo-{call.echoes}"})

    async def send(self, conn: ServerConnection, message: dict[str, Any], *, summary: str = "") -> None:
        if summary:
            log.info("-> %s (%s)", message["event"], summary)
        else:
            log.info("-> %s", json.dumps(message, separators=(",", ":")))
        with contextlib.suppress(ConnectionClosed):  # the hub hung up meanwhile: nothing left to say
            await conn.send(json.dumps(message))


async def main(args: argparse.Namespace) -> None:
    bot = EchoBot(
        vad=VadSettings(threshold=args.threshold, pause_ms=args.pause_ms),
        auth_token=args.auth_token,
        verbose=args.verbose,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with serve(bot.handle, args.host, args.port, process_request=bot.check_signature, max_size=2**24) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        # One machine-readable line first: bin/demo waits for it to learn the port.
        print(f"echo bot listening on ws://{args.host}:{port}/", flush=True)
        await stop.wait()
    log.info("echo bot stopped")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Plivo Audio Streams echo bot (example customer service)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--auth-token",
        default=os.getenv("PLIVO_AUTH_TOKEN") or None,
        help="verify the hub's upgrade signature with this account token (default: $PLIVO_AUTH_TOKEN)",
    )
    parser.add_argument("--threshold", type=int, default=VadSettings.threshold, help="speech RMS level (16-bit)")
    parser.add_argument("--pause-ms", type=int, default=VadSettings.pause_ms, help="silence that ends an utterance")
    parser.add_argument("--verbose", action="store_true", help="log every media message, not one line per second")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    asyncio.run(main(parse_args()))
