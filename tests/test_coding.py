"""Tests for cdl_tf.coding: coders, the .cdlz container, its validation and atomic writes."""
from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdl_tf.coding import (
    CodedFile,
    FormatError,
    QuantizedTensor,
    decode_bytes,
    encode_bytes,
    index_entropy_bits,
    read,
    write,
)
from cdl_tf.coding import coders, multiset, reader, writer
from cdl_tf.coding.format import MAX_HEADER_BYTES
from cdl_tf.coding.tensors import INDEX_MAX, INDEX_MIN
from cdl_tf.coding.wire import ByteReader, ByteWriter, encode_varint, zigzag_decode, zigzag_encode

FAST = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings(FAST, max_examples=1500)
COMPARE_MAX = 1 << 20  # max_elements for fuzzed decodes: keeps accidental allocations small


# ------------------------------------------------------------------- helpers


def skewed_indices(rng: np.random.Generator, shape, lo: int, hi: int, kind: str) -> np.ndarray:
    """Indices in [lo, hi] with a geometric, near-deterministic, deterministic or uniform PMF."""
    n = math.prod(shape)
    center = int(rng.integers(lo, hi + 1))
    if kind == "uniform":
        x = rng.integers(lo, hi + 1, size=n)
    elif kind == "deterministic":
        x = np.full(n, center)
    else:
        p = 0.995 if kind == "near_deterministic" else float(rng.uniform(0.2, 0.95))
        magnitude = rng.geometric(p, size=n) - 1
        sign = rng.choice([-1, 1], size=n)
        x = np.clip(center + sign * magnitude, lo, hi)
    return x.astype(np.int64).reshape(shape)


@st.composite
def quantized_tensors(draw) -> QuantizedTensor:
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=4)))
    if draw(st.booleans()):
        shape = shape + (draw(st.integers(20, 300)),)  # some tensors with many elements
    lo = draw(
        st.one_of(
            st.integers(-8, 0),
            st.integers(-300, 300),
            st.sampled_from([INDEX_MIN, INDEX_MAX - 500, 0]),
        )
    )
    hi = min(lo + draw(st.one_of(st.integers(0, 16), st.integers(0, 500))), INDEX_MAX)
    kind = draw(st.sampled_from(["geometric", "near_deterministic", "deterministic", "uniform"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    indices = skewed_indices(rng, shape, lo, hi, kind)
    if len(shape) >= 2 and indices.size and draw(st.booleans()):
        indices = canonical(indices)  # the writer may code the columns as a multiset
    dtype = draw(st.sampled_from([np.int64, np.int32]))
    if lo >= -128 and hi <= 127:
        dtype = draw(st.sampled_from([np.int8, np.int16, dtype]))
    scales = None
    if shape and draw(st.booleans()):
        scales = rng.uniform(0.1, 4.0, size=shape[-1]).astype(np.float32)
    q = draw(st.floats(1e-6, 10.0, allow_nan=False, allow_infinity=False))
    return QuantizedTensor(indices.astype(dtype), lo, hi, q, scales)


@st.composite
def float_tensors(draw) -> np.ndarray:
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(0, 3, size=shape).astype(draw(st.sampled_from([np.float32, np.float16])))
    if x.size and draw(st.booleans()):
        x.reshape(-1)[0] = draw(st.sampled_from([np.inf, -np.inf, np.nan, -0.0]))
    return x


tensor_dicts = st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.one_of(quantized_tensors(), float_tensors()),
    max_size=5,
)
metadata_values = st.one_of(
    st.none(),
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=10), st.booleans(), st.none()),
        max_size=4,
    ),
)


def assert_same(original, decoded, float_dtype: str = "float32") -> None:
    if isinstance(original, QuantizedTensor):
        assert isinstance(decoded, QuantizedTensor)
        assert decoded.indices.shape == original.indices.shape
        assert np.array_equal(decoded.indices, original.indices)
        assert (decoded.lo, decoded.hi, decoded.q) == (original.lo, original.hi, original.q)
        if original.scales is None:
            assert decoded.scales is None
        else:
            assert np.array_equal(decoded.scales, original.scales)
        assert np.array_equal(decoded.values, original.values, equal_nan=True)
    else:
        expected = np.asarray(original).astype(float_dtype)
        assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
        assert np.array_equal(decoded, expected, equal_nan=True)


def fix_crc(data: bytes) -> bytes:
    body = data[:-4]
    return body + zlib.crc32(body).to_bytes(4, "little")


