"""Entropy coding of quantized weights and the ``.cdlz`` container.

* :func:`write` / :func:`read` -- atomic, validated ``.cdlz`` files;
  :func:`encode_bytes` / :func:`decode_bytes` -- the same without touching disk.
* :class:`QuantizedTensor` -- integer indices in ``[lo, hi]`` with step ``q`` and
  optional per-channel scales.
* :class:`CodedFile` -- read-only ``name -> tensor`` mapping returned by the reader.
* :class:`FormatError` -- the only exception raised for malformed input.
* :func:`index_entropy_bits` -- empirical entropy of an index array (bits/value).
* :mod:`cdl_tf.coding.multiset` -- the canonical column order, in which a kernel's columns
  can be coded as a multiset (format version 4), and ``log2(n! / prod m_k!)``, the bits of
  their order.

The format is specified in ``docs/cdlz-format.md``.
"""
from cdl_tf.coding.coded_file import CodedFile
from cdl_tf.coding.errors import FormatError
from cdl_tf.coding.reader import decode_bytes, read
from cdl_tf.coding.tensors import QuantizedTensor, index_entropy_bits
from cdl_tf.coding.writer import encode_bytes, write

__all__ = [
    "CodedFile",
    "FormatError",
    "QuantizedTensor",
    "decode_bytes",
    "encode_bytes",
    "index_entropy_bits",
    "read",
    "write",
]
