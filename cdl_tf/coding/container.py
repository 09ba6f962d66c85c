"""The ``.cdlz`` container: a compact, checksummed file of entropy-coded tensors.

Byte layout, limits and the reader's validation order are specified in
``docs/cdlz-format.md``. In short::

    "CDLZ" | version u8 = 3 | flags u8 | coder u8 | length varint
    | header size varint | compressed header length varint
    | raw deflate of the header:
    |     tensor count | metadata length + UTF-8 JSON object
    |     | per tensor: name, kind, ndim, dims, [lo, hi, q, scales, [live masks],
    |                   coder id, frequency table, payload length]
    | payloads in tensor order | CRC-32 (u32 LE) of every preceding byte

Quantized tensors are coded with :mod:`cdl_tf.coding.coders` under their own
frequency table over the used index range. A sparse tensor of two or more axes
may instead be stored with *live masks* (kind 3): a bit per row (the leading axes
flattened) and per column (the last axis) marks those holding a non-zero index,
and only the live rows x live columns are coded; the writer picks whichever of
the two is smaller. Float tensors are raw little-endian
float32 (lossless) or float16 (flagged lossy). Nothing in a file is executed: the
reader parses fixed binary fields and one JSON object, checks every declared size
against hard limits before allocating (the header is inflated into at most its
declared, bounded size), and raises :class:`FormatError` for any malformed input.
"""
from __future__ import annotations

import copy
import json
import math
import os
import zlib
from dataclasses import dataclass
from collections.abc import Iterator, Mapping
from typing import Literal, Union

import numpy as np

from cdl_tf.coding import coders
from cdl_tf.coding.errors import FormatError
from cdl_tf.coding.tensors import INDEX_MAX, INDEX_MIN, QuantizedTensor
from cdl_tf.coding.wire import ByteReader, ByteWriter, encode_varint
from cdl_tf.io import atomic_write_bytes

MAGIC = b"CDLZ"
VERSION = 3
READABLE_VERSIONS = (2, 3)  # version 2 is version 3 without kind 3

FLAG_LOSSY = 0x01

KIND_QUANTIZED = 0
KIND_FLOAT32 = 1
KIND_FLOAT16 = 2
KIND_MASKED = 3  # quantized, only the live rows x live columns coded

CODER_NONE = 0
CODER_NAMES: dict[int, coders.Coder] = {1: "ans", 2: "huffman"}
CODER_IDS: dict[str, int] = {name: i for i, name in CODER_NAMES.items()}

MAX_TENSORS = 1 << 16
MAX_NDIM = 8
MAX_NAME_BYTES = 1024
MAX_METADATA_BYTES = 1 << 20
MAX_TABLE_SIZE = 1 << 16
MAX_HEADER_BYTES = 1 << 26
HEADER_LEVEL = 9
HEADER_WBITS = -15
DEFAULT_MAX_ELEMENTS = 1 << 28

_FLOAT_KINDS = {KIND_FLOAT32: np.dtype("<f4"), KIND_FLOAT16: np.dtype("<f2")}

Tensor = Union[QuantizedTensor, np.ndarray]
FloatDtype = Literal["float32", "float16"]