def deflate(data: bytes) -> bytes:
    """Raw deflate (zlib level 9, wbits -15), as the writer compresses the header."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def frame_raw(rest: bytes, *, version: int = 3, flags: int = 0, coder: int = 1) -> bytes:
    """A file around ``rest``, the bytes between the length field and the CRC (sections 1 and 5)."""
    head = b"CDLZ" + bytes((version, flags, coder)) + encode_varint(len(rest) + 4)
    return fix_crc(head + rest + b"\0\0\0\0")


def pack(header_: bytes, *, size: int | None = None, packed: bytes | None = None) -> bytes:
    """Section 2: header size, compressed header length and the raw deflate of ``header_``."""
    packed = deflate(header_) if packed is None else packed
    size = len(header_) if size is None else size
    return encode_varint(size) + encode_varint(len(packed)) + packed


def frame(header_: bytes, payloads: bytes = b"", *, version: int = 3, flags: int = 0, coder: int = 1) -> bytes:
    """A file of ``version`` around a hand-built uncompressed header and its payloads."""
    return frame_raw(pack(header_) + payloads, version=version, flags=flags, coder=coder)


def split(data: bytes) -> tuple[int, int, bytes, bytes]:
    """(flags, coder, uncompressed header, payloads) of a valid file, parsed by hand."""
    r = ByteReader(memoryview(data), 7)
    r.varint("length")
    size = r.varint("header size")
    packed = bytes(r.raw(r.varint("compressed header length"), "compressed header"))
    header_ = zlib.decompress(packed, -15)
    assert len(header_) == size
    return data[5], data[6], header_, data[r.pos : -4]


def quantized_header(
    name: str,
    shape,
    *,
    lo: int,
    hi: int,
    q: float,
    coder_id: int,
    used_lo: int = 0,
    counts=(),
    payload_len: int | None = None,
    scales=None,
    masks: tuple[bytes, bytes] | None = None,
    unordered: bool = False,
) -> bytes:
    """A tensor header (section 3.2) written by hand, field by field; kind 3 with ``masks``, 4 if
    ``unordered``, 5 with both."""
    w = ByteWriter()
    w.varint(len(name.encode()))
    w.raw(name.encode())
    w.u8({(False, False): 0, (True, False): 3, (False, True): 4, (True, True): 5}[masks is not None, unordered])
    w.varint(len(shape))
    for d in shape:
        w.varint(d)
    w.zigzag(lo)
    w.zigzag(hi)
    w.f32(q)
    if scales is None:
        w.u8(0)
    else:
        w.u8(1)
        w.raw(np.asarray(scales, "<f4").tobytes())
    if masks is not None:
        w.raw(masks[0] + masks[1])
    w.u8(coder_id)
    if counts:
        w.zigzag(used_lo)
        w.varint(len(counts) - 1)
        for c in counts:
            w.varint(c)
    if payload_len is not None:
        w.varint(payload_len)
    return w.getvalue()


def header(headers: list[bytes], metadata: bytes = b"") -> bytes:
    """The uncompressed header (section 3): tensor count, metadata, tensor headers."""
    w = ByteWriter()
    w.varint(len(headers))
    w.varint(len(metadata))
    w.raw(metadata)
    for h in headers:
        w.raw(h)
    return w.getvalue()


def sparse_indices(rng: np.random.Generator, shape, live_rows: int, live_cols: int) -> np.ndarray:
    """Indices in [-7, 7], non-zero only in ``live_rows`` rows (leading axes) x ``live_cols`` columns."""
    x = np.zeros(shape, np.int64).reshape(-1, shape[-1])
    rows = rng.choice(x.shape[0], live_rows, replace=False)
    cols = rng.choice(x.shape[1], live_cols, replace=False)
    x[np.ix_(rows, cols)] = rng.integers(-7, 8, size=(live_rows, live_cols))
    x[rows, cols[0]] = 1  # every chosen row and column holds a non-zero
    x[rows[0], cols] = 1
    return x.reshape(shape)


def canonical(x: np.ndarray) -> np.ndarray:
    """``x`` with its columns (last axis; leading axes flattened into rows) in canonical order."""
    matrix = x.reshape(-1, x.shape[-1])
    return matrix[:, multiset.column_order(matrix)].reshape(x.shape)


def sample_files() -> list[bytes]:
    """Small valid files covering every kind, both coders, scales and metadata (the last one, of
    version 4, the kinds whose columns are a multiset)."""
    rng = np.random.default_rng(7)
    tensors = {
        "conv/kernel": QuantizedTensor(skewed_indices(rng, (3, 3, 2, 4), -7, 7, "geometric"), -7, 7, 0.05),
        "fc/kernel": QuantizedTensor(
            skewed_indices(rng, (20, 6), -127, 127, "geometric"), -127, 127, 0.01, rng.uniform(0.5, 2, 6)
        ),
        "fc/bias": rng.normal(size=6).astype(np.float32),
        "const": QuantizedTensor(np.full((5,), 2), -3, 3, 0.5),
        "empty": QuantizedTensor(np.zeros((0, 4), np.int8), -1, 1, 1.0),
        "sparse/kernel": QuantizedTensor(sparse_indices(rng, (30, 2, 40), 4, 3), -7, 7, 0.1),
    }
    half = {"w": QuantizedTensor(skewed_indices(rng, (64,), -3, 3, "uniform"), -3, 3, 0.25), "b": np.ones(3, np.float32)}
    unordered = {
        "conv/kernel": QuantizedTensor(canonical(skewed_indices(rng, (3, 3, 2, 12), -7, 7, "geometric")), -7, 7, 0.05),
        "fc/kernel": QuantizedTensor(canonical(sparse_indices(rng, (40, 24), 6, 14)), -7, 7, 0.1, rng.uniform(0.5, 2, 24)),
        "fc/bias": rng.normal(size=24).astype(np.float32),
        "logits/kernel": QuantizedTensor(skewed_indices(rng, (24, 5), -7, 7, "geometric"), -7, 7, 0.2),
    }
    return [
        encode_bytes(tensors, coder="ans", metadata={"model": "tiny", "step": 3}),
        encode_bytes(tensors, coder="huffman"),
        encode_bytes(half, coder="ans", float_dtype="float16"),
        encode_bytes(half, coder="huffman", metadata={"ü": [1, 2]}),
        encode_bytes(unordered, coder="ans", metadata={"model": "canonical"}),
    ]


SAMPLES = sample_files()


SAMPLE_FILES = [decode_bytes(data) for data in SAMPLES]
SAMPLE_PAYLOADS = [split(data)[3] for data in SAMPLES]


def decode_or_format_error(data: bytes) -> CodedFile | None:
    """Decode; a FormatError is an accepted outcome, any other exception fails the test."""
    try:
        return decode_bytes(data, max_elements=COMPARE_MAX)
    except FormatError:
        return None


# ------------------------------------------------------------------- primitives


@given(st.integers(-(2**62), 2**62))
@FAST
def test_zigzag_round_trip(v):
    assert zigzag_decode(zigzag_encode(v)) == v
    assert zigzag_encode(v) >= 0


@given(st.integers(0, 2**64 - 1))
@FAST
def test_varint_round_trip(v):
    data = encode_varint(v)
    r = ByteReader(memoryview(data))
    assert r.varint("x") == v and r.remaining == 0


@pytest.mark.parametrize(
    "data", [b"\x80", b"\x80\x00", b"\xff" * 11, b"\xff" * 9 + b"\x7f"], ids=["truncated", "non-canonical", "too-long", "over-2**64"]
)
def test_varint_rejects_malformed(data):
    with pytest.raises(FormatError, match="x: "):
        ByteReader(memoryview(data)).varint("x")


# ------------------------------------------------------------------- coders


@pytest.mark.parametrize("coder", coders.CODERS)
@given(data=st.data())
@FAST
def test_coders_round_trip(coder, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n = data.draw(st.integers(0, 3000))
    kind = data.draw(st.sampled_from(["geometric", "near_deterministic", "deterministic", "uniform"]))
    x = skewed_indices(rng, (n,), 0, data.draw(st.integers(0, 300)), kind)
    lo_used, counts = coders.frequency_table(x)
    symbols = x - lo_used
    payload = coders.encode_symbols(symbols, counts, coder)
    assert (payload == b"") == (not coders.needs_payload(counts))
    assert not payload or payload[-1] != 0
    assert np.array_equal(coders.decode_symbols(payload, counts, coder), symbols)


def test_encode_symbols_checks_histogram():
    with pytest.raises(ValueError, match="histogram"):
        coders.encode_symbols(np.array([0, 1, 1]), np.array([2, 1]))
    with pytest.raises(ValueError, match="outside"):
        coders.encode_symbols(np.array([0, 2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="coder"):
        coders.encode_symbols(np.array([0, 1]), np.array([1, 1]), "range")


@given(st.integers(0, 2**32 - 1))
@FAST
def test_huffman_padding_sits_in_high_bits(seed):
    """The decoder's leftover-bit check relies on QueueEncoder padding the last word's high bits."""
    rng = np.random.default_rng(seed)
    x = skewed_indices(rng, (int(rng.integers(2, 500)),), 0, 20, "geometric")
    _, counts = coders.frequency_table(x)
    if not coders.needs_payload(counts):
        return
    words, bits = coders._encode_huffman((x - x.min()).astype(np.int32), counts)
    assert bits == coders._huffman_bit_count(counts)
    assert words.size == -(-bits // 32)
    if bits % 32:
        assert int(words[-1]) >> (bits % 32) == 0


def test_huffman_stream_ending_in_zero_words_round_trips():
    """Stripping trailing zero bytes may drop whole zero words; the decoder restores them."""
    for seed in range(200):
        rng = np.random.default_rng(seed)
        x = skewed_indices(rng, (int(rng.integers(50, 400)),), 0, 6, "uniform")
        lo_used, counts = coders.frequency_table(x)
        payload = coders.encode_symbols(x - lo_used, counts, "huffman")
        if len(payload) <= 4 * (-(-coders._huffman_bit_count(counts) // 32) - 1):
            assert np.array_equal(coders.decode_symbols(payload, counts, "huffman"), x - lo_used)
            return
    pytest.fail("no stream ending in a zero word found")


@pytest.mark.parametrize("coder", coders.CODERS)
def test_decoder_rejects_leftover_and_corrupt_payloads(coder):
    rng = np.random.default_rng(1)
    x = skewed_indices(rng, (5000,), 0, 30, "geometric")
    lo_used, counts = coders.frequency_table(x)
    payload = coders.encode_symbols(x - lo_used, counts, coder)
    for bad in (payload + b"\x01", payload + b"\0\0\0\x01", payload[:-1], payload + b"\0", b"", b"\x05"):
        with pytest.raises(FormatError):
            coders.decode_symbols(bad, counts, coder)
    wrong_counts = counts.copy()
    j = int(np.argmax(counts))
    wrong_counts[j] -= 1
    wrong_counts[(j + 1) % counts.size] += 1
    with pytest.raises(FormatError):
        coders.decode_symbols(payload, wrong_counts, coder)
    with pytest.raises(FormatError, match="<= 1 distinct"):
        coders.decode_symbols(b"\x01", np.array([7]), coder)


def test_ans_rate_close_to_entropy():
    rng = np.random.default_rng(0)
    n = 10**5
    x = skewed_indices(rng, (n,), -127, 127, "geometric")
    h = index_entropy_bits(x)
    assert 0.2 < h < 4
    t = {"w": QuantizedTensor(x, -127, 127, 0.01)}
    f = decode_bytes(encode_bytes(t, coder="ans"))
    ratio = f.payload_bytes("w") * 8 / (n * h)
    assert ratio <= 1.01, ratio
    assert f.total_bytes * 8 <= 1.01 * n * h + 8 * f.header_bytes


@pytest.mark.parametrize("p", [0.5, 0.9, 0.995])
def test_huffman_never_below_one_bit_per_value(p):
    rng = np.random.default_rng(0)
    n = 10**4
    x = np.clip(rng.geometric(p, n) - 1, 0, 50)
    _, counts = coders.frequency_table(x)
    assert coders._huffman_bit_count(counts) >= n
    f = decode_bytes(encode_bytes({"w": QuantizedTensor(x, 0, 50, 1.0)}, coder="huffman"))
    assert f.payload_bytes("w") * 8 >= n - 32  # minus at most the stripped zero bytes of the last word


def test_index_entropy_bits():
    assert index_entropy_bits(np.array([], int)) == 0.0
    assert index_entropy_bits(np.full(10, 3)) == 0.0
    assert index_entropy_bits(np.array([0, 1, 2, 3])) == pytest.approx(2.0)
    assert index_entropy_bits(np.array([[-1, -1], [5, 5]])) == pytest.approx(1.0)


# ------------------------------------------------------------------- container round trip


@given(tensors=tensor_dicts, coder=st.sampled_from(["ans", "huffman"]), float_dtype=st.sampled_from(["float32", "float16"]), metadata=metadata_values)
@FAST
def test_container_round_trip(tensors, coder, float_dtype, metadata):
    data = encode_bytes(tensors, coder=coder, float_dtype=float_dtype, metadata=metadata)
    f = decode_bytes(data)
    assert list(f) == list(tensors)
    assert f.coder == coder
    assert f.metadata == (metadata or {})
    assert f.total_bytes == len(data)
    assert f.lossy == (float_dtype == "float16" and any(isinstance(t, np.ndarray) for t in tensors.values()))
    for name, t in tensors.items():
        assert_same(t, f[name], float_dtype)
    assert f.header_bytes + sum(f.payload_bytes(n) for n in f) == len(data)
    assert encode_bytes(tensors, coder=coder, float_dtype=float_dtype, metadata=metadata) == data


def test_single_symbol_empty_and_scalar_tensors_need_no_payload():
    t = {
        "const": QuantizedTensor(np.full((4, 5), -3), -7, 7, 0.5),
        "empty": QuantizedTensor(np.zeros((3, 0, 2), np.int16), -2, 2, 0.5),
        "scalar": QuantizedTensor(np.array(4), 0, 9, 2.0),
        "fscalar": np.float32(1.5),
        "fempty": np.zeros((0,), np.float32),
    }
    f = decode_bytes(encode_bytes(t))
    for name in ("const", "empty", "scalar", "fempty"):
        assert f.payload_bytes(name) == 0
    assert f.payload_bytes("fscalar") == 4
    for name in t:
        assert_same(t[name], f[name])
    assert f["const"].indices.dtype == np.int8


def test_decoded_arrays_are_read_only_and_dtype_fits_alphabet():
    t = {
        "a": QuantizedTensor(np.array([0, 1, 1]), -7, 7, 1.0),
        "b": QuantizedTensor(np.array([0, 1000]), -1000, 1000, 1.0),
        "c": QuantizedTensor(np.array([0, 1]), INDEX_MIN, INDEX_MAX, 1.0, scales=[2.0, 3.0]),
        "d": np.ones(2, np.float32),
    }
    f = decode_bytes(encode_bytes(t))
    assert [f[k].indices.dtype for k in "abc"] == [np.int8, np.int16, np.int32]
    with pytest.raises(ValueError):
        f["a"].indices[0] = 3
    with pytest.raises(ValueError):
        f["d"][0] = 3
    assert np.array_equal(f["c"].values, np.array([0.0, 3.0], np.float32))
    with pytest.raises(TypeError):
        f["e"] = 1  # type: ignore[index]


def test_metadata_is_compact_utf8_json_and_float16_sets_the_lossy_flag():
    """Section 3.1 of docs/cdlz-format.md: the writer stores compact UTF-8 JSON (its length in
    bytes), the reader takes any JSON object; each is checked against hand-written bytes."""
    meta = {"model": "lenet5", "bits": [0.5, 1.25], "nested": {"ok": True, "n": None}, "ünï": "çødé"}
    text = '{"model":"lenet5","bits":[0.5,1.25],"nested":{"ok":true,"n":null},"ünï":"çødé"}'.encode()
    b = np.arange(3, dtype=np.float32) / 3
    data = encode_bytes({"b": b}, float_dtype="float16", metadata=meta)
    flags, _, header_, payloads = split(data)
    assert header_.startswith(b"\x01" + encode_varint(len(text)) + text)  # tensor count 1, metadata
    assert flags == 0x01 and payloads == b.astype("<f2").tobytes()
    f = decode_bytes(data)
    assert f.lossy and f["b"].dtype == np.float16
    f.metadata["model"] = "other"  # a copy
    assert f.metadata["model"] == "lenet5"
    flags, _, header_, payloads = split(encode_bytes({"b": b}))
    assert flags == 0 and header_.startswith(b"\x01\x00") and payloads == b.astype("<f4").tobytes()

    spaced = '{ "a" : [1, 2.5e0, -0], "\\u00fc": {"t": true, "f": false, "n": null}, "é": "\\n" }'.encode()
    g = decode_bytes(frame(header([], metadata=spaced)))
    assert g.metadata == {"a": [1, 2.5, 0], "ü": {"t": True, "f": False, "n": None}, "é": "\n"}
    assert not g.lossy and decode_bytes(frame(header([]))).metadata == {}


def test_writer_rejects_bad_input():
    with pytest.raises(ValueError, match="coder"):
        encode_bytes({}, coder="zip")
    with pytest.raises(ValueError, match="float_dtype"):
        encode_bytes({}, float_dtype="bfloat16")
    with pytest.raises(TypeError, match="QuantizedTensor or a floating"):
        encode_bytes({"x": np.array([1, 2])})
    with pytest.raises(ValueError, match="not exactly representable"):
        encode_bytes({"x": np.array([0.1])})
    with pytest.raises(ValueError, match="name"):
        encode_bytes({"": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="used index range"):
        encode_bytes({"x": QuantizedTensor(np.array([0, 70000]), 0, 70000, 1.0)})
    with pytest.raises(ValueError, match="NaN|Out of range"):
        encode_bytes({}, metadata={"x": float("nan")})
    with pytest.raises(TypeError, match="metadata must be a mapping"):
        encode_bytes({}, metadata=[])
    with pytest.raises(ValueError, match="outside"):
        QuantizedTensor(np.array([8]), -7, 7, 1.0)
    with pytest.raises(ValueError, match="q must be"):
        QuantizedTensor(np.array([1]), -7, 7, 0.0)
    with pytest.raises(ValueError, match="scales shape"):
        QuantizedTensor(np.zeros((2, 3), int), -7, 7, 1.0, scales=np.ones(2))
    with pytest.raises(ValueError, match="integer dtype"):
        QuantizedTensor(np.zeros(3), -7, 7, 1.0)


def test_hand_built_file_matches_writer():
    """The byte layout in docs/cdlz-format.md, written independently, equals the writer's output."""
    x = np.array([[0, 1], [1, 1], [3, 1]])
    counts = [1, 4, 0, 1]
    payload = coders.encode_symbols(x.reshape(-1), np.array(counts), "ans")
    headers = [
        quantized_header("w", (3, 2), lo=-4, hi=4, q=0.5, coder_id=1, used_lo=0, counts=counts, payload_len=len(payload), scales=[1.0, 2.0]),
        quantized_header("c", (2,), lo=-1, hi=1, q=1.0, coder_id=0, used_lo=-1, counts=[2]),
    ]
    fb = ByteWriter()
    fb.varint(1)
    fb.raw(b"b")
    fb.u8(1)
    fb.varint(1)
    fb.varint(2)
    headers.append(fb.getvalue())
    expected = frame(header(headers, metadata=b'{"k":1}'), payload + np.array([1.5, -2], "<f4").tobytes())
    got = encode_bytes(
        {
            "w": QuantizedTensor(x, -4, 4, 0.5, scales=[1.0, 2.0]),
            "c": QuantizedTensor(np.array([-1, -1]), -1, 1, 1.0),
            "b": np.array([1.5, -2], np.float32),
        },
        metadata={"k": 1},
    )
    assert got == expected


