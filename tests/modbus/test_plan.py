"""The read planner: as few requests as the rules allow, never over a limit, never into a forbidden range."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import DataType
from drivers.modbus.config import AddressRange, Limits, Point, RegisterTable
from drivers.modbus.plan import compile_plan, one_request_per_point, plan_requests

from .helpers import parse


def reg(
    name: str,
    address: int,
    dtype: DataType = DataType.UINT16,
    table: RegisterTable = RegisterTable.HOLDING,
    length: int = 0,
) -> Point:
    return Point(name, table, address, dtype, length=length)


def shape(requests: tuple) -> list[tuple[str, int, int, list[str]]]:  # type: ignore[type-arg]
    return [(r.table.value, r.address, r.count, [p.name for p in r.points]) for r in requests]


def test_golden_energy_meter_map() -> None:
    points = [
        reg("v1", 0, DataType.FLOAT32),
        reg("v2", 2, DataType.FLOAT32),
        reg("v3", 4, DataType.FLOAT32),
        reg("i1", 12, DataType.FLOAT32),  # gap of 6 registers: bridged (max_gap 10)
        reg("energy", 342, DataType.UINT64),  # far away: its own request
        reg("serial", 400, DataType.STRING, length=16),
        reg("relay", 0, DataType.BOOL, RegisterTable.COIL),
        reg("alarm", 100, DataType.BOOL, RegisterTable.COIL),  # 99 bits apart: within 10 x 16
    ]
    assert shape(plan_requests(points, Limits())) == [
        ("coil", 0, 101, ["relay", "alarm"]),
        ("holding", 0, 14, ["v1", "v2", "v3", "i1"]),
        ("holding", 342, 4, ["energy"]),
        ("holding", 400, 8, ["serial"]),
    ]


def test_golden_split_by_size_gap_and_forbidden_range() -> None:
    points = [reg(f"r{a}", a) for a in (0, 1, 2, 3, 8, 9, 30)]
    limits = Limits(max_registers=3, max_gap=4, forbidden=(AddressRange(RegisterTable.HOLDING, 5, 5),))
    assert shape(plan_requests(points, limits)) == [
        ("holding", 0, 3, ["r0", "r1", "r2"]),
        ("holding", 3, 1, ["r3"]),  # 3..9 would cross forbidden 5
        ("holding", 8, 2, ["r8", "r9"]),
        ("holding", 30, 1, ["r30"]),  # 20-register gap > 4
    ]


def test_overlapping_points_share_one_request() -> None:
    points = [reg("total", 10, DataType.UINT32), reg("low_word", 11), reg("flag", 10, DataType.BOOL)]
    assert shape(plan_requests(points, Limits(max_gap=0))) == [
        ("holding", 10, 2, ["flag", "total", "low_word"])
    ]


def test_poll_groups_are_planned_separately_and_the_plan_is_summarised() -> None:
    config, problems = parse(
        """
[devices.m]
driver = "modbus"
host = "127.0.0.1"
interval = 5
[devices.m.points.a]
address = 0
interval = 1
[devices.m.points.b]
address = 1
[devices.m.points.c]
address = 2
interval = 1
[devices.m.points.d]
table = "coil"
address = 0
"""
    )
    assert problems == []
    plan = compile_plan(config.links[0].devices[0])
    assert [(g.interval, shape(g.requests)) for g in plan.groups] == [
        (1.0, [("holding", 0, 3, ["a", "c"])]),
        (5.0, [("coil", 0, 1, ["d"]), ("holding", 1, 1, ["b"])]),
    ]
    assert plan.summary() == "3 requests, 4 registers, 1 bit, 4 points (per interval 1s: 1, 5s: 2)"


def test_the_naive_plan_is_one_request_per_point() -> None:
    points = [reg(f"r{a}", a) for a in range(5)]
    assert len(one_request_per_point(points)) == 5
    assert len(plan_requests(points, Limits())) == 1


def test_a_point_larger_than_one_request_is_refused() -> None:
    with pytest.raises(ValueError, match="more than one request may read"):
        plan_requests([reg("s", 0, DataType.STRING, length=20)], Limits(max_registers=5))


TYPES = [DataType.UINT16, DataType.INT32, DataType.FLOAT64, DataType.BOOL, DataType.STRING]


@st.composite
def maps(draw: st.DrawFn) -> tuple[list[Point], Limits]:
    forbidden = tuple(
        AddressRange(draw(st.sampled_from(list(RegisterTable))), start, start + draw(st.integers(0, 20)))
        for start in draw(st.lists(st.integers(0, 400), max_size=4))
    )
    limits = Limits(
        max_registers=draw(st.integers(8, 125)),
        max_bits=draw(st.integers(1, 2000)),
        max_gap=draw(st.integers(0, 30)),
        forbidden=forbidden,
    )
    points: list[Point] = []
    for i in range(draw(st.integers(1, 60))):
        table = draw(st.sampled_from(list(RegisterTable)))
        dtype = DataType.BOOL if table.is_bits else draw(st.sampled_from(TYPES))
        length = draw(st.integers(1, 16)) if dtype is DataType.STRING else 0
        bit = draw(st.integers(0, 15)) if dtype is DataType.BOOL and not table.is_bits else None
        p = Point(f"p{i}", table, draw(st.integers(0, 500)), dtype, length=length, bit=bit)
        if not any(r.overlaps(p.table, p.address, p.end) for r in forbidden):
            points.append(p)
    return points, limits


@settings(max_examples=300)
@given(maps())
def test_every_plan_covers_each_point_exactly_once_within_limits_and_outside_forbidden_ranges(
    case: tuple[list[Point], Limits],
) -> None:
    points, limits = case
    requests = plan_requests(points, limits)
    covered = [p.name for r in requests for p in r.points]
    assert sorted(covered) == sorted(p.name for p in points)
    for r in requests:
        assert 1 <= r.count <= (limits.max_bits if r.table.is_bits else limits.max_registers)
        for p in r.points:
            assert p.table is r.table and r.address <= p.address and p.end <= r.end
        for f in limits.forbidden:
            assert not f.overlaps(r.table, r.address, r.end)
    # Never more requests than points, and never more than the naive plan.
    assert len(requests) <= len(one_request_per_point(points))


@given(st.integers(1, 300))
def test_contiguous_registers_need_only_ceil_n_over_limit_requests(n: int) -> None:
    points = [reg(f"r{i}", i) for i in range(n)]
    requests = plan_requests(points, Limits(max_registers=10))
    assert len(requests) == -(-len(points) // 10)
