"""Typed values to and from Modbus registers and bits: pure functions, no I/O.

Byte and word order follow the usual letters for a 32-bit value whose big-endian bytes are A B C D:

====== ===================================== ==========================================
order  registers on the wire                 also known as
====== ===================================== ==========================================
ABCD   [AB] [CD]                             big-endian (the Modbus default)
CDAB   [CD] [AB]                             word swap, "little-endian word order"
BADC   [BA] [DC]                             byte swap inside each register
DCBA   [DC] [BA]                             fully little-endian
====== ===================================== ==========================================

The same two switches apply to every width: the word swap reverses the order of the registers
(for 64-bit values all four), the byte swap exchanges the two bytes inside each register. A 16-bit
value only feels the byte swap. Strings are read as bytes in register order, so ``BADC`` fixes
devices that store their text with swapped bytes.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence

from gateway.model import Value


class DataType(enum.Enum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"

    @property
    def is_integer(self) -> bool:
        return self in _INT_FORMATS

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)

    @property
    def is_numeric(self) -> bool:
        return self.is_integer or self.is_float


class Order(enum.Enum):
    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"

    @property
    def word_swap(self) -> bool:
        return self in (Order.CDAB, Order.DCBA)

    @property
    def byte_swap(self) -> bool:
        return self in (Order.BADC, Order.DCBA)


_INT_FORMATS: dict[DataType, str] = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
}
_FLOAT_FORMATS: dict[DataType, str] = {DataType.FLOAT32: ">f", DataType.FLOAT64: ">d"}

_WIDTH: dict[DataType, int] = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}


def register_count(dtype: DataType, length: int = 0) -> int:
    """How many registers a value occupies (``length`` is the string length in bytes)."""
    if dtype is DataType.STRING:
        return (length + 1) // 2
    if dtype is DataType.BOOL:
        return 1
    return _WIDTH[dtype]


def integer_range(dtype: DataType) -> tuple[int, int]:
    """The raw range an integer type can hold on the wire."""
    bits = 16 * _WIDTH[dtype]
    if dtype.value.startswith("u"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def registers_to_bytes(registers: Sequence[int], order: Order) -> bytes:
    """Undo the device's byte/word order: the big-endian byte string the registers carry."""
    regs = list(registers)
    if order.word_swap:
        regs.reverse()
    raw = b"".join(r.to_bytes(2, "big") for r in regs)
    if order.byte_swap:
        raw = _swap_pairs(raw)
    return raw


def bytes_to_registers(raw: bytes, order: Order) -> list[int]:
    """Lay big-endian bytes out as registers in the device's byte/word order."""
    if order.byte_swap:
        raw = _swap_pairs(raw)
    regs = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if order.word_swap:
        regs.reverse()
    return regs


def _swap_pairs(raw: bytes) -> bytes:
    swapped = bytearray(raw)
    swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
    return bytes(swapped)


def decode_raw(registers: Sequence[int], dtype: DataType, order: Order, *, bit: int | None = None) -> Value:
    """The raw value (before scale/offset) held by ``registers`` (exactly the value's registers)."""
    if dtype is DataType.BOOL:
        if bit is None:
            raise ValueError("a bool in a register needs a bit number")
        # Bit n counts from the least significant bit of the register as it arrives (0..15);
        # byte/word order does not apply to single bits.
        return bool((registers[0] >> bit) & 1)
    raw = registers_to_bytes(registers, order)
    if dtype is DataType.STRING:
        # Devices pad fixed-length strings with NULs or spaces; neither is part of the text.
        return raw.split(b"\x00", 1)[0].decode("latin-1").rstrip(" ")
    fmt = _INT_FORMATS.get(dtype) or _FLOAT_FORMATS[dtype]
    value: int | float = struct.unpack(fmt, raw)[0]
    return value


def encode_raw(value: Value, dtype: DataType, order: Order, *, length: int = 0) -> list[int]:
    """Registers holding ``value`` (already unscaled). Raises ValueError when it does not fit."""
    if dtype is DataType.STRING:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        try:
            data = value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{value!r} has characters a register string cannot hold") from exc
        size = 2 * register_count(dtype, length)
        if len(data) > length:
            raise ValueError(f"{value!r} is longer than {length} characters")
        return bytes_to_registers(data.ljust(size, b"\x00"), order)
    if dtype is DataType.BOOL:
        raise ValueError("a bit inside a register is written by read-modify-write, not encoded alone")
    if dtype.is_float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        fvalue = float(value)
        if dtype is DataType.FLOAT32 and math.isfinite(fvalue) and abs(fvalue) > 3.4028234663852886e38:
            raise ValueError(f"{value!r} does not fit a float32")
        return bytes_to_registers(struct.pack(_FLOAT_FORMATS[dtype], fvalue), order)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    low, high = integer_range(dtype)
    if not low <= value <= high:
        raise ValueError(f"{value} does not fit {dtype.value} ({low}..{high})")
    return bytes_to_registers(struct.pack(_INT_FORMATS[dtype], value), order)


def set_bit(register: int, bit: int, on: bool) -> int:
    """``register`` with bit ``bit`` (0 = least significant) set or cleared."""
    return register | (1 << bit) if on else register & ~(1 << bit) & 0xFFFF


def scale_value(raw: Value, scale: float, offset: float) -> Value:
    """Engineering value from a raw one. Integers stay integers when scale is 1 and offset 0."""
    if isinstance(raw, bool | str):
        return raw
    if scale == 1.0 and offset == 0.0:
        return raw
    return raw * scale + offset


def unscale_value(value: Value, dtype: DataType, scale: float, offset: float) -> Value:
    """Raw value to write for an engineering value; integers are rounded to the nearest step."""
    if isinstance(value, bool | str) or not dtype.is_numeric:
        return value
    if scale == 1.0 and offset == 0.0 and (dtype.is_float or isinstance(value, int)):
        return value
    raw = (float(value) - offset) / scale
    if dtype.is_integer:
        if not math.isfinite(raw):
            raise ValueError(f"{value!r} cannot be written to an integer register")
        rounded = round(raw)
        return rounded
    return raw