# ------------------------------------------------------------------- validation


def _valid_parts():
    counts = [3, 1]
    payload = coders.encode_symbols(np.array([0, 0, 1, 0]), np.array(counts), "ans")
    return counts, payload


def _one_tensor(**overrides) -> bytes:
    counts, payload = _valid_parts()
    fields = dict(lo=-2, hi=2, q=0.5, coder_id=1, used_lo=0, counts=counts, payload_len=len(payload))
    shape = overrides.pop("shape", (4,))
    payloads = overrides.pop("payloads", [payload])
    fields.update(overrides)
    return frame(header([quantized_header("w", shape, **fields)]), b"".join(payloads))


def test_one_tensor_helper_is_valid():
    f = decode_bytes(_one_tensor())
    assert np.array_equal(f["w"].indices, [0, 0, 1, 0])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "too short"),
        (b"CDL", "too short"),
        (b"XDLZ" + SAMPLES[0][4:], "magic"),
        (b"CDLZ\x01" + SAMPLES[0][5:], "version"),
        (b"CDLZ\x05" + SAMPLES[0][5:], "version"),
        (b"CDLZ\x00" + SAMPLES[0][5:], "version"),
        (b"CDLZ\x03\x80" + SAMPLES[0][6:], "flags"),
        (b"CDLZ\x03\x00\x07" + SAMPLES[0][7:], "coder"),
        (SAMPLES[0] + b"\0", "length"),
        (SAMPLES[0][:-1], "length"),
        (SAMPLES[0][:-4] + bytes(4), "crc32"),
        (frame_raw(b"")[:7] + b"\x00", "length"),
        (_one_tensor(shape=(2**40,)), "max_elements"),
        (_one_tensor(shape=(2**20, 2**20)), "max_elements"),
        (_one_tensor(shape=(2**14, 2**14, 0)), "empty tensor"),  # large dims, zero elements
        (_one_tensor(shape=(1,) * 9), "ndim"),
        (_one_tensor(counts=[3, 2]), "sum to 5"),
        (_one_tensor(counts=[2**63, 1]), "sum to"),
        (_one_tensor(counts=[0, 3, 1], used_lo=-1), "used range must start"),
        (_one_tensor(used_lo=2), "used range"),
        (_one_tensor(lo=3, hi=2), "lo/hi"),
        (_one_tensor(lo=-(2**40)), "lo/hi"),
        (_one_tensor(q=0.0), "q"),
        (_one_tensor(q=float("nan")), "q"),
        (_one_tensor(q=float("inf")), "q"),
        (_one_tensor(coder_id=2), "coder id"),
        (_one_tensor(coder_id=0, payload_len=None, payloads=[]), "coder id"),
        (_one_tensor(payload_len=0, payloads=[]), "payload length"),
        (_one_tensor(payload_len=_valid_parts()[1].__len__() + 1), "payload lengths sum"),
        (_one_tensor(payloads=[_valid_parts()[1] + b"\x01"], payload_len=len(_valid_parts()[1]) + 1), "payload"),
        (_one_tensor(scales=[1.0, float("nan"), 1.0, 1.0]), "scales"),
        # The 4 scales of shape (4,) where 1 is stored: 16 bytes from offset 14 run past the header
        (_one_tensor(scales=[1.0]), "tensor 'w' scales: needs 16 byte\\(s\\) at offset 14 but only 10 remain"),
        (_one_tensor(shape=(), counts=[1], coder_id=0, payload_len=None, payloads=[], scales=[1.0]), "0-d"),
        (frame(header([quantized_header("w", (0,), lo=0, hi=1, q=1.0, coder_id=1)])), "empty tensor"),
        (frame(header([quantized_header("w", (2,), lo=0, hi=1, q=1.0, coder_id=0, counts=[2])] * 2)), "duplicate"),
        (frame(header([quantized_header("w", (2,), lo=0, hi=1, q=1.0, coder_id=0, counts=[2])]).replace(b"w", b"\xff")), "UTF-8"),
        (frame(header([], metadata=b"[1, 2]")), "JSON object"),
        (frame(header([], metadata=b"{\"a\": NaN}")), "NaN"),
        (frame(header([], metadata=b"{\"a\": [-1e999]}")), "metadata: number -1e999 is beyond float64"),
        (frame(header([], metadata=b"{\"a\":")), "JSON"),
        (frame(header([], metadata=b"[" * 100000 + b"]" * 100000)), "metadata"),
        (frame(header([], metadata=b"\xff\xfe")), "metadata"),
        (frame(header([]), flags=1), "lossy"),
        (frame(header([]) + b"\0"), "header: 1 byte"),
        (frame(header([b"\x01w\x01\x00"]) + b"\x01\x00\x00\x80\x3f"), "header: 5 byte"),
        (frame(encode_varint(70000) + b"\0"), "tensor count"),
        (frame(encode_varint(1) + encode_varint(2**21)), "metadata length"),
        (frame(header([b"\x01w\x07\x00"])), "kind"),
        (frame(header([b"\x01w\x01\x01\x05"])), "payload lengths sum"),
        (frame(header([b"\x00"])), "name length"),
    ],
)
def test_reader_rejects(data, message):
    with pytest.raises(FormatError, match=message):
        decode_bytes(data)


