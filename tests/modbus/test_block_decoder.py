"""A register block decoded in one go gives, point for point, what decoding each point alone gives."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import DataType, Order
from drivers.modbus.config import Point, RegisterTable
from drivers.modbus.driver import BlockDecoder, decode_point
from drivers.modbus.plan import ReadRequest

NUMERIC = [t for t in DataType if t.is_numeric]


@st.composite
def requests(draw: st.DrawFn) -> tuple[ReadRequest, list[int]]:
    """A holding-register request over points of mixed types, orders, scales and gaps; its answer."""
    points = []
    address = draw(st.integers(0, 100))
    start = address
    for i in range(draw(st.integers(1, 12))):
        dtype = draw(st.sampled_from([*NUMERIC, DataType.BOOL, DataType.STRING]))
        order = draw(st.sampled_from(list(Order))) if draw(st.integers(0, 3)) == 0 else Order.ABCD
        scaled = dtype.is_numeric and draw(st.booleans())
        point = Point(
            name=f"p{i}",
            table=RegisterTable.HOLDING,
            address=address,
            dtype=dtype,
            order=order,
            length=draw(st.integers(1, 6)) if dtype is DataType.STRING else 0,
            bit=draw(st.integers(0, 15)) if dtype is DataType.BOOL else None,
            scale=draw(st.sampled_from([0.1, 0.01, 2.0])) if scaled else 1.0,
            offset=draw(st.sampled_from([0.0, -40.0])) if scaled else 0.0,
        )
        points.append(point)
        address += point.count + draw(st.integers(0, 3))
    count = address - start
    answer = draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    return ReadRequest(RegisterTable.HOLDING, start, count, tuple(points)), answer


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(requests())
def test_a_block_decodes_to_the_values_of_its_points_decoded_one_by_one(
    case: tuple[ReadRequest, list[int]],
) -> None:
    req, answer = case

    values, failed = BlockDecoder(req).decode(answer)

    assert failed == {}
    expected = [decode_point(p, answer, p.address - req.address) for p in req.points]
    assert all(same(v, e) for v, e in zip(values, expected, strict=True)), (values, expected)


def test_big_endian_int16_blocks_take_the_one_struct_path() -> None:
    points = tuple(Point(f"p{i}", RegisterTable.HOLDING, i, DataType.INT16, scale=0.1) for i in range(100))
    decoder = BlockDecoder(ReadRequest(RegisterTable.HOLDING, 0, 100, points))

    values, _ = decoder.decode([0xFFFF, 1] + [0] * 98)

    assert decoder._points is not None  # the whole block in one unpack
    assert values[:3] == [-1 * 0.1, 1 * 0.1, 0.0]


def test_coils_are_picked_by_offset() -> None:
    points = (
        Point("a", RegisterTable.COIL, 3, DataType.BOOL),
        Point("b", RegisterTable.COIL, 5, DataType.BOOL),
    )

    values, failed = BlockDecoder(ReadRequest(RegisterTable.COIL, 3, 3, points)).decode([True, False, False])

    assert (values, failed) == ([True, False], {})
