"""Byte-level primitives of the ``.cdlz`` format.

* ``varint``: unsigned LEB128. A value ``v`` is written as 7-bit groups, least
  significant group first; every byte but the last has bit 7 set. Encodings are
  canonical: at most 10 bytes, value ``< 2**64``, and no redundant trailing
  zero group (a multi-byte encoding never ends in ``0x00``).
* ``zigzag``: signed integers mapped to unsigned ones before varint coding,
  ``z(v) = 2v`` for ``v >= 0`` and ``z(v) = -2v - 1`` for ``v < 0``, so that small
  magnitudes of either sign take one byte (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...).
* ``u8`` is one byte, ``f32`` an IEEE-754 binary32 little-endian.

``ByteReader`` raises :class:`FormatError` naming the field and byte offset for
every read past its end or every non-canonical varint; it never allocates more
than the bytes actually present.
"""
from __future__ import annotations

import struct

from cdl_tf.coding.errors import FormatError

MAX_VARINT_BYTES = 10
_U64_LIMIT = 1 << 64
_F32 = struct.Struct("<f")


def zigzag_encode(value: int) -> int:
    """Map a signed integer to an unsigned one: ``0, -1, 1, -2 -> 0, 1, 2, 3``."""
    return value << 1 if value >= 0 else ((-value) << 1) - 1


def zigzag_decode(value: int) -> int:
    """Inverse of :func:`zigzag_encode`."""
    return value >> 1 if not value & 1 else -((value + 1) >> 1)


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128 encoding of ``0 <= value < 2**64``."""
    if not 0 <= value < _U64_LIMIT:
        raise ValueError(f"varint value {value} outside [0, 2**64)")
    out = bytearray()
    while True:
        group = value & 0x7F
        value >>= 7
        if value:
            out.append(group | 0x80)
        else:
            out.append(group)
            return bytes(out)


class ByteWriter:
    """Append-only byte buffer with the format's primitive encoders."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def u8(self, value: int) -> None:
        if not 0 <= value <= 0xFF:
            raise ValueError(f"u8 value {value} outside [0, 255]")
        self._buf.append(value)

    def varint(self, value: int) -> None:
        self._buf += encode_varint(value)

    def zigzag(self, value: int) -> None:
        self._buf += encode_varint(zigzag_encode(value))

    def f32(self, value: float) -> None:
        self._buf += _F32.pack(value)

    def raw(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def getvalue(self) -> bytes:
        return bytes(self._buf)


class ByteReader:
    """Bounds-checked cursor over ``data[pos:end]``."""

    def __init__(self, data: memoryview, pos: int = 0, end: int | None = None) -> None:
        self._data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int, field: str) -> None:
        if n > self.end - self.pos:
            raise FormatError(
                f"{field}: needs {n} byte(s) at offset {self.pos} but only "
                f"{max(self.end - self.pos, 0)} remain"
            )

    def u8(self, field: str) -> int:
        self._need(1, field)
        value = self._data[self.pos]
        self.pos += 1
        return value

    def varint(self, field: str) -> int:
        start = self.pos
        value = 0
        for i in range(MAX_VARINT_BYTES):
            if self.pos >= self.end:
                raise FormatError(f"{field}: truncated varint at offset {start}")
            byte = self._data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise FormatError(f"{field}: non-canonical varint at offset {start}")
                if value >= _U64_LIMIT:
                    raise FormatError(f"{field}: varint at offset {start} exceeds 2**64")
                return value
        raise FormatError(
            f"{field}: varint at offset {start} longer than {MAX_VARINT_BYTES} bytes"
        )

    def zigzag(self, field: str) -> int:
        return zigzag_decode(self.varint(field))

    def f32(self, field: str) -> float:
        self._need(4, field)
        (value,) = _F32.unpack_from(self._data, self.pos)
        self.pos += 4
        return value

    def raw(self, n: int, field: str) -> memoryview:
        self._need(n, field)
        view = self._data[self.pos : self.pos + n]
        self.pos += n
        return view
