"""The process's control mailbox (streams/live/mailbox.py) over the configured channel layer
(in-memory by default, Redis with REDIS_URL): what streams.control sends reaches the call's
handler, in order, and a message that arrives before its call is registered is kept for it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from streams import control
from streams.live import mailbox as mailbox_module
from streams.live.mailbox import Mailbox
from streams.models import Call


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def call_on(box: Mailbox) -> Call:
    return Call(call_uuid=uuid.uuid4(), control_channel=box.channel)  # unsaved: control reads only these


async def test_messages_reach_their_call_in_the_order_sent_and_others_are_not_disturbed() -> None:
    box = Mailbox()
    assert (await box.open()).startswith("hub.")
    first, second = call_on(box), call_on(box)
    got: dict[str, list[str]] = {"first": [], "second": []}

    def handler(name: str, slow: bool) -> Any:
        async def handle(message: dict[str, Any]) -> None:
            if slow:
                # the earlier the message, the slower: only waiting for the one before keeps the order
                await asyncio.sleep(0.01 * (5 - int(message["n"])))
            got[name].append(message["n"])

        return handle

    box.register(str(first.call_uuid), handler("first", slow=True))
    box.register(str(second.call_uuid), handler("second", slow=False))
    for n in range(5):
        await control.asend_to_call(first, {"type": "stream.stop", "n": str(n)})
    await control.asend_to_call(second, {"type": "call.hangup", "n": "x"})
    await until(lambda: len(got["first"]) == 5 and got["second"])
    assert got == {"first": ["0", "1", "2", "3", "4"], "second": ["x"]}
    await box.close()


async def test_a_message_sent_before_its_call_registers_is_kept_for_it() -> None:
    box = Mailbox()
    await box.open()
    call = call_on(box)
    await control.asend_to_call(call, {"type": "stream.start", "stream_id": "s1"})
    await until(lambda: str(call.call_uuid) in box._pending)
    got: list[dict[str, Any]] = []

    async def handle(message: dict[str, Any]) -> None:
        got.append(message)

    box.register(str(call.call_uuid), handle)
    await until(lambda: bool(got))
    assert got == [{"type": "stream.start", "stream_id": "s1", "call": str(call.call_uuid)}]
    box.unregister(str(call.call_uuid))
    await control.asend_to_call(call, {"type": "stream.stop", "stream_id": "s1"})  # after its end: kept, not run
    await until(lambda: str(call.call_uuid) in box._pending)
    assert len(got) == 1
    await box.close()


def test_kept_messages_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    box = Mailbox()
    clock = [100.0]
    monkeypatch.setattr(mailbox_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(mailbox_module, "PENDING_CALLS_MAX", 3)
    for n in range(3):
        box.deliver({"type": "stream.stop", "call": f"c{n}"})
    box.deliver({"type": "stream.stop", "call": "c3"})  # a fourth call: the longest waiting goes
    assert list(box._pending) == ["c1", "c2", "c3"] and box.dropped == 1
    for _ in range(mailbox_module.PENDING_PER_CALL_MAX + 5):
        box.deliver({"type": "stream.stop", "call": "c3"})
    assert len(box._pending["c3"]) == mailbox_module.PENDING_PER_CALL_MAX and box.dropped == 7
    clock[0] += mailbox_module.PENDING_SECONDS
    box.deliver({"type": "stream.stop", "call": "c9"})  # everything older than PENDING_SECONDS expired
    assert list(box._pending) == ["c9"]
    assert box.dropped == 7 + 2 + mailbox_module.PENDING_PER_CALL_MAX
