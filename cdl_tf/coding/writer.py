"""Writing ``.cdlz`` files (:mod:`cdl_tf.coding.format`, ``docs/cdlz-format.md``).

Each quantized tensor is coded under its own frequency table over its used index
range. A tensor of two or more axes whose non-zero indices sit in a few rows and
columns is also encoded with live masks (kind 3). In an ANS file, a tensor whose
(live) columns are in canonical order (`cdl_tf.coding.multiset.column_order`) is
also encoded with those columns as a multiset (kinds 4 and 5), which the decoder
returns in the same order. The writer keeps the smallest encoding, an earlier kind
on ties, and writes version 4 only if a tensor has kind 4 or 5, else version 3.
The same tensors, options and metadata always give the same bytes (with a given
zlib library).
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from typing import Literal

import numpy as np

from cdl_tf.coding import coders, multiset
from cdl_tf.coding.format import (
    CODER_IDS,
    CODER_NONE,
    FIRST_VERSION,
    FLAG_LOSSY,
    HEADER_LEVEL,
    HEADER_WBITS,
    KIND_FLOAT16,
    KIND_FLOAT32,
    KIND_MASKED,
    KIND_MASKED_UNORDERED,
    KIND_QUANTIZED,
    KIND_UNORDERED,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_METADATA_BYTES,
    MAX_NAME_BYTES,
    MAX_NDIM,
    MAX_TABLE_SIZE,
    MAX_TENSORS,
    VERSION,
    Tensor,
)
from cdl_tf.coding.tensors import QuantizedTensor
from cdl_tf.coding.wire import ByteWriter, encode_varint
from cdl_tf.io import atomic_write_bytes

FloatDtype = Literal["float32", "float16"]


def encode_bytes(
    tensors: Mapping[str, Tensor],
    *,
    coder: coders.Coder = "ans",
    float_dtype: FloatDtype = "float32",
    metadata: Mapping | None = None,
    max_version: int = VERSION,
) -> bytes:
    """Serialise ``tensors`` (in iteration order) to ``.cdlz`` bytes.

    Args:
      tensors: name -> :class:`QuantizedTensor` or floating ``np.ndarray``.
      coder: ``"ans"`` or ``"huffman"``, used for every quantized tensor with at
        least two distinct indices.
      float_dtype: ``"float32"`` stores float arrays exactly (float64 input must be
        exactly representable); ``"float16"`` rounds them and flags the file lossy.
      metadata: optional JSON-serialisable mapping, stored as compact UTF-8 JSON.
      max_version: ``4`` codes columns in canonical order as a multiset where that is
        smaller (kinds 4 and 5, a version-4 file); ``3`` never does (a version-3 file).
    """
    if coder not in CODER_IDS:
        raise ValueError(f"coder must be one of {tuple(CODER_IDS)}, got {coder!r}")
    if float_dtype not in ("float32", "float16"):
        raise ValueError(f"float_dtype must be 'float32' or 'float16', got {float_dtype!r}")
    if max_version not in (3, VERSION):
        raise ValueError(f"max_version must be 3 or {VERSION}, got {max_version!r}")
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"{len(tensors)} tensors exceed the limit of {MAX_TENSORS}")
    meta = _encode_metadata(metadata)

    header = ByteWriter()
    header.varint(len(tensors))
    header.varint(len(meta))
    header.raw(meta)
    lossy = False
    payloads: list[bytes] = []
    version = 3  # unless a kind needs a later one
    columns_left = multiset.MAX_FILE_COLUMNS if max_version > 3 else 0  # to code as multisets
    for name, tensor in tensors.items():
        _write_name(header, name)
        if isinstance(tensor, QuantizedTensor):
            kind, payload, columns = _write_quantized(header, name, tensor, coder, columns_left)
            columns_left -= columns
            payloads.append(payload)
        else:
            kind, stored = _float_storage(name, tensor, float_dtype)
            lossy |= kind == KIND_FLOAT16
            header.u8(kind)
            _write_shape(header, name, stored.shape)
            payloads.append(stored.tobytes())
        version = max(version, FIRST_VERSION[kind])

    body = _pack_header(header.getvalue()) + b"".join(payloads)
    flags = FLAG_LOSSY if lossy else 0
    framed = MAGIC + bytes((version, flags, CODER_IDS[coder])) + encode_varint(len(body) + 4) + body
    return framed + zlib.crc32(framed).to_bytes(4, "little")


def write(
    path: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    *,
    coder: coders.Coder = "ans",
    float_dtype: FloatDtype = "float32",
    metadata: Mapping | None = None,
    max_version: int = VERSION,
) -> int:
    """Atomically write ``tensors`` to ``path`` (`cdl_tf.io.atomic_write_bytes`); returns bytes written."""
    data = encode_bytes(tensors, coder=coder, float_dtype=float_dtype, metadata=metadata, max_version=max_version)
    atomic_write_bytes(path, data)
    return len(data)


def _pack_header(header: bytes) -> bytes:
    """``header size | compressed header length | raw deflate of header``."""
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"header is {len(header)} bytes, limit {MAX_HEADER_BYTES}")
    compressor = zlib.compressobj(HEADER_LEVEL, zlib.DEFLATED, HEADER_WBITS)
    packed = compressor.compress(header) + compressor.flush()
    return encode_varint(len(header)) + encode_varint(len(packed)) + packed


def _encode_metadata(metadata: Mapping | None) -> bytes:
    if metadata is None:
        return b""
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    if not metadata:
        return b""
    text = json.dumps(dict(metadata), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data = text.encode("utf-8")
    if len(data) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {len(data)} bytes, limit {MAX_METADATA_BYTES}")
    return data


def _write_name(header: ByteWriter, name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {type(name).__name__}")
    data = name.encode("utf-8")
    if not 1 <= len(data) <= MAX_NAME_BYTES:
        raise ValueError(f"tensor name {name!r} must be 1..{MAX_NAME_BYTES} UTF-8 bytes")
    header.varint(len(data))
    header.raw(data)


def _write_shape(header: ByteWriter, name: str, shape: tuple[int, ...]) -> None:
    if len(shape) > MAX_NDIM:
        raise ValueError(f"tensor {name!r} has {len(shape)} dims, limit {MAX_NDIM}")
    header.varint(len(shape))
    for dim in shape:
        header.varint(dim)


def _write_quantized(
    header: ByteWriter, name: str, tensor: QuantizedTensor, coder: coders.Coder, max_columns: int
) -> tuple[int, bytes, int]:
    """The smallest of kinds 0, 3 (live masks) and, for at most ``max_columns`` coded columns, 4 and 5;
    returns the kind, the payload and the columns coded as a multiset."""
    encodings = []  # (kind, fields after the scales, payload, columns as a multiset), earlier kinds first
    for kind, masks, matrix in _layouts(tensor):
        used_lo, counts = coders.frequency_table(matrix)
        if counts.size > MAX_TABLE_SIZE:
            raise ValueError(
                f"tensor {name!r}: used index range has {counts.size} values, limit {MAX_TABLE_SIZE}"
            )
        symbols = matrix.astype(np.int64) - used_lo
        payloads = {kind: (coders.encode_symbols(symbols.reshape(-1), counts, coder), 0)}
        if payload := _multiset_payload(symbols, counts, -used_lo, coder, max_columns):
            payloads[KIND_UNORDERED if kind == KIND_QUANTIZED else KIND_MASKED_UNORDERED] = payload, symbols.shape[1]
        for coded_kind, (payload, columns) in payloads.items():
            fields = ByteWriter()
            fields.raw(masks)
            _write_table(fields, used_lo, counts, coder, payload)
            encodings.append((coded_kind, fields.getvalue(), payload, columns))
    kind, fields, payload, columns = min(encodings, key=lambda e: len(e[1]) + len(e[2]))  # the first of the smallest
    header.u8(kind)
    _write_shape(header, name, tensor.shape)
    header.zigzag(tensor.lo)
    header.zigzag(tensor.hi)
    header.f32(tensor.q)
    if tensor.scales is None:
        header.u8(0)
    else:
        header.u8(1)
        header.raw(tensor.scales.astype("<f4").tobytes())
    header.raw(fields)
    return kind, payload, columns


def _layouts(tensor: QuantizedTensor) -> list[tuple[int, bytes, np.ndarray]]:
    """``(kind, mask bytes, coded indices)`` of kind 0 (the ``R x C`` view of a tensor of two or
    more axes, else the flat indices) and, where live masks apply, of kind 3 (the live submatrix)."""
    indices = tensor.indices
    dense = indices.reshape(-1, tensor.shape[-1]) if indices.ndim >= 2 and indices.size else indices.reshape(-1)
    layouts = [(KIND_QUANTIZED, b"", dense)]
    live = _live_masks(tensor)
    if live is not None:
        rows, cols = live
        masks = np.packbits(rows, bitorder="little").tobytes() + np.packbits(cols, bitorder="little").tobytes()
        layouts.append((KIND_MASKED, masks, dense[np.ix_(rows, cols)]))
    return layouts


def _multiset_payload(symbols: np.ndarray, counts: np.ndarray, zero: int, coder: coders.Coder,
                      max_columns: int) -> bytes:
    """The payload of a symbol matrix's columns coded as a multiset, ``zero`` the symbol of index 0;
    ``b""`` where kinds 4 and 5 do not apply: Huffman, fewer than two axes or distinct symbols, more
    than ``max_columns`` or `multiset.MAX_COLUMNS` columns, columns not in canonical order, or an
    empty multiset payload."""
    if (coder != "ans" or symbols.ndim != 2 or not 1 <= symbols.shape[1] <= min(max_columns, multiset.MAX_COLUMNS)
            or not coders.needs_payload(counts)):
        return b""
    if not multiset.is_canonical(symbols, zero):
        return b""
    return multiset.encode_columns(symbols, counts, zero)


def _live_masks(tensor: QuantizedTensor) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows (leading axes flattened) and columns (last axis) holding a non-zero index.

    ``None`` where live masks cannot describe the tensor (fewer than two axes, no
    element, index 0 outside the alphabet, no non-zero index) or would mark everything live.
    """
    if tensor.indices.ndim < 2 or tensor.indices.size == 0 or not tensor.lo <= 0 <= tensor.hi:
        return None
    nonzero = tensor.indices.reshape(-1, tensor.shape[-1]) != 0
    rows, cols = nonzero.any(axis=1), nonzero.any(axis=0)
    if not rows.any() or (rows.all() and cols.all()):
        return None
    return rows, cols


def _write_table(header: ByteWriter, used_lo: int, counts: np.ndarray, coder: coders.Coder, payload: bytes) -> None:
    """Coder id, frequency table and, for a coded tensor, the payload length."""
    coded = coders.needs_payload(counts)
    header.u8(CODER_IDS[coder] if coded else CODER_NONE)
    if counts.size:
        header.zigzag(used_lo)
        header.varint(counts.size - 1)
        for count in counts.tolist():
            header.varint(count)
    if coded:
        header.varint(len(payload))


def _float_storage(name: str, tensor: object, float_dtype: FloatDtype) -> tuple[int, np.ndarray]:
    array = np.asarray(tensor)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"tensor {name!r}: expected a QuantizedTensor or a floating ndarray, got dtype {array.dtype}"
        )
    if float_dtype == "float16":
        return KIND_FLOAT16, array.astype("<f2")
    stored = array.astype("<f4")
    if array.dtype.itemsize > 4 and not np.array_equal(
        stored.astype(array.dtype), array, equal_nan=True
    ):
        raise ValueError(
            f"tensor {name!r} ({array.dtype}) is not exactly representable as float32; "
            "cast it first or use float_dtype='float16'"
        )
    return KIND_FLOAT32, stored
