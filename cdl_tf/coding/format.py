"""The ``.cdlz`` format: magic, version, flags, tensor kinds, coder ids, limits, tensor entries.

A ``.cdlz`` file is a compact, checksummed file of entropy-coded tensors. Byte
layout, limits and the reader's validation order are specified in
``docs/cdlz-format.md``. In short::

    "CDLZ" | version u8 = 4 | flags u8 | coder u8 | length varint
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
and only the live rows x live columns are coded. In an ANS file, kinds 4 and 5 (version 4)
are kinds 0 and 3 whose coded columns form a multiset: they are stored in a canonical order
that the decoder restores (`cdl_tf.coding.multiset`), and the bits of their order are taken
back by bits-back coding. Float tensors are raw
little-endian float32 (lossless) or float16 (flagged lossy). Nothing in a file is
executed: it holds fixed binary fields and one JSON object.

:mod:`cdl_tf.coding.writer` writes the format, :mod:`cdl_tf.coding.reader` reads
and validates it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from cdl_tf.coding import coders
from cdl_tf.coding.tensors import QuantizedTensor

MAGIC = b"CDLZ"
VERSION = 4
READABLE_VERSIONS = (2, 3, 4)  # each version adds tensor kinds to the one before

FLAG_LOSSY = 0x01

KIND_QUANTIZED = 0
KIND_FLOAT32 = 1
KIND_FLOAT16 = 2
KIND_MASKED = 3  # quantized, only the live rows x live columns coded
KIND_UNORDERED = 4  # kind 0, the columns coded as a multiset
KIND_MASKED_UNORDERED = 5  # kind 3, the live columns coded as a multiset

FLOAT_KINDS = {KIND_FLOAT32: np.dtype("<f4"), KIND_FLOAT16: np.dtype("<f2")}
MASKED_KINDS = (KIND_MASKED, KIND_MASKED_UNORDERED)
UNORDERED_KINDS = (KIND_UNORDERED, KIND_MASKED_UNORDERED)
FIRST_VERSION = {KIND_QUANTIZED: 2, KIND_FLOAT32: 2, KIND_FLOAT16: 2, KIND_MASKED: 3,
                 KIND_UNORDERED: 4, KIND_MASKED_UNORDERED: 4}  # the first version with each kind

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

Tensor = Union[QuantizedTensor, np.ndarray]  # what a file holds under a name


@dataclass
class TensorEntry:
    """One parsed tensor header: what the reader needs to decode the tensor's payload."""

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
    rows: np.ndarray | None = None  # live masks (kinds 3 and 5)
    cols: np.ndarray | None = None

    @property
    def mask_bytes(self) -> int:
        """Bytes of the two live masks in the header, ``ceil(R / 8) + ceil(C / 8)``; 0 unless kind 3 or 5."""
        return 0 if self.rows is None else (self.rows.size + 7) // 8 + (self.cols.size + 7) // 8

    @property
    def coded_shape(self) -> tuple[int, int]:
        """Rows and columns of the coded matrix of a quantized tensor of 2 or more dims: the
        whole ``R x C`` view, or with live masks the live rows x live columns."""
        if self.rows is None:
            return self.size // self.shape[-1], self.shape[-1]
        return int(self.rows.sum()), int(self.cols.sum())
