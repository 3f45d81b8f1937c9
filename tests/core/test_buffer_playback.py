from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.buffer import Degraded, Overflow, SendBuffer
from streams.core.playback import Pacer, PlaybackQueue, QueueFull


def fill(buf: SendBuffer, frames: int, seconds: float = 0.02, now: float = 0.0) -> list[object]:
    events: list[object] = []
    for i in range(frames):
        events += buf.push(f"m{i}", seconds, now)
    return events


def test_degraded_once_per_upward_crossing_then_overflow() -> None:
    buf = SendBuffer(1.0)  # 50 frames
    assert fill(buf, 14) == []
    assert fill(buf, 1) == [Degraded(30)]
    assert fill(buf, 15) == [Degraded(60)]
    assert fill(buf, 15) == [Degraded(90)]
    assert fill(buf, 5) == []
    assert fill(buf, 1) == [Overflow(pytest.approx(1.02), 51)]


def test_thresholds_rearm_after_draining() -> None:
    buf = SendBuffer(1.0, min_interval=30)
    fill(buf, 16, now=0.0)
    for _ in range(16):
        buf.popleft()
    assert buf.queued == pytest.approx(0)
    assert fill(buf, 16, now=31.0) == [Degraded(30)]


def test_both_tracks_count_call_time_once() -> None:
    buf = SendBuffer(1.0)
    for _ in range(20):
        buf.push("in", 0.02, 0.0)
        buf.push("out", 0.0, 0.0)
    assert buf.queued == pytest.approx(0.4) and len(buf) == 40


@given(st.lists(st.booleans(), max_size=300))
def test_buffer_is_fifo_and_accounting_never_goes_negative(ops: list[bool]) -> None:
    buf, pushed, popped = SendBuffer(100.0), 0, []
    for push in ops:
        if push or not len(buf):
            buf.push(str(pushed), 0.02, 0.0)
            pushed += 1
        else:
            popped.append(buf.popleft())
    assert popped == [str(i) for i in range(len(popped))]
    assert buf.queued == pytest.approx(0.02 * len(buf))


class Clock:
    """A fake monotonic clock advanced by 20 ms per frame."""

    def __init__(self) -> None:
        self.now = 0.0

    def tick(self) -> float:
        self.now += 0.020
        return self.now


def hold_at(buf: SendBuffer, clock: Clock, target_pct: float, seconds: float) -> list[object]:
    """A customer that reads at exactly real time with a backlog of `target_pct` % (one pop per push,
    one push per 20 ms frame once the backlog is there): usage wobbles one frame around the target."""
    events: list[object] = []
    while buf.usage_pct < target_pct:
        events += buf.push("m", 0.02, clock.tick())
    for _ in range(round(seconds / 0.02)):
        buf.popleft()
        events += buf.push("m", 0.02, clock.tick())
    return events


def test_a_backlog_held_at_a_threshold_is_one_notice_not_one_per_frame() -> None:
    """The review's measurement: 500 Degraded(30) in 500 frames before hysteresis; the real 40 s / 30 s numbers."""
    buf, clock = SendBuffer(40.0, min_interval=30.0), Clock()
    assert hold_at(buf, clock, 30, 60) == [Degraded(30)]
    assert hold_at(buf, clock, 60, 60) == [Degraded(60)]


def test_a_threshold_rearms_only_ten_points_below_it() -> None:
    buf, clock = SendBuffer(40.0, min_interval=30.0), Clock()
    assert hold_at(buf, clock, 30, 1) == [Degraded(30)]
    while buf.usage_pct >= 21:  # recovered to 21 %: not re-armed
        buf.popleft()
    clock.now += 60
    assert hold_at(buf, clock, 30, 1) == []
    while buf.usage_pct >= 19.9:  # below 20 %: re-armed
        buf.popleft()
    clock.now += 60
    assert hold_at(buf, clock, 30, 1) == [Degraded(30)]