_, _, HEADER0, PAYLOADS0 = split(SAMPLES[0])
PACKED0 = deflate(HEADER0)


@pytest.mark.parametrize(
    "rest, message",
    [
        (b"", "header size: truncated"),
        (encode_varint(len(HEADER0)), "compressed header length: truncated"),
        (pack(HEADER0, size=MAX_HEADER_BYTES + 1) + PAYLOADS0, "header size: 67108865 exceeds the limit"),
        (pack(HEADER0, size=2**64 - 1) + PAYLOADS0, "header size: .* exceeds the limit"),
        (pack(HEADER0, size=MAX_HEADER_BYTES) + PAYLOADS0, "header size: declares 67108864"),
        (pack(HEADER0, size=len(HEADER0) + 1) + PAYLOADS0, "header size: declares"),
        (pack(HEADER0, size=len(HEADER0) - 1) + PAYLOADS0, "header size: .*more than the declared"),
        (pack(HEADER0, size=0) + PAYLOADS0, "header size: .*more than the declared 0"),
        (pack(bytes(10**6), size=1000), "header size: .*more than the declared 1000"),
        (encode_varint(len(HEADER0)) + encode_varint(len(PACKED0) + len(PAYLOADS0) + 1) + PACKED0 + PAYLOADS0, "compressed header length"),
        (encode_varint(len(HEADER0)) + encode_varint(len(PACKED0) + len(PAYLOADS0)) + PACKED0 + PAYLOADS0, "after the end of the deflate stream"),
        (pack(HEADER0, packed=PACKED0 + b"\0") + PAYLOADS0, "compressed header: 1 byte\\(s\\) after the end"),
        (pack(HEADER0, packed=PACKED0 + deflate(b"")) + PAYLOADS0, "after the end of the deflate stream"),
        (pack(HEADER0, packed=PACKED0[:-1]) + PAYLOADS0, "compressed header: deflate stream is incomplete"),
        (pack(HEADER0, packed=b"") + PAYLOADS0, "compressed header: deflate stream is incomplete"),
        (pack(HEADER0, packed=b"\x07" + PACKED0[1:]) + PAYLOADS0, "compressed header: invalid deflate stream"),
        (pack(HEADER0, packed=b"\x01\x05\x00\x00\x00") + PAYLOADS0, "compressed header: invalid deflate stream"),
        (pack(HEADER0, packed=zlib.compress(HEADER0)) + PAYLOADS0, "compressed header: invalid deflate stream"),
        (pack(HEADER0) + PAYLOADS0[:-1], "payload lengths sum"),
    ],
)
def test_reader_rejects_bad_compressed_header(rest, message):
    with pytest.raises(FormatError, match=message):
        decode_bytes(frame_raw(rest))


