"""The console overview's charts, drawn server-side as self-contained SVG (like `timeline`).

Pure: no Django, no ORM, no clock. The caller passes the numbers (already bucketed) and
gets an SVG string; every piece of text is escaped here, so the result may be marked safe.
Two shapes cover the overview: vertical bars over labelled slots (calls per hour, callback
success rate per hour) and horizontal bars per category (stream ends by hangup reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streams.core.timeline import escape

WIDTH = 960
BAR_HEIGHT = 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 44
NICE_STEPS = (1, 2, 2.5, 5, 10)
TICKS = 4


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None  # None: no data for this slot (drawn as a gap, said in its title)
    title: str = ""


def nice_max(value: float, ticks: int = TICKS) -> float:
    """The top of a count axis: `ticks` whole, round steps (1, 2, 2.5, 5 × 10^k, at least 1) reaching `value`."""
    need = max(value, 0.0) / ticks
    magnitude = 1.0
    while magnitude * 10 < need:
        magnitude *= 10
    for step in NICE_STEPS:
        if step * magnitude >= need:
            return ticks * step * magnitude
    return ticks * 10 * magnitude


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _fmt(value: float, unit: str) -> str:
    text = f"{value:,.0f}" if value >= 100 or float(value).is_integer() else _num(value)
    return f"{text}{unit}"


def bar_chart(
    bars: Sequence[Bar],
    *,
    title: str,
    css_class: str,
    unit: str = "",
    fixed_max: float | None = None,
    colour: str = "#1565c0",
    label_every: int = 1,
) -> str:
    """Vertical bars, one per slot, labelled below (every `label_every`-th label shown)."""
    top = fixed_max if fixed_max is not None else nice_max(max([b.value or 0.0 for b in bars] + [0.0]))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, BAR_HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(bars))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {escape(css_class)}" viewBox="0 0 {WIDTH} {BAR_HEIGHT}" '
        f'width="100%" role="img" aria-label="{escape(title)}" style="max-width:{WIDTH}px;font-family:sans-serif;'
        'font-size:11px">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{BAR_HEIGHT}" fill="#fff"/>',
        f'<text x="{LEFT}" y="16" fill="#333" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for i in range(TICKS + 1):
        value = top * i / TICKS
        y = TOP + plot_h - plot_h * i / TICKS
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_num(y)}" y2="{_num(y)}" stroke="#e0e0e0"/>')
        out.append(
            f'<text x="{LEFT - 6}" y="{_num(y + 4)}" text-anchor="end" fill="#555">{escape(_fmt(value, unit))}</text>'
        )
    for index, bar in enumerate(bars):
        x = LEFT + slot * index
        centre = x + slot / 2
        tip = bar.title or f"{bar.label}: {'no data' if bar.value is None else _fmt(bar.value, unit)}"
        out.append(f'<g class="bar"><title>{escape(tip)}</title>')
        if bar.value is None:
            out.append(
                f'<rect class="empty" x="{_num(x + slot * 0.15)}" y="{TOP}" width="{_num(slot * 0.7)}" '
                f'height="{plot_h}" fill="#f5f5f5"/>'
            )
        else:
            height = plot_h * min(max(bar.value, 0.0), top) / top if top else 0.0
            out.append(
                f'<rect class="value" data-value="{_num(bar.value)}" x="{_num(x + slot * 0.15)}" '
                f'y="{_num(TOP + plot_h - height)}" width="{_num(slot * 0.7)}" height="{_num(height)}" '
                f'fill="{escape(colour)}"/>'
            )
        out.append("</g>")
        if index % max(1, label_every) == 0:
            out.append(
                f'<text class="slot" x="{_num(centre)}" y="{BAR_HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                f'fill="#555">{escape(bar.label)}</text>'
            )
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#888"/></svg>')
    return "".join(out)


def category_chart(rows: Sequence[tuple[str, int, str]], *, title: str, css_class: str) -> str:
    """Horizontal bars: (label, count, colour) per category, with the count and share written beside each."""
    total = sum(count for _, count, _ in rows)
    row_h = 26
    height = TOP + row_h * max(1, len(rows)) + 16
    label_w = 150
    plot_w = WIDTH - LEFT - label_w - 120
    top = max([count for _, count, _ in rows] + [1])
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {escape(css_class)}" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" role="img" aria-label="{escape(title)}" style="max-width:{WIDTH}px;font-family:sans-serif;'
        'font-size:12px">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#fff"/>',
        f'<text x="{LEFT}" y="16" fill="#333" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    if not rows or total == 0:
        out.append(f'<text x="{LEFT}" y="{TOP + 18}" fill="#777">nothing in this period</text></svg>')
        return "".join(out)
    for index, (label, count, colour) in enumerate(rows):
        y = TOP + row_h * index
        width = plot_w * count / top
        share = 100 * count / total
        out.append(f'<g class="category" data-label="{escape(label)}" data-count="{count}">')
        out.append(f"<title>{escape(f'{label}: {count} ({share:.1f} %)')}</title>")
        out.append(f'<text x="{LEFT + label_w - 8}" y="{y + 16}" text-anchor="end" fill="#333">{escape(label)}</text>')
        out.append(
            f'<rect x="{LEFT + label_w}" y="{y + 4}" width="{_num(max(width, 1.0))}" height="{row_h - 8}" '
            f'fill="{escape(colour)}"/>'
        )
        out.append(
            f'<text x="{_num(LEFT + label_w + max(width, 1.0) + 6)}" y="{y + 16}" fill="#333">'
            f"{count:,} ({share:.1f} %)</text></g>"
        )
    out.append("</svg>")
    return "".join(out)