class CodedFile(Mapping[str, Tensor]):
    """Read-only mapping ``name -> QuantizedTensor | np.ndarray`` in file order.

    Float tensors come back with their stored dtype (float32, or float16 when
    written with ``float_dtype="float16"``); all arrays are read-only.
    """

    def __init__(
        self,
        tensors: dict[str, Tensor],
        *,
        metadata: dict,
        coder: coders.Coder,
        payload_sizes: dict[str, int],
        mask_sizes: dict[str, int],
        lossy: bool,
        total_bytes: int,
    ) -> None:
        self._tensors = tensors
        self._metadata = metadata
        self._coder = coder
        self._payload_sizes = payload_sizes
        self._mask_sizes = mask_sizes
        self._lossy = lossy
        self._total_bytes = total_bytes

    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return (
            f"CodedFile({len(self)} tensors, coder={self._coder!r}, "
            f"total_bytes={self._total_bytes}, lossy={self._lossy})"
        )

    @property
    def metadata(self) -> dict:
        """The file's metadata object (a copy; ``{}`` when none was written)."""
        return copy.deepcopy(self._metadata)

    @property
    def coder(self) -> coders.Coder:
        """Entropy coder used for every tensor with two or more distinct indices."""
        return self._coder

    @property
    def lossy(self) -> bool:
        """True iff some float tensor was stored as float16."""
        return self._lossy

    @property
    def total_bytes(self) -> int:
        """Size of the whole encoded file."""
        return self._total_bytes

    @property
    def header_bytes(self) -> int:
        """Everything but the payloads: frame, compressed header, CRC."""
        return self._total_bytes - sum(self._payload_sizes.values())

    def payload_bytes(self, name: str) -> int:
        """Payload size of tensor ``name`` (0 for empty or single-symbol tensors)."""
        return self._payload_sizes[name]

    def mask_bytes(self, name: str) -> int:
        """Bytes of tensor ``name``'s live masks in the (uncompressed) header; 0 unless kind 3."""
        return self._mask_sizes[name]

    @property
    def index_bytes(self) -> int:
        """Bytes that code the indices of all quantized tensors: their payloads and live masks."""
        return sum(self._payload_sizes[n] + self._mask_sizes[n]
                   for n, t in self._tensors.items() if isinstance(t, QuantizedTensor))


# --------------------------------------------------------------------- writing


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


# --------------------------------------------------------------------- reading


@dataclass
class _Entry:
    """One parsed tensor header."""

    name: str
    kind: int
    shape: tuple[int, ...]
    size: int
    payload_len: int
    lo: int = 0
    hi: int = 0
    q: float = 0.0
    scales: np.ndarray | None = None
    coder_id: int = CODER_NONE
    used_lo: int = 0
    counts: np.ndarray | None = None
    rows: np.ndarray | None = None  # live masks (kind 3)
    cols: np.ndarray | None = None

    @property
    def mask_bytes(self) -> int:
        return 0 if self.rows is None else (self.rows.size + 7) // 8 + (self.cols.size + 7) // 8


def read(path: str | os.PathLike, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> CodedFile:
    """Read and fully validate a ``.cdlz`` file (see :func:`decode_bytes`)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_bytes(data, max_elements=max_elements)


def decode_bytes(data: bytes | bytearray | memoryview, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> CodedFile:
    """Parse, validate and decode ``.cdlz`` bytes.

    ``max_elements`` bounds the element count of each tensor and of all tensors
    together; it is checked before anything is allocated. Raises
    :class:`FormatError` for any malformed input.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}")
    if max_elements < 0:
        raise ValueError(f"max_elements must be >= 0, got {max_elements}")
    view = memoryview(data).cast("B")
    reader, version, flags, coder_id = _check_frame(view)
    header = _inflate_header(reader)
    metadata, entries = _parse_header(header, version, coder_id, max_elements)
    if header.remaining:
        raise FormatError(
            f"header: {header.remaining} byte(s) left after the last tensor header at offset {header.pos}"
        )

    lossy = any(e.kind == KIND_FLOAT16 for e in entries)
    if bool(flags & FLAG_LOSSY) != lossy:
        raise FormatError(
            f"flags: lossy bit is {flags & FLAG_LOSSY} but the file has "
            f"{'a' if lossy else 'no'} float16 tensor"
        )
    declared = sum(e.payload_len for e in entries)
    if declared != reader.remaining:
        raise FormatError(
            f"payload lengths sum to {declared} bytes but {reader.remaining} bytes follow the compressed header"
        )

    tensors: dict[str, Tensor] = {}
    for entry in entries:
        payload = reader.raw(entry.payload_len, f"tensor {entry.name!r} payload")
        tensors[entry.name] = _decode_tensor(entry, payload, CODER_NAMES[coder_id])
    return CodedFile(
        tensors,
        metadata=metadata,
        coder=CODER_NAMES[coder_id],
        payload_sizes={e.name: e.payload_len for e in entries},
        mask_sizes={e.name: e.mask_bytes for e in entries},
        lossy=lossy,
        total_bytes=len(view),
    )


