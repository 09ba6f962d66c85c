"""Entropy coding of a 1-D symbol array under its own empirical frequency table.

Symbols ``s_k`` (``k = 0..N-1``) lie in ``{0, ..., L-1}``; the frequency table is
``c_s = #{k : s_k = s}`` with ``N = sum_s c_s``. Encoder and decoder build the same
model ``p(s) = c_s / N`` deterministically from the stored integer counts, so the
ideal cost is ``N * H`` bits with ``H = -sum_s p(s) log2 p(s)``.

Coders (both from ``constriction``):

* ``"ans"`` -- ``constriction.stream.stack.AnsCoder`` with a
  ``constriction.stream.model.Categorical(c.astype(float64), perfect=False)``.
  Probabilities are quantised to constriction's 24-bit fixed point (every symbol
  in ``0..L-1`` keeps at least ``2**-24``), so the cost is ``N * H`` plus a few
  parts in ``10**5`` plus at most the 64-bit final coder state.
* ``"huffman"`` -- ``constriction.symbol.huffman`` trees built from the same
  counts, written with ``constriction.symbol.QueueEncoder``. The cost is
  ``sum_s c_s * len(codeword_s) >= N`` bits whenever two symbols occur.

Payload bytes: constriction's ``uint32`` words in little-endian byte order with
trailing zero bytes removed, so a non-empty payload never ends in ``0x00`` and
each payload has exactly one valid encoding; the decoder pads back to a multiple
of four bytes. Tensors with at most one distinct symbol have an empty payload.

Decoding verifies that the payload is consumed exactly (ANS: the coder is empty
afterwards; Huffman: the payload holds at most ``ceil(B / 32)`` words for the
exact bit count ``B = sum_s c_s * len(codeword_s)``, missing trailing words are
zero, and the padding bits, which ``QueueEncoder`` places in the high bits of the
last word, are zero) and that the
histogram of the decoded symbols equals the stored counts. Any violation raises
:class:`FormatError`.
"""
from __future__ import annotations

import collections
import itertools
from typing import Callable, Literal, TypeVar

import constriction
import numpy as np

from cdl_tf.coding.errors import FormatError

Coder = Literal["ans", "huffman"]
CODERS: tuple[Coder, ...] = ("ans", "huffman")

_T = TypeVar("_T")


def frequency_table(symbols: np.ndarray) -> tuple[int, np.ndarray]:
    """Used range and counts of an integer array.

    Returns ``(lo_used, counts)`` with ``counts[j] = #{x == lo_used + j}`` over
    ``lo_used = min(x) .. max(x)`` (``counts`` is ``int64``); ``(0, [])`` if empty.
    """
    flat = np.asarray(symbols).reshape(-1)
    if flat.size == 0:
        return 0, np.zeros(0, dtype=np.int64)
    lo_used = int(flat.min())
    shifted = flat.astype(np.int64) - lo_used
    return lo_used, np.bincount(shifted).astype(np.int64)


def needs_payload(counts: np.ndarray) -> bool:
    """True iff at least two distinct symbols occur (otherwise nothing is coded)."""
    return int(np.count_nonzero(counts)) >= 2


def encode_symbols(symbols: np.ndarray, counts: np.ndarray, coder: Coder = "ans") -> bytes:
    """Entropy-code ``symbols`` (1-D ints in ``[0, len(counts))``) whose histogram is ``counts``."""
    _check_coder(coder)
    symbols = np.asarray(symbols)
    counts = np.asarray(counts)
    if symbols.ndim != 1 or not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f"symbols must be a 1-D integer array, got {symbols.dtype} {symbols.shape}")
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"counts must be a 1-D integer array, got {counts.dtype} {counts.shape}")
    if symbols.size and (symbols.min() < 0 or symbols.max() >= counts.size):
        raise ValueError(
            f"symbols span [{symbols.min()}, {symbols.max()}], outside [0, {counts.size - 1}]"
        )
    if not np.array_equal(np.bincount(symbols, minlength=counts.size), counts):
        raise ValueError("counts is not the histogram of symbols")
    if not needs_payload(counts):
        return b""
    symbols = np.ascontiguousarray(symbols, dtype=np.int32)
    words = _encode_ans(symbols, counts) if coder == "ans" else _encode_huffman(symbols, counts)[0]
    return words_to_payload(words)


def decode_symbols(
    payload: bytes | memoryview, counts: np.ndarray, coder: Coder = "ans", *, field: str = "payload"
) -> np.ndarray:
    """Inverse of :func:`encode_symbols`: ``int32`` array of ``sum(counts)`` symbols.

    ``field`` names the payload in error messages.
    """
    _check_coder(coder)
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    payload = memoryview(payload)
    if not needs_payload(counts):
        if len(payload):
            raise FormatError(f"{field}: {len(payload)} byte(s) for a tensor with <= 1 distinct symbol")
        value = int(np.flatnonzero(counts)[0]) if n else 0
        return np.full(n, value, dtype=np.int32)
    words = payload_to_words(payload, field)
    if coder == "ans":
        decoded = _decode_ans(words, counts, n, field)
    else:
        decoded = _decode_huffman(words, counts, n, field)
    if decoded.size != n:
        raise FormatError(f"{field}: decoded {decoded.size} symbols, expected {n}")
    if n and (decoded.min() < 0 or decoded.max() >= counts.size):
        raise FormatError(f"{field}: decoded symbol outside [0, {counts.size - 1}]")
    if not np.array_equal(np.bincount(decoded, minlength=counts.size), counts):
        raise FormatError(f"{field}: histogram of decoded symbols differs from the frequency table")
    return decoded


