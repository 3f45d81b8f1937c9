"""The embedded Celery broker: kombu's filesystem transport, made crash-safe.

kombu's filesystem transport (5.7) writes a message file in place, under a lock its
reader never takes: a worker polling the folder can move and read a file that is still
empty or half-written, and dies with `Unrecoverable error: JSONDecodeError` (seen 4 ms
after the beat published a sweep). Here:

- a message is written to a hidden temporary file in the same folder, flushed, and
  renamed into place (`os.replace`, atomic on one filesystem), so a reader sees a whole
  message or none;
- a reader claims a file by renaming it into the processed folder (same filesystem, so
  atomic: two workers never get the same message), then reads and deletes it; one
  listing of the folder serves the following gets (in name order, oldest first);
- a file that still cannot be decoded (a disk that lost a write at power loss) is moved
  to `corrupt/` beside the queue and logged, and the worker goes on with the next one.

A message is lost only if a process dies between claiming and running it; the callback
outbox does not depend on the broker for that (its sweep re-queues from the rows).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any, cast

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils import json as kombu_json

# kombu's JSON (it knows the types Celery puts in messages), typed for this module
dumps = cast(Callable[[Any], str], kombu_json.dumps)
loads = cast(Callable[[str | bytes], Any], kombu_json.loads)

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"  # never matches the reader's `<name>.<queue>.msg`


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu names it twice
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = Path(self.data_folder_out)
        temp = folder / f"{TEMP_PREFIX}{name}"
        try:
            # No fsync: a crashed process leaves a whole file or a stray temporary one; a torn
            # file after a power loss is quarantined by the reader, and the outbox sweep re-queues.
            temp.write_bytes(dumps(payload).encode())
            os.replace(temp, folder / name)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise ChannelError(f"Cannot add file {name!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}.msg"
        inbox = Path(self.data_folder_in)
        claimed_dir = Path(self.processed_folder)
        # One listing serves many gets (kombu lists and sorts the whole folder for each one,
        # which made a backlog of 10,000 messages drain at 20 a second).
        backlog = self._backlogs.setdefault(queue, [])
        if not backlog:
            backlog.extend(
                sorted(
                    (n for n in os.listdir(inbox) if not n.startswith(TEMP_PREFIX) and n.partition(".")[2] == wanted),
                    reverse=True,
                )
            )
        while backlog:
            name = backlog.pop()
            claimed = claimed_dir / name
            try:
                os.replace(inbox / name, claimed)  # the claim: exactly one reader wins
            except OSError:
                continue
            try:
                payload = claimed.read_bytes()
            except OSError as exc:
                raise ChannelError(f"Cannot read file {name!r} from queue.") from exc
            try:
                message = loads(payload)
            except (ValueError, json.JSONDecodeError):
                corrupt = inbox.parent / "corrupt"
                corrupt.mkdir(exist_ok=True)
                os.replace(claimed, corrupt / name)
                log.error("broker: message %s cannot be decoded (%d bytes); moved to %s", name, len(payload), corrupt)
                continue
            if not self.store_processed:
                claimed.unlink(missing_ok=True)
            return message
        raise Empty()

    @property
    def _backlogs(self) -> dict[str, list[str]]:
        backlogs: dict[str, list[str]] | None = self.__dict__.get("_streamhub_backlogs")
        if backlogs is None:
            backlogs = self.__dict__["_streamhub_backlogs"] = {}
        return backlogs


class Transport(filesystem.Transport):
    Channel = Channel