def test_reader_rejects_version_1():
    """A version-1 file (header stored uncompressed right after the length field) is not read."""
    with pytest.raises(FormatError, match="version: unsupported format version 1"):
        decode_bytes(frame_raw(HEADER0 + PAYLOADS0, version=1))


def test_version_2_file_is_read_as_version_3():
    """Version 3 only adds kind 3, so a version-2 file (which cannot hold it) reads unchanged."""
    flags, coder, header_, payloads = split(SAMPLES[2])
    old = decode_bytes(frame(header_, payloads, version=2, flags=flags, coder=coder))
    new = decode_bytes(SAMPLES[2])
    assert list(old) == list(new)
    for name in new:
        assert_same(new[name], old[name], float_dtype="float16")  # SAMPLES[2] stores floats as float16


# ------------------------------------------------------------------- live masks


def _masked(shape=(3, 4), rows=b"\x05", cols=b"\x02", counts=(1, 0, 1), version=3, **fields) -> bytes:
    """Rows 0 and 2 and column 1 live: the coded indices are [1, -1] (symbols 2, 0 from used min -1)."""
    payload = coders.encode_symbols(np.array([2, 0]), np.array([1, 0, 1]), "ans")
    fields = dict(dict(lo=-7, hi=7, q=0.5, coder_id=1, used_lo=-1, payload_len=len(payload)), **fields)
    tensor = quantized_header("w", shape, counts=list(counts), masks=(rows, cols), **fields)
    return frame(header([tensor]), payload, version=version)


def test_masked_helper_is_valid():
    f = decode_bytes(_masked())
    assert np.array_equal(f["w"].indices, [[0, 1, 0, 0], [0, 0, 0, 0], [0, -1, 0, 0]])
    assert f.mask_bytes("w") == 2 and decode_bytes(_one_tensor()).mask_bytes("w") == 0
    assert f.index_bytes == f.payload_bytes("w") + 2
    assert f["w"].indices.dtype == np.int8 and not f["w"].indices.flags.writeable


@pytest.mark.parametrize(
    "data, message",
    [
        (_masked(rows=b"\x0d"), "row mask: padding bits after the 3 mask bits"),
        (_masked(cols=b"\x12"), "column mask: padding bits after the 4 mask bits"),
        (_masked(rows=b"\x00"), "no live row"),
        (_masked(counts=(1, 0, 2)), "counts sum to 3, live rows x live columns hold 2"),
        (_masked(lo=1, hi=7, used_lo=1), "does not contain index 0"),
        (_masked(shape=(12,)), "at least 2 dims"),
        (_masked(shape=(3, 0)), "at least 2 dims"),
        (_masked(version=2), "unknown kind 3 in a version-2 file"),
        # A 30-row mask takes 4 bytes where 1 is stored: the column mask, coder id and used min after
        # it. Each later field reads a later one: the counts (1, 0, 1) become coder id 1, used min 0
        # and used span 1, which leaves the payload length for 2 counts.
        (_masked(shape=(30, 4)), "tensor 'w' frequency table: 2 counts declared but only 1 bytes remain"),
    ],
)
def test_reader_rejects_bad_masks(data, message):
    with pytest.raises(FormatError, match=message):
        decode_bytes(data)


@pytest.mark.parametrize("coder", coders.CODERS)
def test_live_masks_are_used_only_where_smaller(coder, monkeypatch):
    """Sparse tensors round-trip through kind 3 into fewer bytes; dense ones are written as before."""
    rng = np.random.default_rng(11)
    sparse = {f"s{i}": QuantizedTensor(sparse_indices(rng, (50, 3, 60), 1 + 4 * i, 1 + 5 * i), -7, 7, 0.1)
              for i in range(1, 4)}
    # One non-zero in 9,000: ANS codes the zeros at ~0.002 bits each, less than the 27 mask bytes;
    # Huffman spends a bit on every zero, so there the masks pay.
    single = {"single": QuantizedTensor(sparse_indices(rng, (50, 3, 60), 1, 1), -7, 7, 0.1)}
    sparse, dense = (sparse, single) if coder == "ans" else ({**sparse, **single}, {})
    dense = {**dense, "d": QuantizedTensor(skewed_indices(rng, (20, 30), -7, 7, "geometric"), -7, 7, 0.1),
             "no_zero": QuantizedTensor(np.full((4, 5), 2), 1, 3, 0.5)}  # 0 outside the alphabet
    with_masks = {name: encode_bytes({name: t}, coder=coder) for name, t in {**sparse, **dense}.items()}
    monkeypatch.setattr(writer, "_live_masks", lambda tensor: None)
    for name, t in {**sparse, **dense}.items():
        without = encode_bytes({name: t}, coder=coder)
        assert_same(t, decode_bytes(with_masks[name])[name])
        if name in sparse:
            assert len(with_masks[name]) < len(without), name
            assert decode_bytes(with_masks[name]).mask_bytes(name) == 150 // 8 + 1 + 60 // 8 + 1  # kind 3
        else:
            assert with_masks[name] == without


# ------------------------------------------------------------------- columns as a multiset (version 4)

# A file of the previous writer (version 3): kind 0 conv/kernel, kind 3 fc/kernel, a float bias.
VERSION_3_FILE = bytes.fromhex(
    "43444c5a03000199016d636316a9562a4acc4b4f2d56b28a8e36d031d4338d8dade54ececf2bd3cf4e2dca4bcd61606164"
    "6262e2e5636060b0636064646664666664e54c4b864a333369f08025ed19849a1c049a9672327272b1b2b0b0b2307080287"
    "176a0d2a4ccc462464656009a1380f3134ccf52f57db48677ad3934979470e1b0b9d309ca0c8d040000803e0000c0bf0000"
    "0000000040400000803f1a54d838"
)