def _check_frame(view: memoryview) -> tuple[ByteReader, int, int, int]:
    """Magic, version, flags, coder, declared length, CRC-32; returns a header reader, version, flags, coder."""
    if len(view) < len(MAGIC):
        raise FormatError(f"file is {len(view)} bytes, too short for the magic {MAGIC!r}")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise FormatError(f"magic: expected {MAGIC!r}, got {bytes(view[:len(MAGIC)])!r}")
    reader = ByteReader(view, len(MAGIC))
    version = reader.u8("version")
    if version not in READABLE_VERSIONS:
        raise FormatError(f"version: unsupported format version {version} (supported: {READABLE_VERSIONS})")
    flags = reader.u8("flags")
    if flags & ~FLAG_LOSSY:
        raise FormatError(f"flags: unknown bits set in 0x{flags:02x}")
    coder_id = reader.u8("coder")
    if coder_id not in CODER_NAMES:
        raise FormatError(f"coder: unknown coder id {coder_id}")
    length = reader.varint("length")
    if length != reader.remaining:
        raise FormatError(
            f"length: declares {length} bytes after offset {reader.pos} but {reader.remaining} are present"
        )
    if length < 4:
        raise FormatError(f"length: {length} bytes cannot hold the 4-byte CRC-32")
    stored = int.from_bytes(view[-4:], "little")
    computed = zlib.crc32(view[:-4])
    if stored != computed:
        raise FormatError(f"crc32: stored 0x{stored:08x}, computed 0x{computed:08x}")
    return ByteReader(view, reader.pos, len(view) - 4), version, flags, coder_id


def _inflate_header(reader: ByteReader) -> ByteReader:
    """Read the header size and the compressed header; returns a reader over the inflated header."""
    size = reader.varint("header size")
    if size > MAX_HEADER_BYTES:
        raise FormatError(f"header size: {size} exceeds the limit {MAX_HEADER_BYTES}")
    length = reader.varint("compressed header length")
    if length > reader.remaining:
        raise FormatError(
            f"compressed header length: {length} bytes declared but only {reader.remaining} remain before the CRC"
        )
    packed = reader.raw(length, "compressed header")
    inflater = zlib.decompressobj(HEADER_WBITS)
    try:
        header = inflater.decompress(packed, size + 1)
    except zlib.error as exc:
        raise FormatError(f"compressed header: invalid deflate stream ({exc})") from exc
    if len(header) > size:
        raise FormatError(
            f"header size: the compressed header inflates to more than the declared {size} bytes"
        )
    if not inflater.eof:
        raise FormatError(f"compressed header: deflate stream is incomplete after {length} bytes")
    if inflater.unused_data:
        raise FormatError(
            f"compressed header: {len(inflater.unused_data)} byte(s) after the end of the deflate stream"
        )
    if len(header) != size:
        raise FormatError(
            f"header size: declares {size} bytes but the compressed header inflates to {len(header)}"
        )
    return ByteReader(memoryview(header))


def _parse_header(reader: ByteReader, version: int, coder_id: int, max_elements: int) -> tuple[dict, list[_Entry]]:
    count = reader.varint("tensor count")
    if count > MAX_TENSORS:
        raise FormatError(f"tensor count: {count} exceeds the limit {MAX_TENSORS}")
    metadata = _parse_metadata(reader)
    entries: list[_Entry] = []
    names: set[str] = set()
    total = 0
    for index in range(count):
        name = _parse_name(reader, index)
        if name in names:
            raise FormatError(f"tensor {index} name: duplicate name {name!r}")
        names.add(name)
        kind = reader.u8(f"tensor {name!r} kind")
        shape, size = _parse_shape(reader, name, max_elements)
        total += size
        if total > max_elements:
            raise FormatError(
                f"tensor {name!r}: total element count {total} exceeds max_elements={max_elements}"
            )
        if kind in _FLOAT_KINDS:
            entries.append(_Entry(name, kind, shape, size, size * _FLOAT_KINDS[kind].itemsize))
        elif kind == KIND_QUANTIZED or (kind == KIND_MASKED and version >= 3):
            entries.append(_parse_quantized(reader, name, shape, size, coder_id, masked=kind == KIND_MASKED))
        else:
            raise FormatError(f"tensor {name!r} kind: unknown kind {kind} in a version-{version} file")
    return metadata, entries


