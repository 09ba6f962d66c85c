"""Bits-back ANS coding of a symbol matrix's columns as a multiset (``.cdlz`` kinds 4 and 5).

The units of a layer can be relabelled without changing what the model computes
(`cdl_tf.coded_model.unit_order`), so the order of its kernel's ``n`` columns need not be
stored. The columns are coded as the multiset ``{x_1, ..., x_n}`` and decoded in *canonical
order* (`column_order`): the columns that are not entirely index 0 first, in lexicographic order
of ``(x[0], x[1], ..., x[r-1])`` (row 0 first, signed comparison), then the all-zero columns.
Coded one after the other under the tensor's frequency model ``p`` (`coders.ans_model`) the
columns cost ``sum_k -log2 p(x_k)`` bits; as a multiset they cost

    sum_k -log2 p(x_k) - log2( n! / prod_t m_t! ),

``m_t`` the multiplicities of the distinct columns: the second term is the information in
the order of ``n`` items with those repetitions, which the encoder takes back from the ANS
stack by *decoding* each choice of the next column from it (bits-back coding; for multisets
Severo et al., "Compressing multisets with large alphabets", 2022). With ``S`` the multiset
in canonical order and ``[a, a + m)`` the positions of the columns equal to ``x`` in ``S``:

    encoder, S = all columns, for size = n, n-1, ..., 1:
        j <- pop Uniform(size)                  # the choice of the next column (size > 1)
        x = S[j];  push j - a with Uniform(m)   # which of the m equal columns (m > 1)
        remove S[j];  push x's r symbols under p
    decoder, S = {}, for size = 1, 2, ..., n:
        x <- pop r symbols under p;  insert x into S
        o <- pop Uniform(m)                     # m > 1
        push a + o with Uniform(size)           # size > 1

Each decoder step undoes the encoder's step of the same size (ANS pops and pushes are exact
inverses), so the decoder ends on the encoder's initial, empty stack. A choice takes back
``log2(size) - log2(m)`` bits, together ``sum log2(size / m) = log2(n! / prod_t m_t!)``, less
what the first choices find on a still nearly empty stack (an empty stack yields ``j = 0``
and gives nothing back): about ``log2 n`` plus a few tens of bits per tensor.
"""
from __future__ import annotations

import bisect
import math

import constriction
import numpy as np

from cdl_tf.coding.coders import ans_model, guarded, payload_to_words, words_to_payload
from cdl_tf.coding.errors import FormatError

MAX_COLUMNS = 1 << 14  # per tensor: the coders keep S as a sorted list, O(n^2) moves
MAX_FILE_COLUMNS = 1 << 20  # per file: each column is a few constriction calls from Python


def column_order(matrix: np.ndarray, zero: float = 0) -> np.ndarray:
    """The stable permutation that sorts the columns of a 2-D array into canonical order.

    Canonical order: columns holding a value other than ``zero`` first, in lexicographic order
    (row 0 first), then the columns that are ``zero`` throughout. ``matrix[:, column_order(matrix)]``
    is canonical; an array is canonical iff its order is ``arange(n)``.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {matrix.shape}")
    return np.lexsort((*matrix[::-1], ~(matrix != zero).any(axis=0)))


def is_canonical(matrix: np.ndarray, zero: float = 0) -> bool:
    """Whether the columns of a 2-D array are in canonical order (`column_order` is the identity),
    from adjacent columns alone: no all-``zero`` column before another, and each other column at
    most the next one at the first row where they differ."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {matrix.shape}")
    if matrix.shape[1] < 2:
        return True
    dead = ~(matrix != zero).any(axis=0)
    left, right = matrix[:, :-1], matrix[:, 1:]
    differ = left != right
    first = differ.argmax(axis=0)
    pairs = np.arange(left.shape[1])
    ordered = ~differ.any(axis=0) | (left[first, pairs] < right[first, pairs])
    return bool(np.all(~(dead[:-1] & ~dead[1:]) & (dead[1:] | ordered)))


def order_bits(matrix: np.ndarray) -> float:
    """``log2(n! / prod_t m_t!)``: the bits in the order of a 2-D array's ``n`` columns,
    ``m_t`` the multiplicities of its distinct columns."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {matrix.shape}")
    if matrix.shape[1] == 0:
        return 0.0
    _, multiplicities = np.unique(matrix.reshape(matrix.shape[0], -1), axis=1, return_counts=True)
    log_ways = math.lgamma(matrix.shape[1] + 1) - sum(math.lgamma(int(m) + 1) for m in multiplicities)
    return max(log_ways, 0.0) / math.log(2)


def _key(column: np.ndarray, zero: int) -> bytes:
    """A column's canonical sort key: 1 byte zero-flag, then each symbol as big-endian ``uint16``."""
    return (b"\x01" if (column == zero).all() else b"\x00") + column.astype(">u2").tobytes()


