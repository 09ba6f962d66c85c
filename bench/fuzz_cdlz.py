"""Random-mutation fuzzing of the ``.cdlz`` reader.

Builds a few valid files (both coders, every tensor kind, scales, metadata; one of
version 4, whose kernels' columns are coded as multisets),
applies ``--n`` random mutations with a fixed seed and decodes each result with
``decode_bytes``. Every outcome must be either a :class:`FormatError` or a
successful decode; any other exception is a reader bug and makes the script exit
with status 1. Mutations whose name ends in ``+crc`` rewrite the frame's length
field and CRC-32 afterwards so that the deeper checks run; those named ``header_*``
mutate the inflated header and deflate it again (with correct header size,
compressed length, length field and CRC-32), so that the header parser sees them.

Outcomes per mutation kind and the FormatError fields that fired are written to
``bench/results/fuzz_cdlz.json``.

Usage: ``python bench/fuzz_cdlz.py [--n 100000] [--seed 0] [--out PATH]``.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import time
import zlib
from typing import Callable

import numpy as np

from cdl_tf.coding import FormatError, QuantizedTensor, decode_bytes, encode_bytes
from cdl_tf.coding.format import HEADER_LEVEL, HEADER_WBITS
from cdl_tf.coding.multiset import column_order
from cdl_tf.coding.wire import ByteReader, encode_varint
from cdl_tf.io import atomic_write_json

MAX_ELEMENTS = 1 << 20
BIG_VALUES = [0, 1, 127, 128, 2**16, 2**28 + 1, 2**40, 2**63, 2**64 - 1]


def base_files(rng: np.random.Generator) -> list[bytes]:
    def geometric(shape, lo, hi, p):
        x = (rng.geometric(p, size=shape) - 1) * rng.choice([-1, 1], size=shape)
        return np.clip(x, lo, hi)

    def sparse(shape, lo, hi, live=(5, 3)):
        """Non-zero indices only in a few rows (leading axes) and columns (last axis)."""
        x = np.zeros(shape, np.int64).reshape(-1, shape[-1])
        rows = rng.choice(x.shape[0], live[0], replace=False)
        cols = rng.choice(x.shape[1], live[1], replace=False)
        x[np.ix_(rows, cols)] = geometric(live, lo, hi, 0.5)
        x[rows[0], cols[0]] = 1  # at least one non-zero
        return x.reshape(shape)

    def canonical(x):
        """Columns (last axis) in the canonical order that kinds 4 and 5 decode to."""
        matrix = x.reshape(-1, x.shape[-1])
        return matrix[:, column_order(matrix)].reshape(x.shape)

    tensors = {
        "conv1/kernel": QuantizedTensor(geometric((5, 5, 1, 6), -7, 7, 0.6), -7, 7, 0.05),
        "conv1/bias": rng.normal(size=6).astype(np.float32),
        "fc1/kernel": QuantizedTensor(geometric((40, 12), -127, 127, 0.3), -127, 127, 0.01, rng.uniform(0.5, 2, 12)),
        "fc1/bias": QuantizedTensor(np.full((12,), 1), -7, 7, 0.1),
        "empty": QuantizedTensor(np.zeros((0, 2), np.int8), -1, 1, 1.0),
        "scalar": np.float32(3.5),
        "sparse/kernel": QuantizedTensor(sparse((60, 4, 20), -7, 7), -7, 7, 0.2),  # stored with live masks
    }
    canonical_tensors = {
        "conv1/kernel": QuantizedTensor(canonical(geometric((5, 5, 1, 16), -7, 7, 0.5)), -7, 7, 0.05),  # kind 4
        "fc1/kernel": QuantizedTensor(canonical(sparse((200, 30), -7, 7, live=(20, 12))), -7, 7, 0.1),  # kind 5
        "fc1/bias": rng.normal(size=30).astype(np.float32),
    }
    return [
        encode_bytes(tensors, coder="ans", metadata={"model": "fuzz", "seed": 1}),
        encode_bytes(canonical_tensors, coder="ans", metadata={"model": "canonical"}),
        encode_bytes(tensors, coder="huffman"),
        encode_bytes(tensors, coder="ans", float_dtype="float16"),
        encode_bytes({"w": QuantizedTensor(geometric((300,), -3, 3, 0.9), -3, 3, 0.5)}, coder="huffman"),
    ]


def _split(data: bytes) -> tuple[bytes, bytes]:
    """(magic, version, flags, coder) and (compressed header + payloads) of a valid file."""
    reader = ByteReader(memoryview(data), 7)
    reader.varint("length")
    return data[:7], data[reader.pos : -4]


def _split_header(body: bytes) -> tuple[bytes, bytes]:
    """The inflated header and the payloads of a valid file's body."""
    reader = ByteReader(memoryview(body))
    reader.varint("header size")
    packed = reader.raw(reader.varint("compressed header length"), "compressed header")
    return zlib.decompress(packed, HEADER_WBITS), body[reader.pos :]