def test_version_3_file_of_the_previous_writer_reads_unchanged():
    """Its tensors come back as written, and the writer, finding nothing to code as a multiset (its
    columns are not in canonical order), writes the same version-3 bytes again."""
    f = decode_bytes(VERSION_3_FILE)
    block = (np.arange(48).reshape(8, 6) * 7 % 11) - 5
    block[block == 0] = 1
    fc = np.zeros((40, 12), np.int64)
    fc[np.ix_([1, 4, 9, 15, 22, 28, 33, 39], [0, 2, 5, 7, 8, 11])] = block
    expected = {
        "conv/kernel": QuantizedTensor(np.array([[[[1, -1], [0, 2]], [[0, 0], [1, 1]]]]), -7, 7, 0.125),
        "fc/kernel": QuantizedTensor(fc, -7, 7, 0.5),
        "fc/bias": np.array([0.25, -1.5, 0, 3, 1], np.float32),
    }
    assert f.version == 3 and list(f) == list(expected) and f.metadata == {"ranges": [[0, 1.5]]}
    assert f.mask_bytes("fc/kernel") == 7 and not any(f.unordered(name) for name in f)
    for name, t in expected.items():
        assert_same(t, f[name])
    assert encode_bytes(f, metadata=f.metadata) == VERSION_3_FILE


def test_canonical_column_order():
    """Columns with a non-zero first, lexicographic from row 0 (signed), the zero columns last."""
    x = np.array([[0, 1, -1, 0, 1, 0],
                  [0, -2, 3, 2, -2, 0]])
    order = multiset.column_order(x)
    np.testing.assert_array_equal(order, [2, 3, 1, 4, 0, 5])  # ties (columns 1 and 4) keep their order
    np.testing.assert_array_equal(multiset.column_order(x[:, order]), np.arange(6))
    np.testing.assert_array_equal(multiset.column_order(x, zero=1), [2, 0, 5, 3, 1, 4])  # no column all 1
    assert multiset.order_bits(x) == pytest.approx(math.log2(math.factorial(6) / (2 * 2)))
    with pytest.raises(ValueError, match="2-D"):
        multiset.column_order(np.zeros(3))
    rng = np.random.default_rng(0)
    for _ in range(300):  # is_canonical, from adjacent columns, agrees with the sort
        y = rng.integers(-1, 2, size=(int(rng.integers(1, 4)), int(rng.integers(1, 7))))
        y = y[:, multiset.column_order(y)] if rng.random() < 0.5 else y
        assert multiset.is_canonical(y) == np.array_equal(multiset.column_order(y), np.arange(y.shape[1])), y


@st.composite
def canonical_matrices(draw) -> tuple[np.ndarray, int]:
    """A symbol matrix in canonical order with repeated, constant and zero columns, and its zero symbol."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, columns = draw(st.integers(1, 40)), draw(st.integers(1, 120))
    x = skewed_indices(rng, (rows, columns), 0, draw(st.integers(1, 20)), draw(st.sampled_from(["geometric", "uniform"])))
    if draw(st.booleans()):  # repeated columns
        x = x[:, rng.integers(0, max(1, columns // 4), columns)]
    zero = draw(st.integers(-1, 3))
    if draw(st.booleans()) and 0 <= zero:
        x[:, rng.random(columns) < 0.3] = zero
    return x[:, multiset.column_order(x, zero)], zero


@given(canonical_matrices())
@FAST
def test_multiset_columns_round_trip(matrix_zero):
    x, zero = matrix_zero
    counts = np.bincount(x.reshape(-1))
    if not coders.needs_payload(counts):
        with pytest.raises(ValueError, match="two distinct"):
            multiset.encode_columns(x, counts, zero)
        return
    payload = multiset.encode_columns(x, counts, zero)
    if payload:
        assert payload[-1] != 0
        np.testing.assert_array_equal(multiset.decode_columns(payload, counts, x.shape, zero), x)


def test_multiset_encoder_needs_canonical_columns():
    x = np.array([[1, 0, 2], [0, 1, 1]])
    counts = np.bincount(x.reshape(-1))
    with pytest.raises(ValueError, match="canonical order"):
        multiset.encode_columns(x, counts, 0)
    with pytest.raises(ValueError, match="histogram"):
        multiset.encode_columns(x[:, multiset.column_order(x)], counts + 1, 0)
    with pytest.raises(ValueError, match="columns"):
        multiset.encode_columns(np.zeros((2, multiset.MAX_COLUMNS + 1), int), np.array([1]), 0)
    # The writer codes such a tensor in order, as version 3.
    t = {"w": QuantizedTensor(x, -2, 2, 0.5)}
    assert encode_bytes(t) == encode_bytes(t, max_version=3) and encode_bytes(t)[4] == 3
    with pytest.raises(ValueError, match="max_version"):
        encode_bytes(t, max_version=2)


@pytest.mark.parametrize("rows, columns, repeats", [(25, 20, 1), (500, 50, 1), (800, 300, 1), (64, 200, 4), (4, 400, 1)])
def test_multiset_saves_the_order_bits(rows, columns, repeats):
    """Synthetic layers: the payload as a multiset is smaller than in order by log2(n! / prod m_k!),
    less at most log2 n + 32 bits (the first choices, from a nearly empty stack), and it never
    saves more than the bound plus the rounding of the two payloads to bytes and coder words."""
    rng = np.random.default_rng(rows + columns)
    x = skewed_indices(rng, (rows, columns // repeats), -7, 7, "geometric")
    x = canonical(np.repeat(x, repeats, axis=1))
    bound = multiset.order_bits(x)
    if repeats > 1:
        assert bound < math.log2(math.factorial(columns))  # repeated units carry less order
    t = {"w": QuantizedTensor(x, -7, 7, 0.1)}
    ordered, unordered = decode_bytes(encode_bytes(t, max_version=3)), decode_bytes(encode_bytes(t))
    assert unordered.unordered("w") and unordered.version == 4 and ordered.version == 3
    assert_same(t["w"], unordered["w"])
    saved = 8 * (ordered.payload_bytes("w") - unordered.payload_bytes("w"))
    assert bound - math.log2(columns) - 32 <= saved <= bound + 16, (saved, bound)
    assert ordered.total_bytes - unordered.total_bytes >= saved // 8 - 2  # the header hardly changes


def test_sparse_canonical_tensors_use_kind_5_and_dense_ones_kind_4():
    rng = np.random.default_rng(3)
    sparse = QuantizedTensor(canonical(sparse_indices(rng, (5, 5, 8, 40), 30, 25)), -7, 7, 0.1)
    dense = QuantizedTensor(canonical(skewed_indices(rng, (5, 5, 1, 20), -7, 7, "geometric")), -7, 7, 0.1)
    for t, masked in ((sparse, True), (dense, False)):
        f = decode_bytes(encode_bytes({"w": t}))
        assert f.unordered("w") and (f.mask_bytes("w") > 0) == masked
        assert_same(t, f["w"])
        assert f.total_bytes < len(encode_bytes({"w": t}, max_version=3))
    _, _, header_, _ = split(encode_bytes({"w": sparse}))
    assert header_[4] == 5  # after tensor count, metadata length, name length and name "w": the kind
    f = decode_bytes(encode_bytes({"w": sparse}, coder="huffman"))  # no multiset with Huffman
    assert f.version == 3 and not f.unordered("w")


def test_hand_built_version_4_file_matches_writer():
    """Kind 4 as docs/cdlz-format.md lays it out: kind 0's fields, the payload of the multiset."""
    x = canonical(np.array([[2, 0, 1, -1, 0, 1], [1, 0, 1, 3, 1, 1], [0, 0, 0, 0, 2, 0]]))
    used_lo, counts = coders.frequency_table(x)
    payload = multiset.encode_columns(x - used_lo, counts, -used_lo)
    tensor = quantized_header("w", (3, 6), lo=-4, hi=4, q=0.5, coder_id=1, used_lo=used_lo, counts=counts.tolist(),
                              payload_len=len(payload), unordered=True)
    expected = frame(header([tensor]), payload, version=4)
    assert encode_bytes({"w": QuantizedTensor(x, -4, 4, 0.5)}) == expected
    np.testing.assert_array_equal(decode_bytes(expected)["w"].indices, x)


