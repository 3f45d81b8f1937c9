"""Process logs: plain text by default, one JSON object per line with STREAMHUB_LOG_FORMAT=json.

Every line says when, how bad, which logger and what; where the code knows them, also the
ids an operator searches by: `call_uuid`, `stream_id`, `account` (auth id) and `event`.
They come from two places:
- context variables, bound where a call or a stream begins (`bind` / `log_context`): the
  call session binds the call and account in the ingest connection's task, the relay's
  tasks inherit them and add their stream, so every line a relay logs carries all three
  (asyncio copies the context into each task it creates, and asgiref into each DB thread);
- `extra=` on a single log call (`callback_log_ids` for the worker's delivery lines),
  which wins over the context.

Secrets never reach either format: both formatters pass the finished text (message and
traceback) through `redact`, which blanks credentials in URL query strings
(`?token=…`, `auth_token=…`, `signature=…`), user:password@ in URLs, and
`Authorization`-style Basic/Bearer values.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

IDS = ("call_uuid", "stream_id", "account", "event")
_vars: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"streamhub_log_{name}", default=None) for name in IDS
}

REDACTED = "[redacted]"
_SECRET_PARAM = re.compile(
    r"(?i)((?:^|[?&;\s\"'])(?:[a-z0-9_.-]*(?:token|secret|password|passwd|pwd|signature|sig|key|auth)(?:-v\d+)?)=)"
    r"[^&\s\"'#;]+"
)
# credentials are long (base64 of id:token, bearer tokens): "Basic auth failed" stays readable
_AUTH_HEADER = re.compile(r"(?i)\b(basic|bearer)(\s+|:\s*|=)([A-Za-z0-9._~+/=-]{12,})")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@:]+:[^/\s@]+@")


def redact(text: str) -> str:
    """The text with credentials blanked (see the module docstring)."""
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _SECRET_PARAM.sub(rf"\1{REDACTED}", text)
    return _AUTH_HEADER.sub(rf"\1\2{REDACTED}", text)


def bind(**values: str | None) -> None:
    """Set ids for the rest of this task (or thread): later log lines carry them."""
    for name, value in values.items():
        _vars[name].set(value or None)


@contextlib.contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    """Ids for the lines logged inside the block, and for the tasks created inside it."""
    tokens = [(_vars[name], _vars[name].set(value or None)) for name, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def ids(**values: str | None) -> dict[str, str]:
    """`extra=` for one log call: the given ids that are set."""
    return {name: str(value) for name, value in values.items() if value and name in _vars}


def callback_log_ids(params: object, event: str) -> dict[str, str]:
    """The ids of a status callback, from its stored parameters (spec §6.2)."""
    known = params if isinstance(params, dict) else {}
    return ids(
        call_uuid=known.get("CallUUID"), stream_id=known.get("StreamID"), account=known.get("ParentAuthID"), event=event
    )


def record_ids(record: logging.LogRecord) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in IDS:
        value = getattr(record, name, None) or _vars[name].get()
        if value:
            found[name] = str(value)
    return found


class TextFormatter(logging.Formatter):
    """The default: `time level logger message [ids]`, redacted."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: Any = "%", **kw: Any) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s %(message)s", datefmt, style, **kw)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        found = record_ids(record)
        if found:
            first, newline, rest = text.partition("\n")
            text = first + " [" + " ".join(f"{k}={v}" for k, v in found.items()) + "]" + newline + rest
        return redact(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO 8601), level, logger, message, ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update(record_ids(record))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        entry["process"] = record.process
        return json.dumps(entry, ensure_ascii=False, default=str)


def logging_config(*, fmt: str, level: str) -> dict[str, Any]:
    """settings.LOGGING for the chosen format (the Celery worker and beat use it too)."""
    formatter = "streamhub.logs.JsonFormatter" if fmt == "json" else "streamhub.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": {"()": formatter}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "main"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.channels.server": {"level": "WARNING"},
            "daphne": {"level": "WARNING"},
            # uvicorn configures its own loggers with handlers; send them through ours instead
            "uvicorn": {"handlers": ["console"], "propagate": False},
            "uvicorn.error": {"handlers": ["console"], "propagate": False},
            "uvicorn.access": {"handlers": ["console"], "propagate": False},
        },
    }