def refit(prefix: bytes, body: bytes) -> bytes:
    """Re-frame ``body`` with a correct length field and CRC-32."""
    data = prefix + encode_varint(len(body) + 4) + body
    return data + zlib.crc32(data).to_bytes(4, "little")


def repack(header: bytes, payloads: bytes) -> bytes:
    """A body holding ``header`` deflated, with correct header size and compressed length."""
    compressor = zlib.compressobj(HEADER_LEVEL, zlib.DEFLATED, HEADER_WBITS)
    packed = compressor.compress(header) + compressor.flush()
    return encode_varint(len(header)) + encode_varint(len(packed)) + packed + payloads


def mutators(rng: np.random.Generator) -> dict[str, Callable[[bytes], bytes]]:
    def flip_bits(data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(0, 8 * len(out)))
            out[pos // 8] ^= 1 << (pos % 8)
        return bytes(out)

    def truncate(data: bytes) -> bytes:
        return data[: int(rng.integers(0, len(data)))]

    def frame_byte(data: bytes) -> bytes:
        out = bytearray(data)
        out[int(rng.integers(0, 8))] = int(rng.integers(0, 256))
        return bytes(out)

    def splice(data: bytes) -> bytes:
        pos = int(rng.integers(0, len(data) + 1))
        cut = int(rng.integers(0, 9))
        insert = rng.integers(0, 256, size=int(rng.integers(0, 9)), dtype=np.uint8).tobytes()
        return data[:pos] + insert + data[pos + cut :]

    def varint(data: bytes) -> bytes:
        pos = int(rng.integers(0, len(data)))
        end = pos
        while end < len(data) and data[end] & 0x80:
            end += 1
        value = BIG_VALUES[int(rng.integers(0, len(BIG_VALUES)))]
        value = value if rng.random() < 0.7 else int(rng.integers(0, 2**20))
        return data[:pos] + encode_varint(value) + data[end + 1 :]

    def in_body(mutate: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def mutated(data: bytes) -> bytes:
            prefix, body = _split(data)
            return refit(prefix, mutate(body))

        return mutated

    def in_header(mutate: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def mutated(data: bytes) -> bytes:
            prefix, body = _split(data)
            header, payloads = _split_header(body)
            return refit(prefix, repack(mutate(header), payloads))

        return mutated

    return {
        "bitflip": flip_bits,
        "truncate": truncate,
        "frame_byte": frame_byte,
        "bitflip+crc": in_body(flip_bits),
        "splice+crc": in_body(splice),
        "varint+crc": in_body(varint),
        "header_bitflip+crc": in_header(flip_bits),
        "header_splice+crc": in_header(splice),
        "header_varint+crc": in_header(varint),
    }


def error_field(message: str) -> str:
    """The field part of a FormatError message with names and numbers normalised."""
    field = message.split(":", 1)[0]
    field = re.sub(r"'[^']*'|\"[^\"]*\"", "*", field)
    return re.sub(r"\b\d+\b", "#", field)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "fuzz_cdlz.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    files = base_files(rng)
    kinds = mutators(rng)
    names = list(kinds)
    by_kind: dict[str, collections.Counter] = {k: collections.Counter() for k in names}
    fields: collections.Counter = collections.Counter()
    failures: list[dict] = []
    start = time.perf_counter()
    for i in range(args.n):
        kind = names[i % len(names)]
        original = files[int(rng.integers(0, len(files)))]
        mutated = kinds[kind](original)
        if mutated == original:
            by_kind[kind]["unchanged"] += 1
            continue
        try:
            decode_bytes(mutated, max_elements=MAX_ELEMENTS)
            by_kind[kind]["decoded"] += 1
        except FormatError as exc:
            by_kind[kind]["format_error"] += 1
            fields[error_field(str(exc))] += 1
        except Exception as exc:  # a reader bug: record it
            by_kind[kind][f"other:{type(exc).__name__}"] += 1
            if len(failures) < 20:
                failures.append({"kind": kind, "error": repr(exc), "data": mutated.hex()})
    seconds = time.perf_counter() - start

    totals: collections.Counter = collections.Counter()
    for counter in by_kind.values():
        totals.update(counter)
    report = {
        "n": args.n,
        "seed": args.seed,
        "max_elements": MAX_ELEMENTS,
        "seconds": round(seconds, 2),
        "outcomes": dict(totals),
        "by_mutation": {k: dict(v) for k, v in by_kind.items()},
        "format_error_fields": dict(fields.most_common()),
        "other_exceptions": failures,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_json(args.out, report)
    print(json.dumps({k: report[k] for k in ("n", "seed", "seconds", "outcomes", "by_mutation")}, indent=1))
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
