"""Results of the compression benchmark (``cdl-bench``): one row per point, the results files.

A point is a method and its settings (`Point`). Methods:

- ``float``: the float model (size: float32 weights);
- ``tfmot8``: TF-MOT's default 8-bit QAT, converted to TFLite int8;
- ``ptq8``: post-training int8 of the float run's model (TFLite converter, representative dataset);
- ``ste``: uniform QAT at a bit width, no rate terms (mode ``ste``, lambdas 0);
- ``cdl``, ``rcdl``: a bit width, ``lambda_w`` and ``lambda_a``.

A point's row (`result_row`) comes from its run directory's ``metrics.json`` and export report
(`cdl_tf.export_report`). CDL and ``ste`` points are sized by their ``.cdlz`` file (ANS-coded
indices plus float tensors) and scored by their int8 TFLite model; ``tfmot8`` and ``ptq8`` by
their int8 TFLite tensors coded the same way. The compression ratio divides the float model's
float32 size (`float32_bytes`) by the coded size.

Rows of one point under several seeds share a ``group``; ``results["summary"]`` holds their
means and spreads (`cdl_tf.aggregate`), which the plots draw.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from cdl_tf import data as cdl_data
from cdl_tf import models as cdl_models
from cdl_tf.aggregate import summarize
from cdl_tf.export_report import ExportReport
from cdl_tf.io import atomic_write_bytes, atomic_write_json
from cdl_tf.plots import KB, plot_results, published_points
from cdl_tf.results_markdown import markdown

METHODS = ("float", "tfmot8", "ptq8", "ste", "cdl", "rcdl", "epr")
FLOAT_BITS = 32
INT8_BITS = 8


class BenchmarkError(ValueError):
    """A sweep or the runs given to the benchmark are malformed, or a run directory does not fit its point."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the benchmark; bits are ``None`` for the float and 8-bit baselines, ``seed``
    ``None`` for the base config's seed."""
    method: str
    weight_bits: Optional[int] = None
    activation_bits: Optional[int] = None
    lambda_w: float = 0.0
    lambda_a: float = 0.0
    seed: Optional[int] = None

    @property
    def group(self) -> str:
        """Name of the point whatever its seed, e.g. ``cdl_w4a4_lw0.02_la0.005``."""
        if self.method in ("float", "tfmot8", "ptq8"):
            return self.method
        name = f"{self.method}_w{self.weight_bits}a{self.activation_bits}"
        if self.method == "ste":
            return name
        if self.method == "epr":  # weights only: activations are calibrated 8-bit at export
            return f"epr_w{self.weight_bits}_lw{self.lambda_w:g}"
        return f"{name}_lw{self.lambda_w:g}_la{self.lambda_a:g}"

    @property
    def name(self) -> str:
        """Directory name of the point: its group, then ``_seed<n>`` if it names a seed."""
        return self.group if self.seed is None else f"{self.group}_seed{self.seed}"


def float32_bytes(config) -> int:
    """Size of the float model of ``config`` stored as float32: the reference of compression ratios."""
    info = cdl_data.dataset_info(config.dataset)
    model = cdl_models.get_model(config.model, info.input_shape, info.num_classes)
    return 4 * int(sum(np.prod(w.shape) for w in model.weights))


def _read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def result_row(point: Point, workdir: str, reference_bytes: int) -> Dict[str, Any]:
    """The results-table row of a finished point (from its metrics.json and export report)."""
    metrics = _read_json(os.path.join(workdir, "metrics.json"))
    report = ExportReport.read(os.path.join(workdir, "export"))
    row: Dict[str, Any] = {
        "method": point.method, "point": point.name, "workdir": os.path.abspath(workdir),
        "seed": _read_json(os.path.join(workdir, "config.json"))["seed"],
        "weight_bits": point.weight_bits, "activation_bits": point.activation_bits,
        "lambda_w": point.lambda_w if point.method in ("cdl", "rcdl", "epr") else None,
        "lambda_a": point.lambda_a if point.method in ("cdl", "rcdl") else None,
        "keras_accuracy": metrics["test_accuracy"], "train_time_s": metrics.get("train_time_s"),
    }
    if point.method == "float":
        row.update(accuracy=metrics["test_accuracy"], accuracy_source="keras_float", coded_bytes=reference_bytes,
                   bits_per_weight=float(FLOAT_BITS), bits_per_weight_total=float(FLOAT_BITS),
                   bits_per_activation=float(FLOAT_BITS), activation_bits_kind="nominal", tflite_int8_bytes=None)
    else:
        report.require("accuracy", "bits_per_weight", "bytes.cdlz_ans", "bytes.tflite_int8")
        bits = report.bits_per_weight
        row.update(accuracy=report.accuracy.tflite_int8, accuracy_source="tflite_int8",
                   coded_bytes=report.bytes.cdlz_ans, bits_per_weight=bits.ans_payload,
                   bits_per_weight_total=bits.cdlz_ans_total, tflite_int8_bytes=report.bytes.tflite_int8)
        if point.method in ("tfmot8", "ptq8"):
            row.update(bits_per_activation=float(INT8_BITS), activation_bits_kind="nominal")
        else:
            row.update(first_layer_bits=metrics["cdl"]["first_layer_bits"] or point.weight_bits,
                       last_layer_bits=metrics["cdl"]["last_layer_bits"] or point.weight_bits)
            if metrics["cdl"].get("quantize_activations", True):
                row.update(bits_per_activation=metrics["bits_per_activation"], activation_bits_kind="entropy")
            else:  # weights-only CDL: the int8 TFLite model's activations are calibrated 8-bit
                row.update(bits_per_activation=float(INT8_BITS), activation_bits_kind="nominal", activation_bits=INT8_BITS)
    row.update(
        error=1.0 - row["accuracy"], coded_kb=row["coded_bytes"] / KB, float32_bytes=reference_bytes,
        compression_ratio=reference_bytes / row["coded_bytes"],
    )
    return row


def write_results(config, rows: List[Dict[str, Any]], reference: int, outdir: str, **extra) -> Dict[str, Any]:
    """Write ``results.json``, ``results.md`` and the plots of ``rows`` (points of the base
    ``config``, whose float model is ``reference`` bytes) into ``outdir``; returns the results.

    ``extra``: further top-level fields of the results (the sweep, or the tabulated runs)."""
    results = {
        "model": config.model, "dataset": config.dataset, "epochs": config.epochs, "seed": config.seed,
        "train_subset": config.train_subset, "test_subset": config.test_subset,
        "float32_bytes": reference, "kb_bytes": KB, **extra,
        "config": json.loads(config.to_json()),
        "rows": rows,
        "summary": summarize(rows),
        "published": published_points(config.model),
    }
    results["plots"] = plot_results(results, outdir)
    atomic_write_json(os.path.join(outdir, "results.json"), results)
    atomic_write_bytes(os.path.join(outdir, "results.md"), markdown(results).encode())
    return results