def _unordered(shape=(3, 6), version=4, coder=1, **fields) -> bytes:
    x = canonical(np.array([[2, 0, 1, -1, 0, 1], [1, 0, 1, 3, 1, 1], [0, 0, 0, 0, 2, 0]]))
    used_lo, counts = coders.frequency_table(x)
    payload = multiset.encode_columns(x - used_lo, counts, -used_lo)
    fields = dict(dict(lo=-4, hi=4, q=0.5, coder_id=1, used_lo=used_lo, counts=counts.tolist(),
                       payload_len=len(payload), payloads=[payload]), **fields)
    payloads = fields.pop("payloads")
    return frame(header([quantized_header("w", shape, unordered=True, **fields)]), b"".join(payloads),
                 version=version, coder=coder)


def test_unordered_helper_is_valid():
    f = decode_bytes(_unordered())
    assert f.unordered("w") and f.version == 4 and f["w"].shape == (3, 6)


@pytest.mark.parametrize(
    "data, message",
    [
        (_unordered(version=3), "unknown kind 4 in a version-3 file"),
        (_unordered(coder=2, coder_id=2), "kind 4 needs the ANS coder"),
        (_unordered(shape=(18,)), "kind 4 needs a non-empty tensor of at least 2 dims"),
        (_unordered(shape=(9, 2)), "histogram of decoded symbols|ANS stream not empty|corrupt"),
        (_unordered(shape=(1, 2**14 + 1), counts=[2**14, 1], payload_len=1, payloads=[b"\x01"]),
         "16385 coded columns exceed the limit 16384"),
        (_unordered(shape=(3, 6), counts=[18], coder_id=0, payload_len=None, payloads=[]),
         "coder id: 0, but kind 4 has a payload"),
        (_unordered(payloads=[b"\x01\x02"], payload_len=2), "tensor 'w' payload"),
        (_unordered(payloads=[b"\x01\x00"], payload_len=2), "non-canonical payload"),
    ],
)
def test_reader_rejects_bad_unordered_tensors(data, message):
    with pytest.raises(FormatError, match=message):
        decode_bytes(data)


def test_columns_coded_as_multisets_are_limited_per_file(monkeypatch):
    """The reader refuses more than MAX_FILE_COLUMNS of them in a file, and the writer codes the
    tensors beyond the limit in order."""
    rng = np.random.default_rng(5)
    tensors = {name: QuantizedTensor(canonical(skewed_indices(rng, (30, n), -7, 7, "geometric")), -7, 7, 0.1)
               for name, n in (("a", 20), ("b", 30))}
    data = encode_bytes(tensors)
    assert decode_bytes(data).unordered("a") and decode_bytes(data).unordered("b")
    monkeypatch.setattr(multiset, "MAX_FILE_COLUMNS", 40)
    with pytest.raises(FormatError, match="tensor 'b': 50 columns coded as multisets in the file exceed the limit 40"):
        decode_bytes(data)
    f = decode_bytes(encode_bytes(tensors))
    assert f.unordered("a") and not f.unordered("b")
    for name, t in tensors.items():
        assert_same(t, f[name])


def test_version_4_sample_has_kinds_4_and_5():
    f = SAMPLE_FILES[-1]
    assert f.version == 4 and f.unordered("conv/kernel") and f.unordered("fc/kernel")
    assert f.mask_bytes("fc/kernel") > 0 and not f.unordered("logits/kernel")


def test_header_limit_applies_to_writer_and_reader(monkeypatch):
    tensors = {"layer/kernel": QuantizedTensor(np.array([0, 1, 1]), -1, 1, 1.0)}
    data = encode_bytes(tensors)
    for module in (writer, reader):
        monkeypatch.setattr(module, "MAX_HEADER_BYTES", len(split(data)[2]) - 1)
    with pytest.raises(ValueError, match="header is"):
        encode_bytes(tensors)
    with pytest.raises(FormatError, match="header size: .* exceeds the limit"):
        decode_bytes(data)


def test_writer_is_deterministic_and_canonical():
    """Re-encoding a decoded file with the same options reproduces it byte for byte."""
    for data in SAMPLES:
        f = decode_bytes(data)
        again = encode_bytes(f, coder=f.coder, float_dtype="float16" if f.lossy else "float32", metadata=f.metadata)
        assert again == data


def test_header_is_deflated():
    names = {f"quant_stage1_block{i}_conv{j}/kernel": np.zeros((2,), np.float32) for i in range(3) for j in range(2)}
    data = encode_bytes(names)
    _, _, header_, _ = split(data)
    f = decode_bytes(data)
    assert f.header_bytes < len(header_)
    assert f.header_bytes == len(data) - sum(f.payload_bytes(n) for n in f)


def test_empty_file_is_valid():
    f = decode_bytes(encode_bytes({}))
    assert len(f) == 0 and f.metadata == {} and f.coder == "ans"


def test_reader_rejects_non_bytes_and_negative_limit():
    with pytest.raises(TypeError):
        decode_bytes("CDLZ")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        decode_bytes(SAMPLES[0], max_elements=-1)


def test_max_elements_applies_to_total():
    data = encode_bytes({"a": np.zeros(60, np.float32), "b": QuantizedTensor(np.zeros(60, int), 0, 1, 1.0)})
    decode_bytes(data, max_elements=120)
    with pytest.raises(FormatError, match="total element count"):
        decode_bytes(data, max_elements=100)
    with pytest.raises(FormatError, match="max_elements"):
        decode_bytes(data, max_elements=50)


# ------------------------------------------------------------------- fuzzing


def mutate_part(data: bytes, part: str, mutate: Callable[[bytes], bytes]) -> bytes:
    """``data`` with ``mutate`` applied to one part, re-framed with correct sizes and CRC.

    ``header`` is the uncompressed header, compressed again after the mutation so that
    the header parser sees it; ``body`` is everything between the length field and the CRC.
    """
    flags, coder, header_, payloads = split(data)
    version = data[4]
    if part == "header":
        return frame(mutate(header_), payloads, version=version, flags=flags, coder=coder)
    if part == "payloads":
        return frame(header_, mutate(payloads), version=version, flags=flags, coder=coder)
    return frame_raw(mutate(pack(header_) + payloads), version=version, flags=flags, coder=coder)


def assert_consistent(data: bytes, f: CodedFile) -> None:
    """What every file the reader accepts satisfies, whatever tensors it holds: the sizes add up,
    the arrays are read-only, the lossy flag means a float16 tensor, and the tensors written
    again with the file's coder and metadata read back unchanged."""
    assert f.total_bytes == len(data)
    assert f.header_bytes + sum(f.payload_bytes(n) for n in f) == len(data)
    arrays = [t.indices if isinstance(t, QuantizedTensor) else t for t in f.values()]
    assert not any(a.flags.writeable for a in arrays)
    assert f.lossy == any(a.dtype == np.float16 for a in arrays)
    float_dtype = "float16" if f.lossy else "float32"
    again = decode_bytes(encode_bytes(f, coder=f.coder, float_dtype=float_dtype, metadata=f.metadata))
    assert list(again) == list(f) and again.metadata == f.metadata
    with np.errstate(over="ignore"):  # a mutated step can be large enough for index * q to overflow
        for name in f:
            assert_same(f[name], again[name], float_dtype)


