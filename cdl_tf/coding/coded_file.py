"""The decoded ``.cdlz`` file: a read-only ``name -> tensor`` mapping with the file's sizes."""
from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping

from cdl_tf.coding import coders
from cdl_tf.coding.format import Tensor
from cdl_tf.coding.tensors import QuantizedTensor


class CodedFile(Mapping[str, Tensor]):
    """Read-only mapping ``name -> QuantizedTensor | np.ndarray`` in file order.

    Float tensors come back with their stored dtype (float32, or float16 when
    written with ``float_dtype="float16"``); all arrays are read-only. A file read
    with ``lazy=True`` decodes a tensor each time it is looked up and keeps none.
    """

    def __init__(
        self,
        tensors: Mapping[str, Tensor],
        *,
        metadata: dict,
        coder: coders.Coder,
        payload_sizes: dict[str, int],
        mask_sizes: dict[str, int],
        unordered: set[str],
        lossy: bool,
        total_bytes: int,
        version: int,
    ) -> None:
        self._tensors = tensors
        self._metadata = metadata
        self._coder = coder
        self._payload_sizes = payload_sizes
        self._mask_sizes = mask_sizes
        self._unordered = frozenset(unordered)
        self._lossy = lossy
        self._total_bytes = total_bytes
        self._version = version

    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return (
            f"CodedFile({len(self)} tensors, version={self._version}, coder={self._coder!r}, "
            f"total_bytes={self._total_bytes}, lossy={self._lossy})"
        )

    @property
    def metadata(self) -> dict:
        """The file's metadata object (a copy; ``{}`` when none was written)."""
        return copy.deepcopy(self._metadata)

    @property
    def version(self) -> int:
        """The file's format version (2, 3 or 4)."""
        return self._version

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
        """Bytes of tensor ``name``'s live masks in the (uncompressed) header; 0 unless kind 3 or 5."""
        return self._mask_sizes[name]

    def unordered(self, name: str) -> bool:
        """Whether tensor ``name``'s (live) columns were coded as a multiset (kind 4 or 5) and
        decoded into canonical order (`cdl_tf.coding.multiset.column_order`)."""
        if name not in self._tensors:
            raise KeyError(name)
        return name in self._unordered

    @property
    def index_bytes(self) -> int:
        """Bytes that code the indices of all quantized tensors: their payloads and live masks."""
        return sum(self._payload_sizes[n] + self._mask_sizes[n]
                   for n, t in self._tensors.items() if isinstance(t, QuantizedTensor))