def test_a_rearmed_threshold_waits_out_the_minimum_interval() -> None:
    buf, clock = SendBuffer(40.0, min_interval=30.0), Clock()
    assert hold_at(buf, clock, 30, 0) == [Degraded(30)]
    fired = clock.now
    while buf:  # recovers completely, at once
        buf.popleft()
    events = hold_at(buf, clock, 30, 40)  # and slows again straight away
    assert events == [Degraded(30)]
    # the second notice came when the interval had passed, not at the crossing (12 s after the first)
    assert buf._fired_at[30] - fired == pytest.approx(30.0, abs=0.03)


def test_the_item_bound_overflows_on_messages_that_weigh_no_audio() -> None:
    buf = SendBuffer(1.0, max_items=10)
    events = [buf.push(f"played{i}", 0.0, 0.0) for i in range(11)]
    assert events[:10] == [[]] * 10
    assert events[10] == [Overflow(0.0, 11)]


def test_the_default_item_bound_holds_a_full_both_track_buffer_and_a_thousand_others() -> None:
    buf = SendBuffer(1.0)
    assert buf.max_items == 2 * 50 + 1000
    events: list[object] = []
    for _ in range(50):
        events += buf.push("in", 0.02, 0.0) + buf.push("out", 0.0, 0.0)
    events += fill(buf, 1000, seconds=0.0)
    assert not any(isinstance(e, Overflow) for e in events)
    assert isinstance(buf.push("one more", 0.0, 0.0)[0], Overflow)


def test_clips_are_framed_and_padded_and_checkpoints_ride_behind_them() -> None:
    q = PlaybackQueue(320, 60)
    assert q.append_checkpoint("s1", "early") is False  # nothing queued: due now
    assert q.append_audio("s1", b"\x01" * 700) == 3
    assert q.append_checkpoint("s1", "c1") is True
    frames = [q.next_frame() for _ in range(3)]
    assert [len(f.pcm) for f in frames] == [320, 320, 320]
    assert frames[2].pcm == b"\x01" * 60 + b"\x00" * 260
    assert [f.checkpoints for f in frames] == [(), (), ("c1",)]
    assert q.next_frame() is None


def test_clear_drops_only_the_owner_and_its_checkpoints() -> None:
    q = PlaybackQueue(320, 60)
    q.append_audio("a", b"\x01" * 640)
    q.append_checkpoint("a", "a-done")
    q.append_audio("b", b"\x02" * 320)
    q.append_checkpoint("b", "b-done")
    assert q.clear("a") == (2, ["a-done"])
    played = q.next_frame()
    assert played.owner == "b" and played.checkpoints == ("b-done",)


def test_queue_bound_refuses_a_clip_without_losing_what_is_queued() -> None:
    q = PlaybackQueue(320, 1.0)  # 50 frames
    q.append_audio("a", b"\x01" * 320 * 40)
    with pytest.raises(QueueFull, match="bound"):
        q.append_audio("a", b"\x01" * 320 * 20)
    assert len(q) == 40


@given(
    st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["audio", "mark", "clear", "play"])), max_size=60)
)
def test_checkpoints_are_acked_in_order_unless_cleared(ops: list[tuple[str, str]]) -> None:
    q = PlaybackQueue(320, 60)
    due: list[str] = []
    dropped: list[str] = []
    marks = 0
    for owner, op in ops:
        if op == "audio":
            q.append_audio(owner, b"\x01" * 500)
        elif op == "mark":
            name = f"{owner}{marks}"
            marks += 1
            if not q.append_checkpoint(owner, name):
                due.append(name)
        elif op == "clear":
            dropped += q.clear(owner)[1]
        else:
            frame = q.next_frame()
            if frame:
                due += frame.checkpoints
    while (frame := q.next_frame()) is not None:
        due += frame.checkpoints
    assert set(due).isdisjoint(dropped)
    assert len(due) + len(dropped) == marks
    for owner in "ab":
        mine = [int(n[1:]) for n in due if n[0] == owner]
        assert mine == sorted(mine)


