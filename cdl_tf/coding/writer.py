"""Writing ``.cdlz`` files (:mod:`cdl_tf.coding.format`, ``docs/cdlz-format.md``).

Each quantized tensor is coded under its own frequency table over its used index
range. A tensor of two or more axes whose non-zero indices sit in a few rows and
columns is also encoded with live masks (kind 3), and the writer keeps whichever
of the two encodings is smaller. The same tensors, options and metadata always
give the same bytes (with a given zlib library).
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from typing import Literal

import numpy as np

from cdl_tf.coding import coders
from cdl_tf.coding.format import (
    CODER_IDS,
    CODER_NONE,
    FLAG_LOSSY,
    HEADER_LEVEL,
    HEADER_WBITS,
    KIND_FLOAT16,
    KIND_FLOAT32,
    KIND_MASKED,
    KIND_QUANTIZED,
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
) -> bytes:
    """Serialise ``tensors`` (in iteration order) to ``.cdlz`` bytes.

    Args:
      tensors: name -> :class:`QuantizedTensor` or floating ``np.ndarray``.
      coder: ``"ans"`` or ``"huffman"``, used for every quantized tensor with at
        least two distinct indices.
      float_dtype: ``"float32"`` stores float arrays exactly (float64 input must be
        exactly representable); ``"float16"`` rounds them and flags the file lossy.
      metadata: optional JSON-serialisable mapping, stored as compact UTF-8 JSON.
    """
    if coder not in CODER_IDS:
        raise ValueError(f"coder must be one of {tuple(CODER_IDS)}, got {coder!r}")
    if float_dtype not in ("float32", "float16"):
        raise ValueError(f"float_dtype must be 'float32' or 'float16', got {float_dtype!r}")
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"{len(tensors)} tensors exceed the limit of {MAX_TENSORS}")
    meta = _encode_metadata(metadata)

    header = ByteWriter()
    header.varint(len(tensors))
    header.varint(len(meta))
    header.raw(meta)
    payloads: list[bytes] = []
    lossy = False
    for name, tensor in tensors.items():
        _write_name(header, name)
        if isinstance(tensor, QuantizedTensor):
            payloads.append(_write_quantized(header, name, tensor, coder))
        else:
            kind, stored = _float_storage(name, tensor, float_dtype)
            lossy |= kind == KIND_FLOAT16
            header.u8(kind)
            _write_shape(header, name, stored.shape)
            payloads.append(stored.tobytes())

    body = _pack_header(header.getvalue()) + b"".join(payloads)
    flags = FLAG_LOSSY if lossy else 0
    framed = MAGIC + bytes((VERSION, flags, CODER_IDS[coder])) + encode_varint(len(body) + 4) + body
    return framed + zlib.crc32(framed).to_bytes(4, "little")


def write(
    path: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    *,
    coder: coders.Coder = "ans",
    float_dtype: FloatDtype = "float32",
    metadata: Mapping | None = None,
) -> int:
    """Atomically write ``tensors`` to ``path`` (`cdl_tf.io.atomic_write_bytes`); returns bytes written."""
    data = encode_bytes(tensors, coder=coder, float_dtype=float_dtype, metadata=metadata)
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


def _write_quantized(header: ByteWriter, name: str, tensor: QuantizedTensor, coder: coders.Coder) -> bytes:
    """Kind 0 or, where it is smaller, kind 3 (live masks); returns the payload."""
    dense = ByteWriter()
    kind, payload = KIND_QUANTIZED, _write_indices(dense, name, tensor.indices, coder)
    fields = dense.getvalue()
    live = _live_masks(tensor)
    if live is not None:
        rows, cols = live
        masked = ByteWriter()
        masked.raw(np.packbits(rows, bitorder="little").tobytes())
        masked.raw(np.packbits(cols, bitorder="little").tobytes())
        sub = tensor.indices.reshape(rows.size, cols.size)[np.ix_(rows, cols)]
        masked_payload = _write_indices(masked, name, sub, coder)
        if len(masked.getvalue()) + len(masked_payload) < len(fields) + len(payload):
            kind, payload, fields = KIND_MASKED, masked_payload, masked.getvalue()
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
    return payload


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


def _write_indices(header: ByteWriter, name: str, indices: np.ndarray, coder: coders.Coder) -> bytes:
    """Coder id, frequency table and payload length of ``indices``; returns the payload."""
    used_lo, counts = coders.frequency_table(indices)
    if counts.size > MAX_TABLE_SIZE:
        raise ValueError(
            f"tensor {name!r}: used index range has {counts.size} values, limit {MAX_TABLE_SIZE}"
        )
    coder_id = CODER_IDS[coder] if coders.needs_payload(counts) else CODER_NONE
    header.u8(coder_id)
    if counts.size:
        header.zigzag(used_lo)
        header.varint(counts.size - 1)
        for count in counts.tolist():
            header.varint(count)
    if coder_id == CODER_NONE:
        return b""
    symbols = indices.reshape(-1).astype(np.int64) - used_lo
    payload = coders.encode_symbols(symbols, counts, coder)
    header.varint(len(payload))
    return payload


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