def assert_payload_mutation(sample: int, data: bytes) -> None:
    """``data`` is ``SAMPLES[sample]`` with other payload bytes under the intact header.

    The header fixes each payload's length, so payloads of another total length are refused.
    A file that decodes has the original's names, metadata, payload sizes, shapes and dtypes,
    alphabets, steps and scales; each quantized tensor holds the original indices in some
    order (the header's counts are intact and the reader checks the decoded histogram against
    them), and every tensor whose payload bytes are unchanged is the original tensor.
    """
    original = SAMPLE_FILES[sample]
    old, new = SAMPLE_PAYLOADS[sample], split(data)[3]
    if len(new) != len(old):
        with pytest.raises(FormatError, match="payload lengths sum to"):
            decode_bytes(data, max_elements=COMPARE_MAX)
        return
    f = decode_or_format_error(data)
    if f is None:
        return
    assert_consistent(data, f)
    assert list(f) == list(original) and f.metadata == original.metadata
    start = 0
    for name, t in original.items():
        end = start + original.payload_bytes(name)
        got = f[name]
        assert f.payload_bytes(name) == original.payload_bytes(name)
        if isinstance(t, QuantizedTensor):
            assert isinstance(got, QuantizedTensor)
            assert (got.shape, got.lo, got.hi, got.q) == (t.shape, t.lo, t.hi, t.q)
            assert got.scales is None if t.scales is None else np.array_equal(got.scales, t.scales)
            assert np.array_equal(np.sort(got.indices, axis=None), np.sort(t.indices, axis=None))
            values, expected = got.indices, t.indices
        else:
            assert got.dtype == t.dtype and got.shape == t.shape
            values, expected = got, t
        if new[start:end] == old[start:end]:
            assert np.array_equal(values, expected, equal_nan=True), name
        start = end


def check_mutation(sample: int, part: str, data: bytes) -> None:
    """Decode ``data``, ``SAMPLES[sample]`` with ``part`` mutated and sizes and CRC fixed up.

    A FormatError is an accepted outcome. A file that decodes need not hold the original
    tensors: with the CRC recomputed nothing else protects the float payloads, names, steps,
    scales, alphabets or metadata, and a coded payload may decode to another order of the same
    symbols (the reader checks their histogram only). It must be consistent instead
    (`assert_consistent`) and, where only the payloads changed, hold all the intact header
    fixes (`assert_payload_mutation`).
    """
    if part == "payloads":
        assert_payload_mutation(sample, data)
    elif (f := decode_or_format_error(data)) is not None:
        assert_consistent(data, f)


@pytest.mark.parametrize("sample", range(len(SAMPLES)))
def test_every_truncation_is_rejected(sample):
    data = SAMPLES[sample]
    for n in range(len(data)):
        with pytest.raises(FormatError):
            decode_bytes(data[:n])


@pytest.mark.parametrize("sample", range(len(SAMPLES)))
def test_every_truncation_of_the_header_is_rejected(sample):
    """Truncated deflate streams, and truncated headers compressed whole, each with sizes and CRC fixed."""
    flags, coder, header_, payloads = split(SAMPLES[sample])
    version = SAMPLES[sample][4]
    packed = deflate(header_)
    for n in range(len(packed)):
        with pytest.raises(FormatError, match="compressed header"):
            decode_bytes(frame_raw(pack(header_, packed=packed[:n]) + payloads, version=version, flags=flags, coder=coder))
    for n in range(len(header_)):
        with pytest.raises(FormatError):
            decode_bytes(frame(header_[:n], payloads, version=version, flags=flags, coder=coder))


@given(
    sample=st.integers(0, len(SAMPLES) - 1),
    flips=st.lists(st.integers(0, 10**9), min_size=1, max_size=8),
    target=st.sampled_from(["file", "file+crc", "header", "payloads"]),
)
@FUZZ
def test_bit_flips_are_refused_or_decode_consistently(sample, flips, target):
    """Bit flips anywhere in the file (CRC kept or fixed), or in the uncompressed header or the payloads."""

    def flip(raw: bytes) -> bytes:
        out = bytearray(raw)
        for f in flips:
            pos = f % (8 * len(out))
            out[pos // 8] ^= 1 << (pos % 8)
        return bytes(out)

    data = SAMPLES[sample]
    if target == "file":
        mutated = flip(data)
        if mutated != data:
            with pytest.raises(FormatError):
                decode_bytes(mutated, max_elements=COMPARE_MAX)
    elif target == "file+crc":
        check_mutation(sample, "file", fix_crc(flip(data[:-4]) + data[-4:]))
    else:
        check_mutation(sample, target, mutate_part(data, target, flip))


@given(
    sample=st.integers(0, len(SAMPLES) - 1),
    part=st.sampled_from(["header", "payloads", "body"]),
    start=st.integers(0, 10**9),
    replacement=st.binary(min_size=0, max_size=12),
    cut=st.integers(0, 12),
)
@FUZZ
def test_splices_with_fixed_crc_are_refused_or_decode_consistently(sample, part, start, replacement, cut):
    """Byte replacements, insertions and deletions in one part, with sizes and CRC fixed up."""

    def splice(raw: bytes) -> bytes:
        pos = start % (len(raw) + 1)
        return raw[:pos] + replacement + raw[pos + cut :]

    check_mutation(sample, part, mutate_part(SAMPLES[sample], part, splice))


@given(
    sample=st.integers(0, len(SAMPLES) - 1),
    part=st.sampled_from(["header", "body"]),
    pos=st.integers(0, 10**9),
    value=st.sampled_from([2**40, 2**28 + 1, 2**26 + 1, 2**63, 2**64 - 1, 0, 1, 127, 128, 65535, 65536]),
)
@FUZZ
def test_inflated_varints_are_refused_or_decode_consistently(sample, part, pos, value):
    """Overwrite the varint starting at a byte of the header (or of the body) with a large declared size."""

    def inflate(raw: bytes) -> bytes:
        p = pos % len(raw)
        end = p
        while end < len(raw) and raw[end] & 0x80:
            end += 1
        return raw[:p] + encode_varint(value) + raw[end + 1 :]

    check_mutation(sample, part, mutate_part(SAMPLES[sample], part, inflate))


# ------------------------------------------------------------------- files


def test_write_read_round_trip_and_no_temp_files(tmp_path):
    tensors = {"w": QuantizedTensor(np.array([[0, 1], [2, 2]]), -2, 2, 0.25), "b": np.ones(2, np.float32)}
    path = tmp_path / "model.cdlz"
    n = write(path, tensors, coder="huffman", metadata={"a": 1})
    assert path.read_bytes() == encode_bytes(tensors, coder="huffman", metadata={"a": 1})
    assert n == path.stat().st_size
    assert os.listdir(tmp_path) == ["model.cdlz"]
    f = read(path)
    assert f.coder == "huffman" and f.metadata == {"a": 1}
    for name in tensors:
        assert_same(tensors[name], f[name])
    assert read(str(path)).total_bytes == n


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_keeps_existing_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "model.cdlz"
    write(path, {"b": np.ones(2, np.float32)})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="disk on fire"):
        write(path, {"b": np.zeros(5, np.float32)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.cdlz"]


def test_invalid_tensors_do_not_touch_existing_file(tmp_path):
    path = tmp_path / "model.cdlz"
    write(path, {"b": np.ones(2, np.float32)})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write(path, {"b": np.ones(2, np.int32)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.cdlz"]


def test_read_rejects_corrupt_file_on_disk(tmp_path):
    path = tmp_path / "bad.cdlz"
    path.write_bytes(SAMPLES[1][:-3])
    with pytest.raises(FormatError):
        read(path)
