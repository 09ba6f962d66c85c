"""Benchmark results as Markdown: the table of a sweep's (or tabulated runs') rows, and that of
paired comparisons."""
from __future__ import annotations

import os
from typing import Any, Dict

from cdl_tf.plots import KB


def paired_markdown(results: Dict[str, Any]) -> str:
    """The results of paired comparisons (``cdl-bench --paired``) as a Markdown table (accuracies and
    differences in points)."""
    lines = ["| A | B | n | accuracy A | accuracy B | only A right | only B right | A - B (points) |",
             "|---|---|---|---|---|---|---|---|"]
    rows = [(os.path.basename(p["a"]), os.path.basename(p["b"]), p) for p in results["pairs"]]
    for a, b, p in rows + [("pooled", "", results["pooled"])]:
        lines.append(f"| {a} | {b} | {p['n']} | {100 * p['accuracy_a']:.2f}% | {100 * p['accuracy_b']:.2f}% | "
                     f"{p['only_a']} | {p['only_b']} | {100 * p['difference']:+.2f} ± {100 * p['se']:.2f} |")
    return "\n".join(lines)


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _mean_std(entry: Dict[str, Any], field: str, spec: str, scale: float, unit: str) -> str:
    if entry[field] is None:
        return "-"
    return f"{scale * entry[field]:{spec}}{unit} ± {scale * entry[field + '_std']:{spec}}"


def markdown(results: Dict[str, Any]) -> str:
    """The results as Markdown: sweep table, published reference points, plots."""
    subset = results["train_subset"] or "all"
    seeds = sorted({r["seed"] for r in results["rows"] if r.get("seed") is not None}) or [results["seed"]]
    lines = [
        f"# Compression benchmark: {results['model']} on {results['dataset']}",
        "",
        f"{results['epochs']} epochs, seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}, "
        f"training examples: {subset}, "
        f"test examples: {results['test_subset'] or 'all'}. float32 reference: "
        f"{results['float32_bytes'] / KB:.2f} KB (1 KB = {KB} bytes).",
        "",
        "| method | bits (w/a) | lambda (w/a) | accuracy | error | coded KB | bits/weight | bits/act "
        "| compression | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        bits = f"{r['weight_bits']}/{r['activation_bits']}" if r["weight_bits"] else (
            "32/32" if r["method"] == "float" else "8/8")
        edges = (r.get("first_layer_bits"), r.get("last_layer_bits"))
        if r["weight_bits"] and edges != (r["weight_bits"], r["weight_bits"]):
            bits += " ({}/{} first/last)".format(*edges)
        lam = "-" if r["lambda_w"] is None else f"{r['lambda_w']:g}/" + (
            "-" if r["lambda_a"] is None else f"{r['lambda_a']:g}")
        act = _fmt(r["bits_per_activation"], ".3f") + (" (nominal)" if r["activation_bits_kind"] == "nominal" else "")
        lines.append(
            f"| {r['method']} | {bits} | {lam} | {r['accuracy']:.4f} | {100 * r['error']:.2f}% | "
            f"{r['coded_kb']:.2f} | {r['bits_per_weight']:.3f} | {act} | {r['compression_ratio']:.1f}x | "
            f"{_fmt(r['train_time_s'], '.0f')} |"
        )
    lines += [
        "",
        "- accuracy: int8 TFLite model on the test set (float: the Keras float model); error = 1 - accuracy.",
        "- coded KB: the `.cdlz` file, ANS-coded weight indices (each tensor with its own PMF) plus float32 "
        "tensors (biases, steps); for tfmot8/ptq8 the int8 tensors of the TFLite model coded the same way; "
        "float: float32 weights.",
        "- bits (w/a): weight/activation bit width; the first and last layers' weights as noted.",
        "- bits/weight: ANS payload (and live masks) per quantized weight (float: 32). bits/act: measured entropy of the "
        "quantized activations, except where marked nominal (8-bit baselines, and weights-only CDL, whose "
        "int8 model has calibrated 8-bit activations).",
        "- compression: float32 size / coded size. ptq8 train time: calibration and conversion of the "
        "float run's model.",
    ]
    repeated = [g for g in results.get("summary", []) if g["n"] > 1]
    if repeated:
        lines += ["", "Points run under several seeds: mean ± sample standard deviation over the n runs.", "",
                  "| runs | n | seeds | accuracy | error | coded KB | bits/weight | bits/act |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in repeated:
            runs = ", ".join(os.path.basename(os.path.normpath(w)) for w in g["workdirs"])
            cells = [_mean_std(g, field, spec, scale, unit) for field, spec, scale, unit in (
                ("accuracy", ".4f", 1, ""), ("error", ".2f", 100, "%"), ("coded_kb", ".2f", 1, ""),
                ("bits_per_weight", ".3f", 1, ""), ("bits_per_activation", ".3f", 1, ""))]
            lines.append(f"| {runs} | {g['n']} | {', '.join(map(str, g['seeds']))} | " + " | ".join(cells) + " |")
    if results["published"]:
        lines += ["", "Published points (not reproduced here):", "", "| source | model | KB | error |",
                  "|---|---|---|---|"]
        lines += [f"| {p['source']} | {p['label']} | {p['kb']:.2f} | {100 * p['error']:.2f}% |"
                  for p in results["published"]]
    if results["plots"]:
        lines += ["", *[f"![{os.path.splitext(p)[0]}]({p})" for p in results["plots"]]]
    return "\n".join(lines) + "\n"