def words_to_payload(words: np.ndarray) -> bytes:
    """A coder's ``uint32`` words as payload bytes: little-endian, trailing zero bytes removed."""
    return np.asarray(words).astype("<u4").tobytes().rstrip(b"\0")


def payload_to_words(payload: memoryview, field: str) -> np.ndarray:
    """Inverse of :func:`words_to_payload` for a payload that must be non-empty and canonical."""
    if len(payload) == 0:
        raise FormatError(f"{field}: empty payload for a tensor with >= 2 distinct symbols")
    if payload[-1] == 0:
        raise FormatError(f"{field}: non-canonical payload (last byte is 0x00)")
    padded = bytes(payload) + b"\0" * (-len(payload) % 4)
    return np.frombuffer(padded, dtype="<u4").astype(np.uint32)


def _check_coder(coder: str) -> None:
    if coder not in CODERS:
        raise ValueError(f"coder must be one of {CODERS}, got {coder!r}")


def guarded(call: Callable[[], _T], field: str) -> _T:
    """Run a constriction call on untrusted data, mapping its errors to FormatError."""
    try:
        return call()
    except Exception as exc:  # constriction reports corrupt data as ValueError and others
        raise FormatError(f"{field}: corrupt coded data ({exc})") from exc


def ans_model(counts: np.ndarray) -> constriction.stream.model.Categorical:
    """The ANS model ``p(s) = c_s / N`` that encoder and decoder build from the integer counts."""
    return constriction.stream.model.Categorical(
        np.asarray(counts, dtype=np.float64), perfect=False
    )


def _encode_ans(symbols: np.ndarray, counts: np.ndarray) -> np.ndarray:
    ans = constriction.stream.stack.AnsCoder()
    ans.encode_reverse(symbols, ans_model(counts))
    return ans.get_compressed()


def _decode_ans(words: np.ndarray, counts: np.ndarray, n: int, field: str) -> np.ndarray:
    model = ans_model(counts)
    ans = guarded(lambda: constriction.stream.stack.AnsCoder(words), field)
    decoded = guarded(lambda: ans.decode(model, n), field)
    if not ans.is_empty():
        raise FormatError(f"{field}: ANS stream not fully consumed after {n} symbols")
    return np.asarray(decoded, dtype=np.int32)


def _huffman_probabilities(counts: np.ndarray) -> np.ndarray:
    return np.asarray(counts, dtype=np.float64)


def _encode_huffman(symbols: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, int]:
    tree = constriction.symbol.huffman.EncoderHuffmanTree(_huffman_probabilities(counts))
    encoder = constriction.symbol.QueueEncoder()
    # map() drives the per-symbol constriction call from C; constriction has no
    # array API for symbol codes.
    collections.deque(
        map(encoder.encode_symbol, symbols.tolist(), itertools.repeat(tree, symbols.size)),
        maxlen=0,
    )
    words, bits = encoder.get_compressed_and_bitrate()
    return words, int(bits)


def _huffman_bit_count(counts: np.ndarray) -> int:
    """``B = sum_s c_s * len(codeword_s)`` over the symbols that occur."""
    tree = constriction.symbol.huffman.EncoderHuffmanTree(_huffman_probabilities(counts))
    total = 0
    for s in np.flatnonzero(counts).tolist():
        encoder = constriction.symbol.QueueEncoder()
        encoder.encode_symbol(s, tree)
        total += int(counts[s]) * int(encoder.get_compressed_and_bitrate()[1])
    return total


def _decode_huffman(words: np.ndarray, counts: np.ndarray, n: int, field: str) -> np.ndarray:
    bits = _huffman_bit_count(counts)
    expected_words = -(-bits // 32)
    if words.size > expected_words:
        raise FormatError(
            f"{field}: {words.size} Huffman word(s) present, the frequency table implies "
            f"{bits} bits = {expected_words} word(s)"
        )
    # Whole trailing zero words were stripped with the zero bytes; restore them.
    words = np.concatenate([words, np.zeros(expected_words - words.size, dtype=np.uint32)])
    if bits % 32 and int(words[-1]) >> (bits % 32):
        raise FormatError(f"{field}: non-zero bits after the last Huffman codeword")
    tree = constriction.symbol.huffman.DecoderHuffmanTree(_huffman_probabilities(counts))
    decoder = guarded(lambda: constriction.symbol.QueueDecoder(words), field)
    return guarded(
        lambda: np.fromiter(
            map(decoder.decode_symbol, itertools.repeat(tree, n)), dtype=np.int32, count=n
        ),
        field,
    )