def _parse_metadata(reader: ByteReader) -> dict:
    length = reader.varint("metadata length")
    if length > MAX_METADATA_BYTES:
        raise FormatError(f"metadata length: {length} exceeds the limit {MAX_METADATA_BYTES}")
    if length == 0:
        return {}
    raw = reader.raw(length, "metadata")

    def reject_constant(token: str) -> None:
        raise FormatError(f"metadata: non-standard JSON constant {token}")

    try:
        value = json.loads(bytes(raw).decode("utf-8"), parse_constant=reject_constant)
    except FormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"metadata: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise FormatError(f"metadata: expected a JSON object, got {type(value).__name__}")
    return value


def _parse_name(reader: ByteReader, index: int) -> str:
    length = reader.varint(f"tensor {index} name length")
    if not 1 <= length <= MAX_NAME_BYTES:
        raise FormatError(f"tensor {index} name length: {length} outside [1, {MAX_NAME_BYTES}]")
    raw = reader.raw(length, f"tensor {index} name")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"tensor {index} name: invalid UTF-8 ({exc})") from exc


def _parse_shape(reader: ByteReader, name: str, max_elements: int) -> tuple[tuple[int, ...], int]:
    ndim = reader.varint(f"tensor {name!r} ndim")
    if ndim > MAX_NDIM:
        raise FormatError(f"tensor {name!r} ndim: {ndim} exceeds the limit {MAX_NDIM}")
    dims = []
    for axis in range(ndim):
        dim = reader.varint(f"tensor {name!r} dim {axis}")
        if dim > max_elements:
            raise FormatError(
                f"tensor {name!r} dim {axis}: {dim} exceeds max_elements={max_elements}"
            )
        dims.append(dim)
    size = math.prod(dims)
    if size > max_elements:
        raise FormatError(
            f"tensor {name!r}: {size} elements {tuple(dims)} exceed max_elements={max_elements}"
        )
    return tuple(dims), size


