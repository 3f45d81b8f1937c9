"""streams.core.timeline: pure, so no database and no Django."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from streams.core import timeline
from streams.core.timeline import Mark

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def test_samples_are_cleaned_sorted_and_clamped() -> None:
    raw = [[3, 50], [1, 120], [2, -5], "x", [None, 1], [True, 3], [4], [-1, 10], [5, float("nan")], (6, 7.5)]
    assert timeline.clean_samples(raw) == [(1.0, 100.0), (2.0, 0.0), (3.0, 50.0), (6.0, 7.5)]
    assert timeline.clean_samples({"not": "a list"}) == []
    assert timeline.clean_samples(None) == []


def test_downsampling_keeps_every_peak() -> None:
    samples = [(i / 10, 5.0) for i in range(100_000)]
    samples[54_321] = (5432.1, 97.0)
    kept = timeline.downsample(samples, span=10_000, buckets=800)
    assert len(kept) <= 1600
    assert (5432.1, 97.0) in kept
    assert kept == sorted(kept)


def test_short_series_are_drawn_as_they_are() -> None:
    samples = [(0.0, 0.0), (1.0, 10.0), (2.0, 0.0)]
    assert timeline.downsample(samples, span=2, buckets=800) == samples


def test_ticks_are_round_numbers() -> None:
    assert timeline.tick_step(5) == 0.5
    assert timeline.tick_step(9) == 1
    assert timeline.tick_step(45) == 5
    assert timeline.tick_step(600) == 60
    assert timeline.tick_step(86_400) == 10_800
    assert [timeline.format_offset(s) for s in (0, 2.5, 45, 90, 3725)] == ["0 s", "2.5 s", "45 s", "1:30", "1:02:05"]


def test_event_kinds() -> None:
    assert [timeline.kind_for(e) for e in ("StartStream", "StopStream", "DegradedStream", "DroppedStream")] == [
        "start",
        "stop",
        "degraded",
        "dropped",
    ]
    assert timeline.kind_for("InvalidMessage", "bad JSON") == "error"
    assert timeline.kind_for("Checkpoint") == "info"


def test_the_svg_has_a_mark_per_event_and_a_line_through_the_samples() -> None:
    marks = [
        Mark(0.1, "StartStream", "start"),
        Mark(12, "DegradedStream 30 %", "degraded"),
        Mark(20, "StopStream", "stop"),
    ]
    svg = parse(timeline.render(marks=marks, samples=[(0, 0), (10, 35), (20, 5)], span=20))
    groups = [g for g in svg.iter(f"{SVG}g") if "mark" in (g.get("class") or "")]
    assert [g.get("class") for g in groups] == ["mark mark-start", "mark mark-degraded", "mark mark-stop"]
    line = next(p for p in svg.iter(f"{SVG}polyline") if p.get("class") == "buffer-fill")
    points = [tuple(map(float, p.split(","))) for p in line.get("points", "").split()]
    assert len(points) == 3
    # x grows with time; y is higher on the page (smaller) for a fuller buffer
    assert points[0][0] < points[1][0] < points[2][0]
    assert points[1][1] < points[2][1] < points[0][1] or points[1][1] < points[0][1]
    thresholds = [el for el in svg.iter(f"{SVG}line") if el.get("class") == "threshold"]
    assert len(thresholds) == 3
    assert "3 events; 3 send-buffer samples, peak 35 % at 10 s" in (svg.find(f"{SVG}desc").text or "")


def test_text_is_escaped_and_kept_valid_xml() -> None:
    mark = Mark(1, "<script>x</script>", "error", detail='"&\x00\x1b[31m')
    svg = timeline.render(marks=[mark], samples=[], span=2, title="<t>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "\x00" not in svg and "\x1b" not in svg
    parse(svg)


def test_an_empty_stream_still_draws_and_says_why_there_is_no_line() -> None:
    svg = timeline.render(marks=[], samples=[], span=0)
    assert "no send-buffer samples" in svg
    assert parse(svg).find(f"{SVG}polyline") is None


def test_crowded_labels_do_not_overlap() -> None:
    marks = [Mark(i * 0.01, f"Event{i}") for i in range(30)]
    svg = timeline.render(marks=marks, samples=[], span=100)
    labels = re.findall(r'<text x="([\d.]+)" y="(\d+)" text-anchor="start" fill="#1565c0">(Event\d+)</text>', svg)
    by_row: dict[str, list[tuple[float, str]]] = {}
    for x, y, text in labels:
        by_row.setdefault(y, []).append((float(x), text))
    for row in by_row.values():
        for (x1, t1), (x2, _) in itertools.pairwise(row):
            assert x1 + len(t1) * timeline.CHAR_WIDTH <= x2
    assert svg.count('class="mark mark-info"') == 30  # every event keeps its marker and tooltip


@given(
    st.lists(st.tuples(st.floats(0, 1e6), st.floats(-50, 150)), max_size=50),
    st.lists(st.tuples(st.floats(0, 1e6), st.text(max_size=20)), max_size=20),
    st.floats(0, 1e6),
)
def test_any_input_gives_well_formed_svg_inside_the_canvas(
    samples: list[tuple[float, float]], events: list[tuple[float, str]], span: float
) -> None:
    cleaned = timeline.clean_samples([list(s) for s in samples])
    svg = parse(timeline.render(marks=[Mark(at, label) for at, label in events], samples=cleaned, span=span))
    for circle in svg.iter(f"{SVG}circle"):
        assert timeline.LEFT <= float(circle.get("cx", -1)) <= timeline.WIDTH - timeline.RIGHT
