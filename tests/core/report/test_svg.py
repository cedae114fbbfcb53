"""The inline SVG chart: round ticks, well-formed markup, gaps at non-finite values, legends."""

import xml.etree.ElementTree as ET

import pytest

from core.report.svg import Series, _extent, format_number, line_chart, nice_ticks


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(3, 97) == [20, 40, 60, 80]
    assert nice_ticks(0.68, 0.7) == pytest.approx([0.68, 0.685, 0.69, 0.695, 0.7])
    assert nice_ticks(1.0, 1.0) == [1.0]


def test_format_number():
    assert format_number(20000, 5000) == "20k" and format_number(2_500_000, 500_000) == "2.5M"
    assert format_number(0.25, 0.05) == "0.25" and format_number(3, 1) == "3"
    assert format_number(0.5, 0.25) == "0.50" and format_number(0.69, 0.005) == "0.690"


def test_chart_is_well_formed_and_splits_lines_at_non_finite_values():
    svg = line_chart([Series("a", [0, 1, 2, 3], [0.0, float("nan"), 1.0, 2.0]),
                      Series("b", [0, 1], [1, 0], dashed=True, markers=True)],
                     title="t <&>", x_label="x", y_label="y", diagonal=True)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f".//{ns}polyline") or root.findall(".//polyline")
    assert len(lines) == 3  # series a in two pieces around the NaN, series b in one
    assert "t &lt;&amp;&gt;" in svg and 'stroke-dasharray="6,4"' in svg and svg.count("<circle") == 2


def test_step_series_draw_histogram_outlines():
    svg = line_chart([Series("h", [0, 0.5, 1], [0.25, 0.75], steps=True)], title="h")
    points = svg.split('<polyline points="')[1].split('"')[0].split()
    assert len(points) == 2 * 2 + 2  # two bars, closed down to zero at both ends


def test_many_series_move_the_legend_outside_and_widen_the_chart():
    few = line_chart([Series(f"s{i}", [0, 1], [0, i]) for i in range(3)], title="few", width=300)
    many = line_chart([Series(f"series{i}", [0, 1], [0, i]) for i in range(8)], title="many", width=300)
    assert 'width="300"' in few and 'width="300"' not in many
    assert all(f">series{i}<" in many for i in range(8))


def test_a_chart_of_values_below_1e_11_has_distinct_ticks_and_draws():
    # A rare task early in training plots values this small; their tick step once rounded to zero (a division by
    # zero that stopped training).
    ticks = nice_ticks(-5e-14, 1.05e-12)
    assert len(ticks) > 1 and all(b > a for a, b in zip(ticks, ticks[1:]))
    assert ticks[1] - ticks[0] == pytest.approx(2.5e-13)
    low, high = _extent([0.0, 5e-13, 1e-12], None)
    assert low < 0.0 and 1e-12 < high < 2e-12  # the values fill the frame without sitting on it
    svg = line_chart([Series("rare", [0, 1, 2], [0.0, 5e-13, 1e-12])], title="tiny", x_label="step")
    ET.fromstring(svg)