def _parse_quantized(
    reader: ByteReader, name: str, shape: tuple[int, ...], size: int, file_coder: int, *, masked: bool
) -> _Entry:
    field = f"tensor {name!r}"
    lo = reader.zigzag(f"{field} lo")
    hi = reader.zigzag(f"{field} hi")
    if not INDEX_MIN <= lo <= hi <= INDEX_MAX:
        raise FormatError(f"{field} lo/hi: need {INDEX_MIN} <= lo <= hi <= {INDEX_MAX}, got lo={lo}, hi={hi}")
    q = reader.f32(f"{field} q")
    if not (math.isfinite(q) and q > 0):
        raise FormatError(f"{field} q: {q} is not finite and > 0")
    has_scales = reader.u8(f"{field} scales flag")
    scales = None
    if has_scales == 1:
        if not shape:
            raise FormatError(f"{field} scales flag: set for a 0-d tensor")
        raw = reader.raw(4 * shape[-1], f"{field} scales")
        scales = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(scales)):
            raise FormatError(f"{field} scales: non-finite value")
    elif has_scales != 0:
        raise FormatError(f"{field} scales flag: {has_scales} is not 0 or 1")
    rows = cols = None
    n_coded = size  # the number of coded indices
    if masked:
        if len(shape) < 2 or size == 0:
            raise FormatError(f"{field} live masks: need a non-empty tensor of at least 2 dims, got shape {shape}")
        if not lo <= 0 <= hi:
            raise FormatError(f"{field} live masks: alphabet [lo={lo}, hi={hi}] does not contain index 0")
        rows = _parse_mask(reader, size // shape[-1], f"{field} row mask")
        cols = _parse_mask(reader, shape[-1], f"{field} column mask")
        n_coded = int(rows.sum()) * int(cols.sum())
        if n_coded == 0:
            raise FormatError(f"{field} live masks: no live row or no live column")
    coder_id = reader.u8(f"{field} coder id")
    if coder_id not in (CODER_NONE, file_coder):
        raise FormatError(f"{field} coder id: {coder_id}, expected {CODER_NONE} or the file coder {file_coder}")
    kind = KIND_MASKED if masked else KIND_QUANTIZED
    entry = _Entry(name, kind, shape, size, 0, lo, hi, q, scales, coder_id, rows=rows, cols=cols)
    if n_coded == 0:
        if coder_id != CODER_NONE:
            raise FormatError(f"{field} coder id: {coder_id} for an empty tensor")
        return entry
    entry.used_lo = reader.zigzag(f"{field} used min")
    span = reader.varint(f"{field} used span")
    if span >= MAX_TABLE_SIZE:
        raise FormatError(f"{field} used span: {span} + 1 symbols exceed the limit {MAX_TABLE_SIZE}")
    if entry.used_lo < lo or entry.used_lo + span > hi:
        raise FormatError(
            f"{field} used range: [{entry.used_lo}, {entry.used_lo + span}] outside [lo={lo}, hi={hi}]"
        )
    if span + 1 > reader.remaining:
        raise FormatError(
            f"{field} frequency table: {span + 1} counts declared but only {reader.remaining} bytes remain"
        )
    table = [reader.varint(f"{field} count {j}") for j in range(span + 1)]
    if sum(table) != n_coded:
        what = "live rows x live columns hold" if masked else "tensor has"
        raise FormatError(f"{field} frequency table: counts sum to {sum(table)}, {what} {n_coded} elements")
    counts = np.array(table, dtype=np.int64)  # each count <= size <= max_elements
    if counts[0] == 0 or counts[-1] == 0:
        raise FormatError(f"{field} frequency table: the used range must start and end at used symbols")
    coded = coders.needs_payload(counts)
    if coded != (coder_id != CODER_NONE):
        raise FormatError(
            f"{field} coder id: {coder_id} with {int(np.count_nonzero(counts))} distinct symbol(s)"
        )
    entry.counts = counts
    if coded:
        entry.payload_len = reader.varint(f"{field} payload length")
        if entry.payload_len == 0:
            raise FormatError(f"{field} payload length: 0 for a tensor with >= 2 distinct symbols")
    return entry


def _parse_mask(reader: ByteReader, n: int, field: str) -> np.ndarray:
    """``ceil(n / 8)`` bytes, bit ``k`` of byte ``k // 8`` (least significant first) for item ``k``."""
    raw = reader.raw((n + 7) // 8, field)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    if bits[n:].any():
        raise FormatError(f"{field}: padding bits after the {n} mask bits are not 0")
    return bits[:n].astype(bool)


def _index_dtype(lo: int, hi: int) -> np.dtype:
    """Smallest signed integer dtype holding ``[lo, hi]``."""
    for dtype in (np.int8, np.int16):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def _decode_tensor(entry: _Entry, payload: memoryview, coder: coders.Coder) -> Tensor:
    if entry.kind in _FLOAT_KINDS:
        stored = _FLOAT_KINDS[entry.kind]
        array = np.frombuffer(payload, dtype=stored).astype(stored.newbyteorder("="))
        array = array.reshape(entry.shape)
    else:
        dtype = _index_dtype(entry.lo, entry.hi)
        n_coded = int(entry.counts.sum()) if entry.counts is not None else 0
        if entry.coder_id != CODER_NONE:
            symbols = coders.decode_symbols(
                payload, entry.counts, coder, field=f"tensor {entry.name!r} payload"
            )
            array = (symbols + np.int64(entry.used_lo)).astype(dtype)
        else:
            array = np.full(n_coded, entry.used_lo, dtype=dtype)
        if entry.kind == KIND_MASKED:
            full = np.zeros((entry.rows.size, entry.cols.size), dtype=dtype)
            full[np.ix_(entry.rows, entry.cols)] = array.reshape(int(entry.rows.sum()), int(entry.cols.sum()))
            array = full
        array = array.reshape(entry.shape)
    array.setflags(write=False)
    if entry.kind in _FLOAT_KINDS:
        return array
    if entry.scales is not None:
        entry.scales.setflags(write=False)
    return QuantizedTensor(array, entry.lo, entry.hi, entry.q, entry.scales)
