"""Typed values to registers and back, in every byte/word order (table-driven and property-based)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import (
    DataType,
    Order,
    decode_raw,
    encode_raw,
    integer_range,
    register_count,
    scale_value,
    set_bit,
    unscale_value,
)

WIRE = [
    (DataType.INT32, 0x12345678, Order.ABCD, [0x1234, 0x5678]),
    (DataType.INT32, 0x12345678, Order.CDAB, [0x5678, 0x1234]),
    (DataType.INT32, 0x12345678, Order.BADC, [0x3412, 0x7856]),
    (DataType.INT32, 0x12345678, Order.DCBA, [0x7856, 0x3412]),
    (DataType.INT16, -2, Order.ABCD, [0xFFFE]),
    (DataType.INT16, -2, Order.BADC, [0xFEFF]),
    (DataType.UINT16, 0x0102, Order.CDAB, [0x0102]),
    (DataType.UINT16, 0x0102, Order.DCBA, [0x0201]),
    (DataType.INT32, -1, Order.ABCD, [0xFFFF, 0xFFFF]),
    (DataType.UINT32, 4_000_000_000, Order.ABCD, [0xEE6B, 0x2800]),
    (DataType.FLOAT32, 1.0, Order.ABCD, [0x3F80, 0x0000]),
    (DataType.FLOAT32, 1.0, Order.CDAB, [0x0000, 0x3F80]),
    (DataType.FLOAT32, -2.5, Order.DCBA, [0x0000, 0x20C0]),
    (DataType.UINT64, 0x0102030405060708, Order.ABCD, [0x0102, 0x0304, 0x0506, 0x0708]),
    (DataType.UINT64, 0x0102030405060708, Order.CDAB, [0x0708, 0x0506, 0x0304, 0x0102]),
    (DataType.UINT64, 0x0102030405060708, Order.BADC, [0x0201, 0x0403, 0x0605, 0x0807]),
    (DataType.UINT64, 0x0102030405060708, Order.DCBA, [0x0807, 0x0605, 0x0403, 0x0201]),
    (DataType.INT64, -2, Order.ABCD, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]),
    (DataType.FLOAT64, 1.0, Order.ABCD, [0x3FF0, 0, 0, 0]),
    (DataType.FLOAT64, 1.0, Order.DCBA, [0, 0, 0, 0xF03F]),
]


@pytest.mark.parametrize(("dtype", "value", "order", "registers"), WIRE)
def test_values_are_laid_out_on_the_wire_as_the_order_letters_say(
    dtype: DataType, value: float, order: Order, registers: list[int]
) -> None:
    assert encode_raw(value, dtype, order) == registers
    assert decode_raw(registers, dtype, order) == value


def test_a_string_is_padded_with_nuls_and_read_back_without_padding() -> None:
    assert encode_raw("AB", DataType.STRING, Order.ABCD, length=6) == [0x4142, 0, 0]
    assert encode_raw("AB", DataType.STRING, Order.BADC, length=4) == [0x4241, 0]
    assert decode_raw([0x4142, 0x4300], DataType.STRING, Order.ABCD) == "ABC"
    # Space padding (common in meters' serial-number registers) is not part of the text either.
    assert decode_raw([0x4142, 0x2020], DataType.STRING, Order.ABCD) == "AB"
    assert register_count(DataType.STRING, 5) == 3


def test_bit_n_of_a_register_counts_from_the_least_significant_bit() -> None:
    assert decode_raw([0b1000_0000_0000_0100], DataType.BOOL, Order.ABCD, bit=2) is True
    assert decode_raw([0b1000_0000_0000_0100], DataType.BOOL, Order.ABCD, bit=15) is True
    assert decode_raw([0b1000_0000_0000_0100], DataType.BOOL, Order.ABCD, bit=3) is False
    assert set_bit(0x8000, 0, True) == 0x8001
    assert set_bit(0x8001, 15, False) == 0x0001


def test_nan_and_infinities_survive_both_float_widths() -> None:
    for dtype in (DataType.FLOAT32, DataType.FLOAT64):
        for order in Order:
            assert decode_raw(encode_raw(math.inf, dtype, order), dtype, order) == math.inf
            assert decode_raw(encode_raw(-math.inf, dtype, order), dtype, order) == -math.inf
            assert math.isnan(float(decode_raw(encode_raw(math.nan, dtype, order), dtype, order)))


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (70000, DataType.INT16),
        (-1, DataType.UINT16),
        (2**63, DataType.INT64),
        (1e39, DataType.FLOAT32),
        ("x", DataType.INT32),
    ],
)
def test_values_that_do_not_fit_are_refused(value: object, dtype: DataType) -> None:
    with pytest.raises(ValueError):
        encode_raw(value, dtype, Order.ABCD)  # type: ignore[arg-type]


def test_scale_and_offset_turn_raw_counts_into_engineering_units_and_back() -> None:
    assert scale_value(2305, 0.1, 0.0) == pytest.approx(230.5)
    assert scale_value(100, 1.0, 0.0) == 100 and isinstance(scale_value(100, 1.0, 0.0), int)
    assert scale_value(0, 0.5, -40.0) == -40.0
    assert unscale_value(230.5, DataType.UINT16, 0.1, 0.0) == 2305
    assert unscale_value(-40.0, DataType.INT16, 0.5, -40.0) == 0


orders = st.sampled_from(list(Order))
INT_TYPES = [
    DataType.INT16,
    DataType.UINT16,
    DataType.INT32,
    DataType.UINT32,
    DataType.INT64,
    DataType.UINT64,
]


@given(
    st.sampled_from(INT_TYPES).flatmap(lambda d: st.tuples(st.just(d), st.integers(*integer_range(d)))),
    orders,
)
def test_every_integer_round_trips_in_every_order(case: tuple[DataType, int], order: Order) -> None:
    dtype, value = case
    regs = encode_raw(value, dtype, order)
    assert len(regs) == register_count(dtype) and all(0 <= r <= 0xFFFF for r in regs)
    assert decode_raw(regs, dtype, order) == value


@given(st.floats(allow_nan=False, width=32), orders)
def test_every_float32_round_trips(value: float, order: Order) -> None:
    assert decode_raw(encode_raw(value, DataType.FLOAT32, order), DataType.FLOAT32, order) == value


@given(st.floats(allow_nan=False), orders)
def test_every_float64_round_trips(value: float, order: Order) -> None:
    assert decode_raw(encode_raw(value, DataType.FLOAT64, order), DataType.FLOAT64, order) == value


@given(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=20),
    orders,
    st.integers(0, 6),
)
def test_strings_round_trip_with_any_padding(text: str, order: Order, extra: int) -> None:
    length = len(text) + extra
    if length == 0:
        return
    regs = encode_raw(text, DataType.STRING, order, length=length)
    assert len(regs) == register_count(DataType.STRING, length)
    assert decode_raw(regs, DataType.STRING, order) == text


@given(st.integers(0, 0xFFFF), st.integers(0, 15), st.booleans())
def test_setting_a_bit_changes_only_that_bit(register: int, bit: int, on: bool) -> None:
    new = set_bit(register, bit, on)
    assert decode_raw([new], DataType.BOOL, Order.ABCD, bit=bit) is on
    assert new & ~(1 << bit) == register & ~(1 << bit)


def test_float32_wire_matches_ieee754() -> None:
    assert encode_raw(3.5, DataType.FLOAT32, Order.ABCD) == list(struct.unpack(">HH", struct.pack(">f", 3.5)))
