"""Rate and throughput of the ANS and Huffman index coders.

For synthetic index tensors (two-sided geometric PMFs over [-127, 127] tuned to
target entropies, fixed seed) reports, per coder:

* ``ratio``: coded payload bits / (N * H), with ``H`` the empirical entropy of the
  tensor (the ideal cost of coding it under its own frequency table);
* ``bits_per_value``: payload bits / N;
* encode / decode throughput in M symbols/s (best of ``--repeats``), measured on
  the coder calls the container makes (frequency table + encode; decode + checks).

Usage: ``python bench/coding.py [--out bench/results/coding.json] [--seed 0]``.
:func:`measure_tensor` can be called on real model tensors.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Callable

import numpy as np

from cdl_tf.coding import coders, index_entropy_bits

SIZES = (10**4, 10**5, 10**6)
TARGET_ENTROPIES = (0.1, 0.5, 1.0, 2.0, 4.0)
ALPHABET = (-127, 127)


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_tensor(indices: np.ndarray, lo: int, hi: int, *, repeats: int = 3) -> dict:
    """Coded size and throughput of one index tensor under each coder.

    Args:
      indices: integer array with entries in ``[lo, hi]``.
      lo, hi: the alphabet (reported only; the coders use the used range).
      repeats: timing repetitions; the fastest is reported.

    Returns a JSON-serialisable dict with ``n``, ``entropy_bits`` (per value),
    ``ideal_bytes`` (``N * H / 8``) and, per coder, ``payload_bytes``,
    ``bits_per_value``, ``ratio`` (payload bits / ``N * H``; ``None`` if ``H = 0``),
    ``encode_msym_s`` and ``decode_msym_s``.
    """
    flat = np.asarray(indices).reshape(-1)
    n = int(flat.size)
    h = index_entropy_bits(flat)
    result: dict = {
        "n": n,
        "lo": int(lo),
        "hi": int(hi),
        "entropy_bits": h,
        "ideal_bytes": n * h / 8,
    }
    for coder in coders.CODERS:

        def encode() -> bytes:
            used_lo, counts = coders.frequency_table(flat)
            return coders.encode_symbols(flat - used_lo, counts, coder)

        used_lo, counts = coders.frequency_table(flat)
        payload = encode()
        decoded = coders.decode_symbols(payload, counts, coder)
        if not np.array_equal(decoded + used_lo, flat):
            raise AssertionError(f"{coder}: round trip failed")
        t_enc = _best_seconds(encode, repeats)
        t_dec = _best_seconds(lambda: coders.decode_symbols(payload, counts, coder), repeats)
        bits = 8 * len(payload)
        result[coder] = {
            "payload_bytes": len(payload),
            "bits_per_value": bits / n if n else 0.0,
            "ratio": bits / (n * h) if n and h > 0 else None,
            "encode_msym_s": n / t_enc / 1e6 if n else None,
            "decode_msym_s": n / t_dec / 1e6 if n else None,
        }
    return result


def _two_sided_geometric(theta: float, lo: int, hi: int) -> np.ndarray:
    """PMF ``p(i) ~ theta**|i|`` on ``lo..hi``."""
    support = np.arange(lo, hi + 1)
    w = theta ** np.abs(support).astype(np.float64)
    return w / w.sum()


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def pmf_with_entropy(target_bits: float, lo: int, hi: int) -> np.ndarray:
    """Two-sided geometric PMF whose entropy equals ``target_bits`` (bisection on theta)."""
    a, b = 1e-12, 1.0 - 1e-12
    for _ in range(200):
        mid = (a + b) / 2
        if _entropy(_two_sided_geometric(mid, lo, hi)) < target_bits:
            a = mid
        else:
            b = mid
    return _two_sided_geometric((a + b) / 2, lo, hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "coding.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    lo, hi = ALPHABET
    rows = []
    header = (
        f"{'N':>8} {'H tgt':>5} {'H':>6} | {'ANS ratio':>9} {'enc M/s':>8} {'dec M/s':>8} | "
        f"{'Huff b/v':>8} {'ratio':>6} {'enc M/s':>8} {'dec M/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for n in SIZES:
        for target in TARGET_ENTROPIES:
            pmf = pmf_with_entropy(target, lo, hi)
            indices = rng.choice(np.arange(lo, hi + 1), size=n, p=pmf).astype(np.int8)
            row = {"target_entropy_bits": target, **measure_tensor(indices, lo, hi, repeats=args.repeats)}
            rows.append(row)
            a, h = row["ans"], row["huffman"]
            print(
                f"{n:>8} {target:>5.1f} {row['entropy_bits']:>6.3f} | {a['ratio']:>9.4f} "
                f"{a['encode_msym_s']:>8.1f} {a['decode_msym_s']:>8.1f} | {h['bits_per_value']:>8.3f} "
                f"{h['ratio']:>6.3f} {h['encode_msym_s']:>8.1f} {h['decode_msym_s']:>8.1f}"
            )

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "seed": args.seed,
                "alphabet": list(ALPHABET),
                "machine": {"python": platform.python_version(), "processor": platform.machine(), "cpus": os.cpu_count()},
                "results": rows,
            },
            f,
            indent=1,
        )
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