def test_pacer_uses_absolute_deadlines_without_drift() -> None:
    pacer, now = Pacer(), 100.0
    sent_at = []
    for _ in range(3000):  # a minute of frames, each sent 3 ms late
        now += pacer.due_in(now) + 0.003
        sent_at.append(now)
        pacer.sent(now)
    assert sent_at[-1] - sent_at[0] == pytest.approx(2999 * 0.02, abs=1e-6)
    assert pacer.resyncs == 0


def test_pacer_catches_up_small_lateness_with_a_short_burst() -> None:
    pacer, now = Pacer(), 0.0
    pacer.due_in(now)
    assert pacer.sent(0.05) == 0  # 30 ms late: within the 60 ms tolerance
    assert pacer.due_in(0.05) == 0  # the next frame follows at once...
    assert pacer.sent(0.05) == 0
    assert pacer.due_in(0.05) == 0
    assert pacer.sent(0.05) == 0
    assert pacer.due_in(0.05) == pytest.approx(0.01)  # ...until the schedule is met again


def test_pacer_skips_the_late_schedule_after_a_stall_and_stays_anchored() -> None:
    pacer, now = Pacer(), 0.0
    pacer.due_in(now)
    assert pacer.sent(now) == 0
    skip = pacer.sent(1.0)  # stalled for a second after frame 1
    assert skip == 47 and pacer.resyncs == 1 and pacer.late_frames == 47
    assert pacer.next_at == pytest.approx(0.02 * (2 + 47))  # still on the t0 + k·20 ms grid
    assert pacer.due_in(1.0) == 0
    pacer.idle()
    assert pacer.due_in(5.0) == 0 and pacer.next_at == 5.0


class FrameModel:
    """The queue as a list of 20 ms frames (how it was kept before clips): the clip-based queue
    must hand out the same frames, checkpoints and counts."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.frames: list[list] = []  # [owner, pcm, checkpoints]

    def append_audio(self, owner: str, pcm: bytes) -> int:
        chunks = [pcm[i : i + self.size].ljust(self.size, b"\x00") for i in range(0, len(pcm), self.size)]
        self.frames += [[owner, c, []] for c in chunks]
        return len(chunks)

    def append_checkpoint(self, owner: str, name: str) -> bool:
        mine = [f for f in self.frames if f[0] == owner]
        if mine:
            mine[-1][2].append(name)
        return bool(mine)

    def clear(self, owner: str) -> tuple[int, list[str]]:
        mine = [f for f in self.frames if f[0] == owner]
        self.frames = [f for f in self.frames if f[0] != owner]
        return len(mine), [n for f in mine for n in f[2]]

    def next_frame(self) -> tuple[str, bytes, tuple[str, ...]] | None:
        if not self.frames:
            return None
        owner, pcm, names = self.frames.pop(0)
        return owner, pcm, tuple(names)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["audio", "mark", "clear", "play", "play"]),
            st.integers(0, 1000),
        ),
        max_size=80,
    )
)
def test_the_clip_queue_plays_exactly_what_a_queue_of_frames_would(ops: list[tuple[str, str, int]]) -> None:
    q, model = PlaybackQueue(160, 60), FrameModel(160)
    for step, (owner, op, n) in enumerate(ops):
        if op == "audio":
            pcm = bytes((step + i) % 251 for i in range(n))
            assert q.append_audio(owner, pcm) == model.append_audio(owner, pcm)
        elif op == "mark":
            assert q.append_checkpoint(owner, f"m{step}") == model.append_checkpoint(owner, f"m{step}")
        elif op == "clear":
            assert q.clear(owner) == model.clear(owner)
        else:
            played, expected = q.next_frame(), model.next_frame()
            assert (played and (played.owner, played.pcm, played.checkpoints)) == expected
        assert len(q) == len(model.frames)
        for who in "abc":
            mine = [f for f in model.frames if f[0] == who]
            assert q.queued_seconds(who) == pytest.approx(len(mine) * 0.02)
            assert q.checkpoints_of(who) == sum(len(f[2]) for f in mine)
    while (expected := model.next_frame()) is not None:
        played = q.next_frame()
        assert played is not None and (played.owner, played.pcm, played.checkpoints) == expected
    assert q.next_frame() is None and len(q) == 0
