"""An example Plivo application server: the answer URL returns Plivo XML that streams the call to a bot.

This is what a Plivo user writes (the pipecat Plivo runner does the same): `POST /answer`
answers with XML built by the `plivo` SDK's `plivoxml`,

    <Response>
      <Stream bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000"
              statusCallbackUrl="…">wss://bot…/ws</Stream>
    </Response>

so the call is streamed to `--bot-url` (e.g. examples/echo_bot.py) until the bot or the
caller hangs up; `POST /hangup` prints what Plivo (or the hub) reports at the call's end.
Both check the `X-Plivo-Signature-V3` header with the SDK's `validate_v3_signature` and
the account's auth token, and answer 403 when it is wrong. Each request prints a summary
line and an `answer {…}` / `hangup {…}` JSON line. GET works too (parameters in the query).

    PLIVO_AUTH_TOKEN=… python examples/answer_app.py --port 8767 --bot-url ws://127.0.0.1:8765/
    # --port 0 picks a free port; the first line printed says which; then create the application:
    # manage.py create_application <auth_id> "Echo bot" --answer-url http://127.0.0.1:8767/answer \\
    #     --hangup-url http://127.0.0.1:8767/hangup
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from plivo import plivoxml
from plivo.utils.signature_v3 import validate_v3_signature

MAX_BODY = 64 * 1024


def answer_xml(bot_url: str, *, status_callback_url: str | None, keep_call_alive: bool = True) -> str:
    """The Plivo XML of a voice-bot application: one bidirectional μ-law stream that holds the call."""
    response = plivoxml.ResponseElement()
    response.add(
        plivoxml.StreamElement(
            bot_url,
            bidirectional=True,
            keepCallAlive=keep_call_alive,
            contentType="audio/x-mulaw;rate=8000",
            statusCallbackUrl=status_callback_url,
            statusCallbackMethod="POST" if status_callback_url else None,
        )
    )
    return str(response.to_string())


class AnswerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], *, auth_token: str, bot_url: str, status_callback_url: str | None
    ) -> None:
        super().__init__(address, AnswerHandler)
        self.auth_token = auth_token
        self.xml = answer_xml(bot_url, status_callback_url=status_callback_url)
        self.lock = threading.Lock()


class AnswerHandler(BaseHTTPRequestHandler):
    server: AnswerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle_request(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.answer(413, "text/plain", "too large\n")
            return
        body = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
        query = urlsplit(self.path).query
        params = dict(parse_qsl(body if self.command == "POST" else query, keep_blank_values=True))
        try:
            valid = bool(
                validate_v3_signature(
                    self.command,
                    f"http://{self.headers.get('Host', '')}{self.path}",
                    self.headers.get("X-Plivo-Signature-V3-Nonce", ""),
                    self.server.auth_token,
                    self.headers.get("X-Plivo-Signature-V3", ""),
                    params if self.command == "POST" else None,
                )
            )
        except Exception:  # the SDK's argument validators raise on malformed input
            valid = False
        path = urlsplit(self.path).path.rstrip("/")
        kind = {"/answer": "answer", "/hangup": "hangup"}.get(path)
        note = "signature valid" if valid else "SIGNATURE INVALID (answered 403)"
        summary = f"call={params.get('CallUUID', '?')} from={params.get('From', '?')} to={params.get('To', '?')}"
        if kind == "hangup":
            summary += f" cause={params.get('HangupCauseName', '?')} source={params.get('HangupSource', '?')}"
            summary += f" duration={params.get('Duration', '?')} s"
        print(f"{time.strftime('%H:%M:%S')} {self.command} {path or '/'} {summary} — {note}", flush=True)
        print(f"{kind or 'request'} " + json.dumps({"valid": valid, "params": params}, sort_keys=True), flush=True)
        if not valid:
            self.answer(403, "text/plain", "invalid signature\n")
        elif kind == "answer":
            self.answer(200, "application/xml", self.server.xml)
        elif kind == "hangup":
            self.answer(200, "text/plain", "ok\n")
        else:
            self.answer(404, "text/plain", "use /answer or /hangup\n")

    def answer(self, status: int, content_type: str, text: str) -> None:
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = handle_request
    do_POST = handle_request


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A Plivo-style answer server that streams calls to a bot")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8767, help="0 picks a free port")
    parser.add_argument("--bot-url", required=True, help="the bot's ws:// or wss:// URL (e.g. examples/echo_bot.py)")
    parser.add_argument("--status-callback-url", help="the stream's statusCallbackUrl (optional)")
    parser.add_argument(
        "--auth-token",
        default=os.getenv("PLIVO_AUTH_TOKEN") or None,
        help="the account's auth token (default: $PLIVO_AUTH_TOKEN)",
    )
    args = parser.parse_args(argv)
    if not args.auth_token:
        parser.error("an auth token is needed to verify signatures: --auth-token or $PLIVO_AUTH_TOKEN")
    server = AnswerServer(
        (args.host, args.port),
        auth_token=args.auth_token,
        bot_url=args.bot_url,
        status_callback_url=args.status_callback_url,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    base = f"http://{args.host}:{server.server_address[1]}"
    print(f"answer app listening on {base}/answer (hangup URL {base}/hangup)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("answer app stopped", flush=True)


if __name__ == "__main__":
    main()
