"""How the hub is started under each supported ASGI server (the tests and the bench use these).

uvicorn is the production server (bench/RESULTS.md); the Procfile, the systemd unit and
bin/demo spell out the same flags. daphne, the design card's server, serves the same app.
"""

from __future__ import annotations

import sys

SERVERS = ("daphne", "uvicorn")
APPLICATION = "streamhub.asgi:application"
# uvloop; the hub's WebSocket protocol (uvicorn's websockets-sansio with audio frames parsed and
# delivered without a queue per frame: streams/live/wsserver.py); D14's 16 MiB message limit; no
# permessage-deflate (PCM hardly compresses; inflating costs CPU per frame); no lifespan protocol
# (Channels' router has none)
WS_PROTOCOL = "streams.live.wsserver:IngestWebSocketProtocol"
UVICORN_FLAGS = (
    "--loop",
    "uvloop",
    "--ws",
    WS_PROTOCOL,
    "--ws-max-size",
    "16777216",
    "--ws-per-message-deflate",
    "false",
    "--lifespan",
    "off",
)


def hub_command(
    server: str,
    port: int,
    *,
    python: str = sys.executable,
    quiet: bool = False,
    ws: str | None = None,
    workers: int = 1,
    application: str = APPLICATION,
) -> list[str]:
    """The command line of one hub process on 127.0.0.1:`port`; `quiet` logs warnings only;
    `ws` replaces uvicorn's WebSocket protocol (the bench compares them); `workers` > 1 runs
    that many uvicorn worker processes on the one port (one per core; they need REDIS_URL);
    `application` replaces the ASGI application (a test wraps the hub's)."""
    if server == "daphne":
        return [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), application]
    if server != "uvicorn":
        raise ValueError(f"unknown server {server!r}: choose one of {', '.join(SERVERS)}")
    log = ["--log-level", "warning"] if quiet else []
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    flags = list(UVICORN_FLAGS)
    if ws is not None:
        flags[flags.index("--ws") + 1] = ws
    many = ["--workers", str(workers)] if workers > 1 else []
    return [python, "-m", "uvicorn", *listen, *flags, *many, "--no-access-log", *log, application]
