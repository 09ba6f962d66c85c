"""Reading and validating ``.cdlz`` files (:mod:`cdl_tf.coding.format`, ``docs/cdlz-format.md``).

Nothing in a file is executed: the reader parses fixed binary fields and one JSON
object, in the validation order of the specification. It checks every declared
size against hard limits before allocating (the header is inflated into at most
its declared, bounded size) and raises :class:`FormatError` for any malformed input.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterator, Mapping

import numpy as np

from cdl_tf.coding import coders, multiset
from cdl_tf.coding.coded_file import CodedFile
from cdl_tf.coding.errors import FormatError
from cdl_tf.coding.format import (
    CODER_IDS,
    CODER_NAMES,
    CODER_NONE,
    DEFAULT_MAX_ELEMENTS,
    FIRST_VERSION,
    FLAG_LOSSY,
    FLOAT_KINDS,
    HEADER_WBITS,
    KIND_FLOAT16,
    MAGIC,
    MASKED_KINDS,
    MAX_HEADER_BYTES,
    MAX_METADATA_BYTES,
    MAX_NAME_BYTES,
    MAX_NDIM,
    MAX_TABLE_SIZE,
    MAX_TENSORS,
    READABLE_VERSIONS,
    UNORDERED_KINDS,
    Tensor,
    TensorEntry,
)
from cdl_tf.coding.tensors import INDEX_MAX, INDEX_MIN, QuantizedTensor
from cdl_tf.coding.wire import ByteReader


def read(path: str | os.PathLike, *, max_elements: int = DEFAULT_MAX_ELEMENTS, lazy: bool = False) -> CodedFile:
    """Read and fully validate a ``.cdlz`` file (see :func:`decode_bytes`)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_bytes(data, max_elements=max_elements, lazy=lazy)


