"""The overview's SVG charts: pure drawing, escaped text, bars proportional to their values."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from streams.core import charts

SVG = "{http://www.w3.org/2000/svg}"


def test_the_count_axis_has_four_whole_round_steps() -> None:
    tops = [charts.nice_max(v) for v in (0, 0.3, 1, 3, 4, 7, 11, 24, 26, 240, 999, 1001)]
    assert tops == [4, 4, 4, 4, 4, 8, 20, 40, 40, 400, 1000, 2000]


def test_bar_heights_follow_the_values_and_a_gap_is_drawn_for_no_data() -> None:
    bars = [charts.Bar("00:00", 10), charts.Bar("01:00", 5), charts.Bar("02:00", None), charts.Bar("03:00", 0)]
    svg = charts.bar_chart(bars, title="Calls per hour", css_class="calls")
    root = ET.fromstring(svg)
    values = root.findall(f".//{SVG}rect[@class='value']")
    heights = [float(r.get("height", "0")) for r in values]
    assert [r.get("data-value") for r in values] == ["10", "5", "0"]
    assert heights[0] == 2 * heights[1] and heights[2] == 0
    assert len(root.findall(f".//{SVG}rect[@class='empty']")) == 1
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert "02:00: no data" in titles


def test_a_fixed_axis_caps_the_bars() -> None:
    svg = charts.bar_chart([charts.Bar("a", 50), charts.Bar("b", 100)], title="rate", css_class="r", fixed_max=100)
    heights = [
        float(h)
        for h in re.findall(
            r'class="value" data-value="[^"]+" x="[^"]+" y="[^"]+" width="[^"]+" '
            r'height="([^"]+)"',
            svg,
        )
    ]
    assert heights[1] == 2 * heights[0]


def test_categories_show_count_and_share_and_an_empty_period_says_so() -> None:
    svg = charts.category_chart(
        [("Call hangup", 3, "#455a64"), ("Connection error", 1, "#c62828")], title="Ends", css_class="ends"
    )
    root = ET.fromstring(svg)
    groups = root.findall(f".//{SVG}g[@class='category']")
    assert [(g.get("data-label"), g.get("data-count")) for g in groups] == [
        ("Call hangup", "3"),
        ("Connection error", "1"),
    ]
    assert "3 (75.0 %)" in svg and "1 (25.0 %)" in svg
    assert "nothing in this period" in charts.category_chart([("Call hangup", 0, "#000")], title="t", css_class="c")


@given(st.lists(st.tuples(st.text(max_size=30), st.one_of(st.none(), st.floats(0, 1e9))), max_size=30), st.text())
def test_any_labels_and_values_make_well_formed_svg(items: list[tuple[str, float | None]], title: str) -> None:
    bars = [charts.Bar(label, value) for label, value in items]
    ET.fromstring(charts.bar_chart(bars, title=title, css_class="x"))
    ET.fromstring(charts.category_chart([(label, 1, "#000") for label, _ in items], title=title, css_class="y"))
