"""CPU of a call's lifecycle writes, step by step: what set-up and hang-up cost the hub's database thread.

    DATABASE_URL=… .venv/bin/python bench/setup_cpu.py [--calls 100] [--tree DIR]

Runs the database side of N calls one after another, as the hub does for a gateway call with one
one-way stream and no status callback: authenticate the gateway, open the call with its stream,
mark the stream started (with its queued debug rows), end it, end the call (one step, the stream's end
inside the call's, where the tree does that; --separate: two). Each step's thread
CPU (time.thread_time: user + system of this thread, so other processes' load shows up far less
than in wall time) is averaged per call. --tree DIR imports the code of another checkout (e.g.
`git archive` of an older commit; its own sequence of calls is used when it predates the batched
lifecycle), so before and after run against the same database minutes apart. The event loop's
side of set-up (the upgrade, the channel layer's group, the customer's connect) is not in these
figures; bench/run.py's "setup ms" is the whole process's.
"""

from __future__ import annotations

import argparse
import base64
import inspect
import os
import sys
import time
from pathlib import Path
from typing import Any

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--calls", type=int, default=100)
parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
parser.add_argument("--separate", action="store_true", help="stream end, then call end (before 556ffc8)")
args = parser.parse_args()
sys.path.insert(0, str(Path(args.tree).resolve()))
os.chdir(args.tree)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "streamhub.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + "x" * 40)
os.environ.setdefault("STREAMHUB_LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from streams import services  # noqa: E402
from streams.core import audiofork  # noqa: E402
from streams.core.validation import validate_stream_params  # noqa: E402
from streams.live import gateway_auth  # noqa: E402
from streams.live.session import _open_call  # noqa: E402
from streams.models import Account  # noqa: E402

call_command("migrate", verbosity=0)
try:  # the hub's database threads bound their sessions once (streams.live.dbasync); do the same here
    from streamhub.dbguard import bound_session

    bound_session()
except ImportError:  # older trees: per transaction
    pass
account = Account.objects.filter(is_active=True).first() or Account.objects.create(name="setup-cpu")
times: dict[str, float] = {}


def step(name: str, fn: Any, *a: Any, **k: Any) -> Any:
    cpu = time.thread_time()
    result = fn(*a, **k)
    times[name] = times.get(name, 0.0) + time.thread_time() - cpu
    return result


creds = base64.b64encode(f"{account.auth_id}:{account.auth_token}".encode())
scope = {"headers": [(b"authorization", b"Basic " + creds)], "query_string": b""}
batched = hasattr(services, "call_open_with_streams")
folded = "stream_ends" in inspect.signature(services.call_end).parameters  # --separate: the old two steps
if args.separate:
    folded = False
stats = {"frames_sent": 100, "played_ms": 0, "buffer_samples": [[0, 0]]}
text = '{"callId": null, "streams": [{"serviceUrl": "ws://127.0.0.1:9/c/1"}]}'
cached = getattr(gateway_auth, "cached", lambda scope: None)  # older trees query every time
for _ in range(args.calls):
    step("authenticate", lambda: cached(scope) or gateway_auth.authenticate(scope))
    meta = audiofork.parse_gateway_metadata(text, defaults={})
    params = validate_stream_params(meta.streams[0], forbid_private_callbacks=False)
    if batched:
        call, created = step(
            "open call + stream",
            _open_call,
            account=account,
            meta=meta,
            gateway="audio-fork",
            streams=[params],
            **({"server_id": "setup-cpu#0"} if "server_id" in inspect.signature(_open_call).parameters else {}),
        )
        stream = created[0]
        stream.account, stream.call = account, call
        step(
            "connected + started",
            services.stream_mark_started,
            stream=stream,
            log_entries=[("Connected", "", {"Attempt": 1})],
        )
    else:
        call = step("open call + stream", _open_call, account=account, meta=meta, gateway="audio-fork")
        stream = step("open call + stream", services.stream_create, call=call, params=params, notify_session=False)
        stream.account, stream.call = account, call
        step(
            "connected + started", services.stream_log_batch, stream=stream, entries=[("Connected", "", {"Attempt": 1})]
        )
        step("connected + started", services.stream_mark_started, stream=stream)
    if folded:  # the session's hang-up: the stream's end written in the call's transaction
        end = {"stream": stream, "reason": "Call hangup", "stats": stats, "log_entries": []}
        step("hang-up (stream + call end)", services.call_end, call=call, notify_session=False, stream_ends=[end])
    else:
        step("stream end", services.stream_end, stream=stream, reason="Call hangup", stats=stats, notify_session=False)
        step("call end", services.call_end, call=call, notify_session=False)
load = " ".join(f"{v:.2f}" for v in os.getloadavg())
print(f"# {args.calls} calls, code from {args.tree}, load average {load}")
for name, seconds in times.items():
    print(f"{name:22} {1000 * seconds / args.calls:6.2f} ms")
print(f"{'total':22} {1000 * sum(times.values()) / args.calls:6.2f} ms per call")