def decode_bytes(
    data: bytes | bytearray | memoryview, *, max_elements: int = DEFAULT_MAX_ELEMENTS, lazy: bool = False
) -> CodedFile:
    """Parse, validate and decode ``.cdlz`` bytes.

    ``max_elements`` bounds the element count of each tensor and of all tensors
    together; it is checked before anything is allocated. Raises
    :class:`FormatError` for any malformed input. With ``lazy``, the frame, CRC-32 and
    header are validated now and each tensor's payload when the tensor is looked up:
    every lookup decodes it anew and nothing decoded is kept, so a caller holds only the
    tensors it uses, and the file's bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}")
    if max_elements < 0:
        raise ValueError(f"max_elements must be >= 0, got {max_elements}")
    if lazy and not isinstance(data, bytes):
        data = bytes(data)  # payloads are decoded later, from bytes that cannot change meanwhile
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

    payloads = [reader.raw(e.payload_len, f"tensor {e.name!r} payload") for e in entries]
    tensors = _LazyTensors(entries, payloads, CODER_NAMES[coder_id])
    return CodedFile(
        tensors if lazy else dict(tensors.items()),
        metadata=metadata,
        coder=CODER_NAMES[coder_id],
        payload_sizes={e.name: e.payload_len for e in entries},
        mask_sizes={e.name: e.mask_bytes for e in entries},
        unordered={e.name for e in entries if e.kind in UNORDERED_KINDS},
        lossy=lossy,
        total_bytes=len(view),
        version=version,
    )


class _LazyTensors(Mapping[str, Tensor]):
    """``name -> tensor``, each payload decoded (and validated) on every lookup."""

    def __init__(self, entries: list[TensorEntry], payloads: list[memoryview], coder: coders.Coder) -> None:
        self._entries = {e.name: (e, p) for e, p in zip(entries, payloads)}
        self._coder = coder

    def __getitem__(self, name: str) -> Tensor:
        entry, payload = self._entries[name]
        return _decode_tensor(entry, payload, self._coder)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


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


def _parse_header(reader: ByteReader, version: int, coder_id: int, max_elements: int) -> tuple[dict, list[TensorEntry]]:
    count = reader.varint("tensor count")
    if count > MAX_TENSORS:
        raise FormatError(f"tensor count: {count} exceeds the limit {MAX_TENSORS}")
    metadata = _parse_metadata(reader)
    entries: list[TensorEntry] = []
    names: set[str] = set()
    total = columns = 0  # elements; columns coded as multisets
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
        if FIRST_VERSION.get(kind, version + 1) > version:
            raise FormatError(f"tensor {name!r} kind: unknown kind {kind} in a version-{version} file")
        if kind in FLOAT_KINDS:
            entries.append(TensorEntry(name, kind, shape, size, size * FLOAT_KINDS[kind].itemsize))
        else:
            entries.append(_parse_quantized(reader, name, shape, size, coder_id, kind))
        if kind in UNORDERED_KINDS:
            columns += entries[-1].coded_shape[1]
            if columns > multiset.MAX_FILE_COLUMNS:
                raise FormatError(
                    f"tensor {name!r}: {columns} columns coded as multisets in the file exceed the limit "
                    f"{multiset.MAX_FILE_COLUMNS}"
                )
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

    def finite_float(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            raise FormatError(f"metadata: number {token[:40]} is beyond float64")
        return value

    try:
        value = json.loads(bytes(raw).decode("utf-8"), parse_constant=reject_constant, parse_float=finite_float)
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
    reader: ByteReader, name: str, shape: tuple[int, ...], size: int, file_coder: int, kind: int
) -> TensorEntry:
    field = f"tensor {name!r}"
    masked, unordered = kind in MASKED_KINDS, kind in UNORDERED_KINDS
    if unordered and file_coder != CODER_IDS["ans"]:
        raise FormatError(f"{field} kind: kind {kind} needs the ANS coder, the file's is {CODER_NAMES[file_coder]}")
    if unordered and (len(shape) < 2 or size == 0):
        raise FormatError(f"{field} kind: kind {kind} needs a non-empty tensor of at least 2 dims, got shape {shape}")
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
    entry = TensorEntry(name, kind, shape, size, 0, lo, hi, q, scales, coder_id, rows=rows, cols=cols)
    if unordered:
        if coder_id == CODER_NONE:
            raise FormatError(f"{field} coder id: 0, but kind {kind} has a payload")
        columns = entry.coded_shape[1]
        if columns > multiset.MAX_COLUMNS:
            raise FormatError(f"{field}: {columns} coded columns exceed the limit {multiset.MAX_COLUMNS} of kind {kind}")
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


def _decode_tensor(entry: TensorEntry, payload: memoryview, coder: coders.Coder) -> Tensor:
    if entry.kind in FLOAT_KINDS:
        stored = FLOAT_KINDS[entry.kind]
        array = np.frombuffer(payload, dtype=stored).astype(stored.newbyteorder("="))
        array = array.reshape(entry.shape)
    else:
        dtype = _index_dtype(entry.lo, entry.hi)
        n_coded = int(entry.counts.sum()) if entry.counts is not None else 0
        field = f"tensor {entry.name!r} payload"
        if entry.kind in UNORDERED_KINDS:
            symbols = multiset.decode_columns(payload, entry.counts, entry.coded_shape, -entry.used_lo, field=field)
            array = (symbols.reshape(-1) + np.int64(entry.used_lo)).astype(dtype)
        elif entry.coder_id != CODER_NONE:
            symbols = coders.decode_symbols(payload, entry.counts, coder, field=field)
            array = (symbols + np.int64(entry.used_lo)).astype(dtype)
        else:
            array = np.full(n_coded, entry.used_lo, dtype=dtype)
        if entry.kind in MASKED_KINDS:
            full = np.zeros((entry.rows.size, entry.cols.size), dtype=dtype)
            full[np.ix_(entry.rows, entry.cols)] = array.reshape(int(entry.rows.sum()), int(entry.cols.sum()))
            array = full
        array = array.reshape(entry.shape)
    array.setflags(write=False)
    if entry.kind in FLOAT_KINDS:
        return array
    if entry.scales is not None:
        entry.scales.setflags(write=False)
    return QuantizedTensor(array, entry.lo, entry.hi, entry.q, entry.scales)
