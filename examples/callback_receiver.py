"""An example status-callback receiver: verifies Plivo's V3 signature and prints each callback.

Point a stream's `statusCallbackUrl` / `status_callback_url` here. Every request is
checked with the `plivo` SDK's own validator (`validate_v3_signature`) and the account's
auth token, exactly as a customer's server would check callbacks from Plivo: over the
URL the request was sent to and, for POST, the form fields. A valid callback is answered
200; a bad signature 403 (the hub then marks the delivery failed without retrying).
Deliveries are at-least-once, so a repeated `webhook-id` is acknowledged but reported as
a duplicate.

Each callback prints one summary line, then its parameters as one JSON line prefixed
`callback ` (easy to grep or parse).

    PLIVO_AUTH_TOKEN=… .venv/bin/python examples/callback_receiver.py --port 8766
    # --port 0 picks a free port; the first line printed says which
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

from plivo.utils.signature_v3 import validate_v3_signature

MAX_BODY = 64 * 1024
SEEN_LIMIT = 10_000


class CallbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, auth_token: str, public_url: str | None) -> None:
        super().__init__(address, CallbackHandler)
        self.auth_token = auth_token
        self.public_url = public_url.rstrip("/") if public_url else None
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()

    def first_time(self, webhook_id: str) -> bool:
        if not webhook_id:
            return True
        with self.lock:
            if webhook_id in self.seen:
                return False
            if len(self.seen) >= SEEN_LIMIT:
                self.seen.pop(next(iter(self.seen)))
            self.seen[webhook_id] = time.time()
            return True


class CallbackHandler(BaseHTTPRequestHandler):
    server: CallbackServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per callback is printed below; the access log would double it

    def signed_url(self) -> str:
        # Behind a proxy the hub signed the public URL, not the one this socket sees.
        base = self.server.public_url or f"http://{self.headers.get('Host', '')}"
        return base + self.path

    def handle_callback(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.answer(413, "too large")
            return
        body = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
        if self.command == "POST":
            params = dict(parse_qsl(body, keep_blank_values=True))
        else:
            params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        try:
            valid = bool(
                validate_v3_signature(
                    self.command,
                    self.signed_url(),
                    self.headers.get("X-Plivo-Signature-V3-Nonce", ""),
                    self.server.auth_token,
                    self.headers.get("X-Plivo-Signature-V3", ""),
                    params if self.command == "POST" else None,
                )
            )
        except Exception:  # the SDK's argument validators raise on malformed input
            valid = False
        webhook_id = self.headers.get("webhook-id", "")
        fresh = valid and self.server.first_time(webhook_id)
        note = "signature valid" if valid else "SIGNATURE INVALID (answered 403)"
        if valid and not fresh:
            note += ", duplicate webhook-id (already handled)"
        event = params.get("Event", "?")
        extra = f" reason={params['HangupReason']}" if "HangupReason" in params else ""
        if "Error" in params:
            extra += f" error={params['Error']!r}"
        print(
            f"{time.strftime('%H:%M:%S')} {self.command} {event} stream={params.get('StreamID', '?')}{extra} — {note}",
            flush=True,
        )
        record = {"method": self.command, "valid": valid, "duplicate": valid and not fresh, "webhook_id": webhook_id}
        print("callback " + json.dumps({**record, "params": params}, sort_keys=True), flush=True)
        self.answer(200 if valid else 403, "ok" if valid else "invalid signature")

    def answer(self, status: int, text: str) -> None:
        payload = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = handle_callback
    do_POST = handle_callback


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print signed Plivo-style status callbacks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766, help="0 picks a free port")
    parser.add_argument(
        "--auth-token",
        default=os.getenv("PLIVO_AUTH_TOKEN") or None,
        help="the account's auth token (default: $PLIVO_AUTH_TOKEN)",
    )
    parser.add_argument("--public-url", help="the base URL the hub calls, when a proxy sits in front (https://…)")
    args = parser.parse_args(argv)
    if not args.auth_token:
        parser.error("an auth token is needed to verify signatures: --auth-token or $PLIVO_AUTH_TOKEN")
    server = CallbackServer((args.host, args.port), auth_token=args.auth_token, public_url=args.public_url)
    # serve_forever blocks this thread; a signal handler stops it from another one.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"status callback receiver listening on http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("status callback receiver stopped", flush=True)


if __name__ == "__main__":
    main()
