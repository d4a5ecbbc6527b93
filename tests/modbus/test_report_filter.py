"""The on-change filter works on a poll cycle's columns (no ``Reading`` per point) and reports exactly what
the per-reading rule below reports: the first value, quality changes, moves beyond the deadband from the
last *reported* value, and unchanged points again once their report period has passed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.driver import Watched, report_filter
from gateway.model import PointBatch, Quality, Reading, Value, unchanged_within

Last = dict[str, tuple[Value | None, Quality, float]]


@dataclass(frozen=True)
class Rule:
    """A point as the filter sees it."""

    name: str
    on_change: bool
    deadband: float = 0.0
    period: float = 600.0


def reference(rules: Sequence[Rule], readings: Sequence[Reading], last: Last, now: float) -> list[Reading]:
    """The rule per reading, written plainly: it defines what the column filter must report."""
    by_name = {r.name: r for r in rules}
    out: list[Reading] = []
    for r in readings:
        rule = by_name[r.point]
        prev = last.get(r.point)
        if (
            rule.on_change
            and prev is not None
            and prev[1] is r.quality
            and now - prev[2] < rule.period
            and unchanged_within(prev[0], r.value, rule.deadband)
        ):
            continue
        if rule.on_change:
            last[r.point] = (r.value, r.quality, now)
        out.append(r)
    return out


def watched(rules: Sequence[Rule]) -> tuple[Watched, ...]:
    return tuple((i, r.name, r.deadband, r.period) for i, r in enumerate(rules) if r.on_change)


def cycle(
    rules: Sequence[Rule], samples: Sequence[tuple[Value | None, Quality]], stamp: float = 1000.0
) -> PointBatch:
    """One cycle as the driver lays it out; every point has its own unit, stamp and reason to follow."""
    bad: dict[int, tuple[Quality, str | None]] = {
        i: (q, f"why {i}") for i, (_, q) in enumerate(samples) if q is not Quality.GOOD
    }
    return PointBatch(
        "m",
        [r.name for r in rules],
        [f"u{i}" for i in range(len(rules))],
        [v for v, _ in samples],
        [stamp + i for i in range(len(rules))],
        bad=bad,
    )


def key(readings: Sequence[Reading] | None) -> list[tuple[object, ...]]:
    """Comparable form: repr tells 1 from 1.0 from True, and NaN equals NaN."""
    return [
        (r.device, r.point, repr(r.value), r.unit, r.timestamp, r.quality, r.reason) for r in readings or ()
    ]


def run_both(
    rules: Sequence[Rule], cycles: Sequence[tuple[float, Sequence[tuple[Value | None, Quality]]]]
) -> list[list[tuple[object, ...]]]:
    """Each cycle through both filters; asserts they agree and returns what was reported per cycle."""
    old: Last = {}
    new: Last = {}
    reported = []
    for now, samples in cycles:
        batch = cycle(rules, samples, stamp=now)
        expected = reference(rules, list(batch), old, now)
        got = report_filter(batch, watched(rules), new, now)
        assert (got is None) == (not expected)
        assert key(got) == key(expected)
        if got is not None:
            assert set(got.bad) <= set(range(len(got)))
            assert all(got.values[i] is None or q is not Quality.GOOD for i, (q, _) in got.bad.items())
        reported.append(key(expected))
    return reported


G, B, U = Quality.GOOD, Quality.BAD, Quality.UNCERTAIN


def points_of(reported: list[tuple[object, ...]]) -> list[tuple[object, str]]:
    return [(r[1], str(r[2])) for r in reported]


@pytest.mark.parametrize(
    ("rule", "samples", "expected"),
    [
        pytest.param(
            Rule("p", True),
            [(0, 5, G), (1, 5, G), (2, 5, G)],
            [["5"], [], []],
            id="first-value-then-held",
        ),
        pytest.param(
            Rule("p", True, deadband=1.0),
            [(0, 0.0, G), (1, 1.0, G), (2, 1.5, G), (3, 2.0, G), (4, 0.9, G)],
            [["0.0"], [], ["1.5"], [], []],
            id="deadband-edge-is-held-and-measured-from-last-reported",
        ),
        pytest.param(
            Rule("p", True, deadband=1.0),
            [(0, 0.0, G), (1, 0.6, G), (2, 1.2, G), (3, 1.8, G), (4, 2.4, G)],
            [["0.0"], [], ["1.2"], [], ["2.4"]],
            id="a-slow-creep-is-reported-once-it-adds-up",
        ),
        pytest.param(
            Rule("p", True),
            [(0, 5, G), (1, None, B), (2, None, B), (3, 5, G), (4, 5, U), (5, 5, U)],
            [["5"], ["None"], [], ["5"], ["5"], []],
            id="quality-transitions",
        ),
        pytest.param(
            Rule("p", True, period=2.0),
            [(0, 5, G), (1, 5, G), (2, 5, G), (3, 5, G), (3.5, 5, G), (4, 5, G)],
            [["5"], [], ["5"], [], [], ["5"]],
            id="report-period-reached-exactly",
        ),
        pytest.param(
            Rule("p", True, deadband=10.0),
            [(0, False, G), (1, False, G), (2, True, G), (3, True, G)],
            [["False"], [], ["True"], []],
            id="bools-take-no-deadband",
        ),
        pytest.param(
            Rule("p", True, deadband=10.0),
            [(0, "on", G), (1, "on", G), (2, "off", G), (3, "", G), (4, "", G)],
            [["'on'"], [], ["'off'"], ["''"], []],
            id="strings-compare-equal-or-not",
        ),
        pytest.param(
            Rule("p", True, deadband=1.0),
            [(0, math.nan, G), (1, math.nan, G), (2, 1.0, G), (3, math.inf, G), (4, math.inf, G)],
            # the same infinity again is no news (inf - inf would be NaN, within no deadband)
            # (the pipeline then makes it BAD, once).
            [["nan"], [], ["1.0"], ["inf"], []],
            id="nan-and-inf",
        ),
        pytest.param(
            Rule("p", True, deadband=1.0),
            [(0, None, G), (1, None, G), (2, 0, G), (3, None, G)],
            [["None"], [], ["0"], ["None"]],
            id="none-against-numbers",
        ),
        pytest.param(
            Rule("p", False),
            [(0, 5, G), (1, 5, G)],
            [["5"], ["5"]],
            id="not-on-change-is-always-reported",
        ),
    ],
)
def test_each_case_reports_as_the_rule_says(
    rule: Rule, samples: list[tuple[float, Value | None, Quality]], expected: list[list[str]]
) -> None:
    reported = run_both([rule], [(now, [(v, q)]) for now, v, q in samples])
    assert [[value for _, value in points_of(r)] for r in reported] == expected


def test_a_cycle_with_nothing_to_report_gives_nothing_and_a_full_one_the_batch_itself() -> None:
    rules = [Rule("a", True), Rule("b", True)]
    last: Last = {}
    first = cycle(rules, [(1, G), (2, G)])
    assert report_filter(first, watched(rules), last, 0.0) is first
    assert report_filter(cycle(rules, [(1, G), (2, G)]), watched(rules), last, 1.0) is None


def test_the_subset_keeps_each_points_stamp_unit_and_bad_entry_at_its_new_index() -> None:
    rules = [Rule("a", True), Rule("b", True), Rule("c", False), Rule("d", True)]
    last: Last = {}
    report_filter(cycle(rules, [(1, G), (None, B), (3, G), (4, G)]), watched(rules), last, 0.0)
    got = report_filter(cycle(rules, [(1, G), (None, U), (3, G), (None, B)]), watched(rules), last, 1.0)
    assert got is not None
    assert list(got.names) == ["b", "c", "d"]
    assert list(got.units) == ["u1", "u2", "u3"]
    assert list(got.stamps) == [1001.0, 1002.0, 1003.0]
    assert got.bad == {0: (U, "why 1"), 2: (B, "why 3")}


values = st.one_of(
    st.sampled_from([0, 1, 2, 0.0, 0.5, 1.0, 1.5, 2.0, -1.0, 5.0, 6.0]),
    st.floats(min_value=-10, max_value=10),
    st.sampled_from([math.nan, math.inf, -math.inf, True, False, "on", "off", "", None]),
    st.integers(min_value=-10, max_value=10),
)
samples = st.one_of(
    st.tuples(values, st.just(G)),
    st.tuples(values, st.sampled_from([U, G])),
    st.tuples(st.none(), st.just(B)),
)
rules = st.lists(
    st.builds(
        Rule,
        name=st.just(""),
        on_change=st.booleans(),
        deadband=st.sampled_from([0.0, 0.5, 1.0, 5.0]) | st.floats(min_value=0, max_value=5),
        period=st.sampled_from([0.5, 1.0, 2.0, 3.0, 600.0]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300)
@given(data=st.data(), rules=rules)
def test_the_column_filter_reports_what_the_per_reading_rule_reports(
    data: st.DataObject, rules: list[Rule]
) -> None:
    named = [Rule(f"p{i}", r.on_change, r.deadband, r.period) for i, r in enumerate(rules)]
    steps = data.draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0]), min_size=1, max_size=25))
    cycles = []
    now = 0.0
    for step in steps:
        now += step
        cycles.append((now, data.draw(st.lists(samples, min_size=len(named), max_size=len(named)))))
    run_both(named, cycles)
