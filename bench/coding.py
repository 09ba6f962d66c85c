"""Rate and throughput of the ANS and Huffman index coders.

For synthetic index tensors (two-sided geometric PMFs over [-127, 127] tuned to
target entropies, fixed seed) reports, per coder:

* ``ratio``: coded payload bits / (N * H), with ``H`` the empirical entropy of the
  tensor (the ideal cost of coding it under its own frequency table);
* ``bits_per_value``: payload bits / N;
* encode / decode throughput in M symbols/s (best of ``--repeats``), measured on
  the coder calls the container makes (frequency table + encode; decode + checks).

For exported models (``--export_dirs``, directories written by ``cdl-export``) it also
reports each quantized tensor of ``weights.cdlz`` and the model totals, and the latency
of the int8 TFLite model against the float one on the same input batch, as a ratio.

Usage: ``python bench/coding.py [--out bench/results/coding.json] [--seed 0]
[--export_dirs DIR1,DIR2]``.
"""
from __future__ import annotations

import argparse
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


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def tflite_latency(export_dir: str, batch: int, repeats: int = 50) -> dict:
    """Median invoke time of ``model.tflite`` (int8) and ``model_float.tflite`` on one input."""
    from ai_edge_litert.interpreter import Interpreter

    out = {}
    x = None
    for kind, name in (("int8", "model.tflite"), ("float", "model_float.tflite")):
        interp = Interpreter(model_path=os.path.join(export_dir, name), num_threads=1)
        detail = interp.get_input_details()[0]
        interp.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        if x is None:
            x = np.random.default_rng(0).random(detail["shape"]).astype(np.float32)
        interp.set_tensor(detail["index"], x.astype(detail["dtype"]))
        interp.invoke()
        out[f"{kind}_s"] = _median_seconds(interp.invoke, repeats)
    out["int8_vs_float"] = out["int8_s"] / out["float_s"]
    return out


def measure_export(export_dir: str, repeats: int) -> dict:
    """Per-tensor and total coding figures of an exported model, and its TFLite latency."""
    from cdl_tf.coding import QuantizedTensor, read

    coded = read(os.path.join(export_dir, "weights.cdlz"))
    tensors = {}
    for name, t in coded.items():
        if isinstance(t, QuantizedTensor) and t.indices.size:
            tensors[name] = measure_tensor(t.indices.ravel(), t.lo, t.hi, repeats=repeats)
    n = sum(r["n"] for r in tensors.values())
    bound = sum(r["n"] * r["entropy_bits"] for r in tensors.values())
    totals = {
        "quantized_weights": n,
        "entropy_bits_per_weight": bound / n,
        "file_bytes": coded.total_bytes,
        "header_bytes": coded.header_bytes,
    }
    for coder in ("ans", "huffman"):
        bits = sum(r[coder]["bits_per_value"] * r["n"] for r in tensors.values())
        totals[coder] = {"ratio": bits / bound, "bits_per_weight": bits / n}
    return {
        "export_dir": os.path.abspath(export_dir),
        "tensors": tensors,
        "totals": totals,
        "tflite_latency": {f"batch_{b}": tflite_latency(export_dir, b) for b in (1, 64)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "coding.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--export_dirs", default="", help="Comma-separated cdl-export output directories.")
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

    models = []
    for export_dir in filter(None, args.export_dirs.split(",")):
        m = measure_export(export_dir, args.repeats)
        models.append(m)
        t, lat = m["totals"], m["tflite_latency"]
        print(f"{export_dir}: {t['quantized_weights']} weights, H {t['entropy_bits_per_weight']:.3f} b/w, "
              f"ANS ratio {t['ans']['ratio']:.4f}, Huffman ratio {t['huffman']['ratio']:.3f}, "
              f"file {t['file_bytes']} B (header {t['header_bytes']} B), TFLite int8/float latency "
              f"{lat['batch_1']['int8_vs_float']:.2f} (batch 1), {lat['batch_64']['int8_vs_float']:.2f} (batch 64)")

    from cdl_tf.io import atomic_write_json

    atomic_write_json(args.out, {
        "seed": args.seed,
        "alphabet": list(ALPHABET),
        "machine": {"python": platform.python_version(), "processor": platform.machine(), "cpus": os.cpu_count()},
        "results": rows,
        "models": models,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
