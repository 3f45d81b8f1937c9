"""A stream's life as one server-side SVG: its debug-log events over time and the send-buffer fill.

Pure: no Django, no ORM, no clock. The caller passes offsets in seconds since the stream
was created and gets back a self-contained SVG string (readable without JavaScript; hover
titles are native SVG <title> elements). Every piece of text that reaches the SVG is
escaped here, so the result may be marked safe by the admin.

`Stream.buffer_samples` comes from a JSON column, so `clean_samples` accepts anything and
keeps only well-formed [seconds, percent] pairs. A long stream samples once a second for
hours; `downsample` keeps the peak of each pixel column, so a spike is never averaged away.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape as html_escape

WIDTH = 960
HEIGHT = 270
LEFT, RIGHT = 52, 20
LANE_ROWS = (22, 40, 58)
CHART_TOP, CHART_BOTTOM = 84, 214
THRESHOLDS = (30, 60, 90)
MIN_SPAN = 1.0
CHAR_WIDTH = 6.6

COLOURS = {
    "start": "#2e7d32",
    "stop": "#455a64",
    "degraded": "#ef6c00",
    "dropped": "#c62828",
    "error": "#c62828",
    "info": "#1565c0",
}
TICK_STEPS = (
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
)


# Characters XML 1.0 forbids even when escaped; customer input (bad frames) can carry them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    return html_escape(_NOT_XML.sub("\ufffd", text), quote=True)


@dataclass(frozen=True)
class Mark:
    """One debug-log event on the timeline."""

    at: float
    label: str
    kind: str = "info"
    detail: str = ""


def kind_for(event: str, error: str = "") -> str:
    """Colour class of an event: the four callback events by name, anything with an error in red."""
    if event == "StartStream":
        return "start"
    if event == "StopStream":
        return "stop"
    if event == "DegradedStream":
        return "degraded"
    if event == "DroppedStream":
        return "dropped"
    return "error" if error else "info"


def clean_samples(raw: object) -> list[tuple[float, float]]:
    """Well-formed, finite [seconds ≥ 0, percent] pairs sorted by time, percent clamped to 0–100."""
    if not isinstance(raw, list | tuple):
        return []
    out: list[tuple[float, float]] = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 2:
            continue
        at, pct = item
        if isinstance(at, bool) or isinstance(pct, bool):
            continue
        if not isinstance(at, int | float) or not isinstance(pct, int | float):
            continue
        if not (math.isfinite(at) and math.isfinite(pct)) or at < 0:
            continue
        out.append((float(at), min(100.0, max(0.0, float(pct)))))
    out.sort(key=lambda pair: pair[0])
    return out


def downsample(samples: Sequence[tuple[float, float]], *, span: float, buckets: int) -> list[tuple[float, float]]:
    """At most two points per bucket (its first and its peak), in time order; short series pass through."""
    if len(samples) <= 2 * buckets:
        return list(samples)
    width = span / buckets
    chosen: dict[int, list[tuple[float, float]]] = {}
    for at, pct in samples:
        index = min(buckets - 1, int(at / width)) if width > 0 else 0
        group = chosen.setdefault(index, [(at, pct), (at, pct)])
        if pct > group[1][1]:
            group[1] = (at, pct)
    out: list[tuple[float, float]] = []
    for index in sorted(chosen):
        first, peak = chosen[index]
        out.extend([first] if first == peak else sorted((first, peak)))
    return out


def tick_step(span: float, *, max_ticks: int = 10) -> float:
    """The smallest round step (1-2-5 seconds, then minutes and hours) giving at most max_ticks ticks."""
    for step in TICK_STEPS:
        if span / step <= max_ticks:
            return float(step)
    return float(math.ceil(span / max_ticks / 86400) * 86400)


def format_offset(seconds: float) -> str:
    """Axis label: "0 s", "2.5 s", "45 s", then m:ss, then h:mm:ss."""
    if seconds < 60:
        text = f"{seconds:.1f}".rstrip("0").rstrip(".")
        return f"{text} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _x(at: float, span: float) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * min(max(at, 0.0), span) / span


def _y(pct: float) -> float:
    return CHART_BOTTOM - (CHART_BOTTOM - CHART_TOP) * pct / 100.0


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _place_labels(marks: Sequence[Mark], span: float) -> list[tuple[Mark, float, int | None, str]]:
    """(mark, x, label row or None, anchor): the first lane row with room, else the label is left to its title."""
    row_ends = [-math.inf] * len(LANE_ROWS)
    placed: list[tuple[Mark, float, int | None, str]] = []
    for mark in sorted(marks, key=lambda m: m.at):
        x = _x(mark.at, span)
        width = len(mark.label) * CHAR_WIDTH + 4
        anchor = "start" if x + 5 + width <= WIDTH - 2 else "end"
        left, right = (x + 5, x + 5 + width) if anchor == "start" else (x - 5 - width, x - 5)
        row: int | None = None
        for index in range(len(LANE_ROWS)):
            if left > row_ends[index] + 4:
                row = index
                row_ends[index] = right
                break
        placed.append((mark, x, row, anchor))
    return placed


def summary(marks: Sequence[Mark], samples: Sequence[tuple[float, float]]) -> str:
    """One sentence for screen readers and for the figure caption."""
    parts = [f"{len(marks)} event{'s' if len(marks) != 1 else ''}"]
    if samples:
        peak_at, peak = max(samples, key=lambda s: (s[1], -s[0]))
        parts.append(f"{len(samples)} send-buffer samples, peak {_num(peak)} % at {format_offset(peak_at)}")
    else:
        parts.append("no send-buffer samples")
    return "; ".join(parts)


def render(
    *,
    marks: Iterable[Mark],
    samples: Sequence[tuple[float, float]],
    span: float,
    title: str = "Stream timeline",
) -> str:
    """The SVG: an event lane above a 0–100 % buffer-fill chart sharing one time axis."""
    marks = list(marks)
    latest = max([m.at for m in marks] + [s[0] for s in samples] + [0.0])
    span = max(span, latest, MIN_SPAN)
    plot_width = WIDTH - LEFT - RIGHT
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="stream-timeline" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-labelledby="tl-title tl-desc" '
        f'style="max-width:{WIDTH}px;font-family:sans-serif;font-size:11px">',
        f'<title id="tl-title">{escape(title)}</title>',
        f'<desc id="tl-desc">{escape(summary(marks, samples))}</desc>',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
        f'<text x="{LEFT}" y="10" fill="#555">events</text>',
        f'<rect x="{LEFT}" y="{CHART_TOP}" width="{plot_width}" height="{CHART_BOTTOM - CHART_TOP}" '
        f'fill="#f7f9fb" stroke="#ccc"/>',
    ]
    for pct in THRESHOLDS:
        y = _num(_y(pct))
        out.append(
            f'<line class="threshold" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}" '
            f'stroke="#ef6c00" stroke-opacity="0.5" stroke-dasharray="4 3"/>'
        )
        out.append(f'<text x="{LEFT - 6}" y="{_num(_y(pct) + 4)}" text-anchor="end" fill="#555">{pct} %</text>')
    out.append(f'<text x="{LEFT - 6}" y="{CHART_BOTTOM + 4}" text-anchor="end" fill="#555">0 %</text>')
    out.append(f'<text x="{LEFT - 6}" y="{CHART_TOP + 4}" text-anchor="end" fill="#555">100 %</text>')

    step = tick_step(span)
    tick = 0.0
    while tick <= span + 1e-9:
        tick_x = _num(_x(tick, span))
        out.append(f'<line x1="{tick_x}" x2="{tick_x}" y1="{CHART_BOTTOM}" y2="{CHART_BOTTOM + 5}" stroke="#888"/>')
        out.append(
            f'<text class="tick" x="{tick_x}" y="{CHART_BOTTOM + 17}" text-anchor="middle" fill="#555">'
            f"{escape(format_offset(tick))}</text>"
        )
        tick = round(tick + step, 6)
    out.append(
        f'<text x="{LEFT + plot_width / 2:.0f}" y="{HEIGHT - 24}" text-anchor="middle" fill="#555">'
        "time since the stream was created</text>"
    )

    if samples:
        points = downsample(samples, span=span, buckets=plot_width)
        line = " ".join(f"{_num(_x(at, span))},{_num(_y(pct))}" for at, pct in points)
        first_x, last_x = _num(_x(points[0][0], span)), _num(_x(points[-1][0], span))
        out.append(
            f'<polygon class="buffer-area" points="{first_x},{CHART_BOTTOM} {line} {last_x},{CHART_BOTTOM}" '
            f'fill="#1565c0" fill-opacity="0.15"/>'
        )
        out.append(f'<polyline class="buffer-fill" points="{line}" fill="none" stroke="#1565c0" stroke-width="1.5"/>')
    else:
        out.append(
            f'<text x="{LEFT + plot_width / 2:.0f}" y="{(CHART_TOP + CHART_BOTTOM) / 2:.0f}" text-anchor="middle" '
            'fill="#777">no send-buffer samples (the relay stores them when the stream ends)</text>'
        )

    for mark, x, row, anchor in _place_labels(marks, span):
        colour = COLOURS.get(mark.kind, COLOURS["info"])
        xs = _num(x)
        tip = f"{mark.label} at {format_offset(mark.at)}" + (f": {mark.detail}" if mark.detail else "")
        out.append(f'<g class="mark mark-{escape(mark.kind)}"><title>{escape(tip)}</title>')
        out.append(
            f'<line x1="{xs}" x2="{xs}" y1="{LANE_ROWS[0] - 10}" y2="{CHART_BOTTOM}" stroke="{colour}" '
            f'stroke-opacity="0.55" stroke-dasharray="2 2"/>'
        )
        dot_y = LANE_ROWS[row] - 4 if row is not None else LANE_ROWS[-1] + 12
        out.append(f'<circle cx="{xs}" cy="{dot_y}" r="4" fill="{colour}"/>')
        if row is not None:
            text_x = _num(x + 7 if anchor == "start" else x - 7)
            out.append(
                f'<text x="{text_x}" y="{LANE_ROWS[row]}" text-anchor="{anchor}" fill="{colour}">'
                f"{escape(mark.label)}</text>"
            )
        out.append("</g>")

    legend_y = HEIGHT - 8
    out.append(
        f'<line x1="{LEFT}" x2="{LEFT + 20}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="#1565c0" '
        f'stroke-width="1.5"/><text x="{LEFT + 26}" y="{legend_y}" fill="#555">send-buffer fill</text>'
        f'<line x1="{LEFT + 140}" x2="{LEFT + 160}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="#ef6c00" '
        f'stroke-dasharray="4 3"/><text x="{LEFT + 166}" y="{legend_y}" fill="#555">'
        "DegradedStream thresholds (30/60/90 %)</text>"
    )
    out.append("</svg>")
    return "".join(out)