def _symbols(key: bytes) -> np.ndarray:
    return np.frombuffer(key, dtype=">u2", offset=1).astype(np.int32)


def _uniform(size: int) -> constriction.stream.model.Uniform:
    return constriction.stream.model.Uniform(size)


def encode_columns(symbols: np.ndarray, counts: np.ndarray, zero: int) -> bytes:
    """Code the columns of an ``r x n`` symbol matrix as a multiset; returns the payload.

    ``symbols`` lie in ``[0, len(counts))`` with histogram ``counts`` (at least two distinct
    symbols) and their columns must be in canonical order (`column_order`, ``zero`` the symbol
    of index 0, which may lie outside the range); ``decode_columns`` returns them unchanged.
    The payload may be empty (all of it taken back), which the ``.cdlz`` writer does not use.
    """
    symbols = np.asarray(symbols)
    counts = np.asarray(counts)
    if symbols.ndim != 2 or not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f"symbols must be a 2-D integer array, got {symbols.dtype} {symbols.shape}")
    if not 1 <= symbols.shape[1] <= MAX_COLUMNS or symbols.shape[0] == 0:
        raise ValueError(f"need 1..{MAX_COLUMNS} columns of at least one row, got shape {symbols.shape}")
    if counts.size > 1 << 16 or symbols.min() < 0 or symbols.max() >= counts.size:
        raise ValueError(f"symbols must lie in [0, {counts.size}) with at most 65536 symbols")
    if not np.array_equal(np.bincount(symbols.reshape(-1), minlength=counts.size), counts):
        raise ValueError("counts is not the histogram of symbols")
    if np.count_nonzero(counts) < 2:
        raise ValueError("a multiset payload needs at least two distinct symbols")
    if not is_canonical(symbols, zero):
        raise ValueError("the columns are not in canonical order (see column_order)")
    remaining = [_key(column, zero) for column in symbols.T]
    model = ans_model(counts)
    ans = constriction.stream.stack.AnsCoder()
    for size in range(len(remaining), 0, -1):
        j = int(ans.decode(_uniform(size))) if size > 1 else 0
        key = remaining[j]
        first = bisect.bisect_left(remaining, key)
        multiplicity = bisect.bisect_right(remaining, key) - first
        if multiplicity > 1:
            ans.encode_reverse(j - first, _uniform(multiplicity))
        del remaining[j]
        ans.encode_reverse(_symbols(key), model)
    return words_to_payload(ans.get_compressed())


def decode_columns(payload: bytes | memoryview, counts: np.ndarray, shape: tuple[int, int], zero: int, *,
                   field: str = "payload") -> np.ndarray:
    """Inverse of `encode_columns`: the ``shape = (r, n)`` ``int32`` symbol matrix, columns in
    canonical order. Raises `FormatError` unless the payload is non-empty and canonical, decodes,
    leaves the stack empty and yields the histogram ``counts``; ``field`` names it in messages."""
    rows, columns = shape
    counts = np.asarray(counts, dtype=np.int64)
    words = payload_to_words(memoryview(payload), field)
    model = ans_model(counts)
    ans = guarded(lambda: constriction.stream.stack.AnsCoder(words), field)
    remaining: list[bytes] = []
    for size in range(1, columns + 1):
        key = _key(guarded(lambda: ans.decode(model, rows), field), zero)
        bisect.insort(remaining, key)
        first = bisect.bisect_left(remaining, key)
        multiplicity = bisect.bisect_right(remaining, key) - first
        offset = int(guarded(lambda: ans.decode(_uniform(multiplicity)), field)) if multiplicity > 1 else 0
        if size > 1:
            ans.encode_reverse(first + offset, _uniform(size))
    if not ans.is_empty():
        raise FormatError(f"{field}: ANS stream not empty after {columns} columns")
    decoded = np.frombuffer(b"".join(key[1:] for key in remaining), dtype=">u2")
    decoded = decoded.reshape(columns, rows).T.astype(np.int32)
    if not np.array_equal(np.bincount(decoded.reshape(-1), minlength=counts.size), counts):
        raise FormatError(f"{field}: histogram of decoded symbols differs from the frequency table")
    return decoded
