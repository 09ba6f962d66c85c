"""Compression benchmark: CDL and R-CDL sweeps against float, 8-bit and uniform-QAT baselines.

All points share the base config's model, data and schedule, and its seed unless the sweep
names seeds: then every point runs once per seed. Methods:

- ``float``: the float model (size: float32 weights);
- ``tfmot8``: TF-MOT's default 8-bit QAT, converted to TFLite int8;
- ``ptq8``: post-training int8 of the float run's model (TFLite converter, representative dataset);
- ``ste``: uniform QAT at each bit width, no rate terms (mode ``ste``, lambdas 0);
- ``cdl``, ``rcdl``: every bit width x ``lambda_w`` x ``lambda_a``.

Each point is a run directory under the output directory, named from its settings
(``float``, ``ptq8``, ``ste_w4a4``, ``cdl_w4a4_lw0.02_la0.005``, ``cdl_w4a4_lw0.02_la0.005_seed1``, ...),
holding ``metrics.json`` and ``export/export.json``. A point whose directory holds both is read, not rerun, so a sweep
resumes where it stopped and runs made with ``cdl-train`` + ``cdl-export`` are reused.

Sizes: CDL and ``ste`` points go through `tflite_export.export.export_workdir`; their size is
the ``.cdlz`` file (ANS-coded indices plus float tensors) and their accuracy that of the int8
TFLite model. The int8 weight tensors of the ``tfmot8`` and ``ptq8`` TFLite models are coded
the same way, each with its own PMF, plus their other constant tensors as float32.

Rows of one point under several seeds share a ``group``; ``results["summary"]`` holds their
means and spreads (`cdl_tf.aggregate`), which the plots draw.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cdl_tf.aggregate import paired_difference, summarize
from cdl_tf.plots import KB, plot_results, published_points
from cdl_tf.run_config import read_run_config, with_later_fields

METHODS = ("float", "tfmot8", "ptq8", "ste", "cdl", "rcdl")
FLOAT_BITS = 32
INT8_BITS = 8
_IGNORED_CONFIG_FIELDS = ("verbose", "data_dir")


class BenchmarkError(ValueError):
    """A sweep is malformed, or an existing run directory does not match its point."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep; bits are ``None`` for the float and 8-bit baselines, ``seed`` ``None``
    for the base config's seed."""

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
        return f"{name}_lw{self.lambda_w:g}_la{self.lambda_a:g}"

    @property
    def name(self) -> str:
        """Directory name of the point: its group, then ``_seed<n>`` if it names a seed."""
        return self.group if self.seed is None else f"{self.group}_seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Bit widths and rate weights swept for ``cdl``/``rcdl``; ``ste`` runs at every bit width.

    ``activation_bits=0`` quantizes activations at the weights' bit width. ``seeds``: every
    point runs once per seed (empty: once, with the base config's seed).
    """

    bits: Tuple[int, ...] = (2, 4, 8)
    lambda_w: Tuple[float, ...] = (0.005, 0.02, 0.05)
    lambda_a: Tuple[float, ...] = (0.005,)
    activation_bits: int = 0
    methods: Tuple[str, ...] = METHODS
    seeds: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise BenchmarkError(f"unknown methods {unknown}; known: {METHODS}")
        if "ptq8" in self.methods and "float" not in self.methods:
            raise BenchmarkError("ptq8 quantizes the float run's model: add 'float' to the methods")
        for field in ("bits", "lambda_w", "lambda_a"):
            if not getattr(self, field):
                raise BenchmarkError(f"sweep.{field} is empty")
        if any(not 1 <= b <= 8 for b in (*self.bits, self.activation_bits or 1)):
            raise BenchmarkError(f"bit widths must be in [1, 8], got {self.bits}, activations {self.activation_bits}")
        if any(v < 0 for v in (*self.lambda_w, *self.lambda_a)):
            raise BenchmarkError("lambdas must be >= 0")
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise BenchmarkError(f"seeds must be distinct and >= 0, got {self.seeds}")

    def points(self) -> List[Point]:
        """Points in run order: baselines first (``ptq8`` after ``float``), then the sweeps; each
        point under every seed in turn."""
        out = [Point(m) for m in ("float", "tfmot8", "ptq8") if m in self.methods]
        for b in self.bits:
            a = self.activation_bits or b
            if "ste" in self.methods:
                out.append(Point("ste", b, a))
            for method in ("cdl", "rcdl"):
                if method in self.methods:
                    out += [Point(method, b, a, lw, la) for lw in self.lambda_w for la in self.lambda_a]
        return [dataclasses.replace(p, seed=s) for p in out for s in (self.seeds or (None,))]


QUICK_SWEEP = Sweep(bits=(4,), lambda_w=(0.01, 0.05), lambda_a=(0.005,))


def quick_config(config, overrides: Optional[Mapping[str, Any]] = None):
    """``config`` reduced to runs of about a minute (8192 training images, 2 epochs), then
    ``overrides`` (flat ``{"a.b": value}``, e.g. the command line's) applied again."""
    c = config.copy_and_resolve_references()
    c.train_subset = min(c.train_subset or 8192, 8192)
    c.test_subset = min(c.test_subset or 2000, 2000)
    c.epochs = min(c.epochs, 2)
    c.rate_warmup_epochs = min(c.rate_warmup_epochs, c.epochs - 1)
    c.bn_reestimate_steps = min(c.bn_reestimate_steps, 10)
    c.optimizer.warmup_epochs = 0
    c.update_from_flattened_dict(dict(overrides or {}))
    return c


def point_config(config, point: Point):
    """The training config of ``point`` (a copy of the base ``config``)."""
    c = config.copy_and_resolve_references()
    c.init_from = ""
    c.mode = "float" if point.method == "ptq8" else point.method
    if point.seed is not None:
        c.seed = point.seed
    if point.weight_bits is not None:
        c.cdl.weight_bits = point.weight_bits
        c.cdl.activation_bits = point.activation_bits
        c.cdl.lambda_w = point.lambda_w
        c.cdl.lambda_a = point.lambda_a
    return c


def _read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _check_existing(config, workdir: str) -> None:
    """Raise unless the run in ``workdir`` (if any) was made with ``config``.

    The saved config reads with `with_later_fields`; other fields absent from either config are not compared.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return
    saved, wanted = with_later_fields(_read_json(path)), json.loads(config.to_json())
    diff = sorted(_diff(saved, wanted))
    if diff:
        raise BenchmarkError(f"{workdir} holds a run with another config (fields {diff}); "
                             "delete it or choose another --outdir")


def _diff(a: Dict[str, Any], b: Dict[str, Any], prefix: str = "") -> List[str]:
    out = []
    for key in set(a) & set(b):
        if not prefix and key in _IGNORED_CONFIG_FIELDS:
            continue
        x, y = a[key], b[key]
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(prefix + key)
    return out


def _done(workdir: str) -> bool:
    return all(os.path.isfile(os.path.join(workdir, p)) for p in ("metrics.json", os.path.join("export", "export.json")))


# -- baselines converted by the TFLite converter -------------------------------------------

def convert_int8(model, input_shape: Sequence[int], representative: Optional[List[np.ndarray]] = None) -> bytes:
    """TFLite int8 model of a Keras model: a TF-MOT QAT model as is, a float one calibrated on
    ``representative`` batches (post-training full-integer quantization). Inputs and outputs stay float."""
    import tensorflow as tf

    module = tf.Module()
    module.serve = tf.function(lambda x: model(x, training=False),
                               input_signature=[tf.TensorSpec([None, *input_shape], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is not None:
        converter.representative_dataset = lambda: ([x[i : i + 1]] for x in representative for i in range(len(x)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def tflite_coded_tensors(content: bytes) -> Dict[str, object]:
    """The constant tensors of a TFLite model as ``.cdlz`` tensors.

    int8 tensors become `QuantizedTensor` indices (scale ``q``; per-channel scales moved
    to the last axis); quantized int32 biases and float constants become float32 arrays.
    Unquantized integer constants (shapes, axes) are graph structure and are left out.
    """
    from tensorflow.lite.tools import flatbuffer_utils
    from tensorflow.lite.python import schema_py_generated as schema

    from cdl_tf.coding import QuantizedTensor

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    out: Dict[str, object] = {}
    for sg, subgraph in enumerate(model.subgraphs):
        for t in subgraph.tensors:
            data = model.buffers[t.buffer].data if t.buffer else None
            if data is None or len(data) == 0:
                continue
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            name = name if sg == 0 else f"subgraph{sg}/{name}"
            shape = tuple(int(d) for d in t.shape) if t.shape is not None else ()
            quant = t.quantization
            scales = None if quant is None or quant.scale is None else np.asarray(quant.scale, np.float32)
            if t.type == schema.TensorType.INT8:
                if scales is None:
                    raise BenchmarkError(f"int8 tensor {name!r} has no quantization scale")
                idx = np.frombuffer(bytes(data), np.int8).reshape(shape).astype(np.int32)
                if len(scales) > 1:
                    idx = np.moveaxis(idx, quant.quantizedDimension, -1)
                    out[name] = QuantizedTensor(idx, -128, 127, 1.0, scales)
                else:
                    out[name] = QuantizedTensor(idx, -128, 127, float(scales[0]))
            elif t.type == schema.TensorType.FLOAT32:
                out[name] = np.frombuffer(bytes(data), np.float32).reshape(shape).copy()
            elif t.type == schema.TensorType.INT32 and scales is not None:
                values = np.frombuffer(bytes(data), np.int32).reshape(shape).astype(np.float32)
                if len(scales) > 1:
                    values = np.moveaxis(values, quant.quantizedDimension, -1)
                out[name] = values * scales
    return out


def code_tflite(content: bytes, out: str, x_test: np.ndarray, y_test: np.ndarray) -> Dict[str, Any]:
    """Write ``model.tflite`` and its ANS-coded constants ``weights.cdlz`` into ``out``; returns
    the sizes and TFLite accuracy in the layout of `export_workdir`'s report."""
    from cdl_tf import coding
    from cdl_tf.io import atomic_write_bytes
    from cdl_tf.coded_model import entropy_bound_bits
    from tflite_export.convert import TFLiteModel

    tensors = tflite_coded_tensors(content)
    coded = coding.encode_bytes(tensors, coder="ans")
    decoded = coding.decode_bytes(coded)
    quantized = [n for n, t in tensors.items() if isinstance(t, coding.QuantizedTensor)]
    if not quantized:
        raise BenchmarkError("the TFLite model has no int8 weight tensors")
    n_weights = sum(tensors[n].indices.size for n in quantized)
    float_values = sum(np.asarray(t).size for n, t in tensors.items() if n not in quantized)
    os.makedirs(out, exist_ok=True)
    atomic_write_bytes(os.path.join(out, "model.tflite"), content)
    atomic_write_bytes(os.path.join(out, "weights.cdlz"), coded)
    pred = TFLiteModel(content).predict(x_test, batch_size=500).argmax(1)
    return {
        "quantized_weights": int(n_weights),
        "float_values": int(float_values),
        "tensors": {n: list(np.shape(tensors[n].indices if n in quantized else tensors[n])) for n in tensors},
        "bytes": {
            "tflite_int8": len(content), "cdlz_ans": len(coded),
            "entropy_bound_quantized": entropy_bound_bits(tensors) / 8,
            "float32_weights": 4 * (n_weights + float_values),
        },
        "bits_per_weight": {
            "entropy": entropy_bound_bits(tensors) / n_weights,
            "ans_payload": 8 * decoded.index_bytes / n_weights,
            "cdlz_ans_total": 8 * len(coded) / n_weights,
        },
        "test_examples": int(len(y_test)),
        "accuracy": {"tflite_int8": float((pred == y_test).mean())},
    }


def _load_model(config, workdir: str):
    """The trained model of a float or ``tfmot8`` run (TF-MOT models do not reload from ``.keras``
    with `load_model`: the model is rebuilt from ``config`` and its weights loaded)."""
    from cdl_tf.training import build_model, validate_config

    model = build_model(config, validate_config(config))
    model.load_weights(os.path.join(workdir, "model.keras"))
    return model


def _code_int8(config, content: bytes, workdir: str, convert_time: float, **extra) -> Dict[str, Any]:
    """Code and evaluate an int8 TFLite model into ``workdir/export``; returns ``export.json``."""
    from cdl_tf.io import atomic_write_json
    from tflite_export.export import eval_arrays

    x_test, y_test = eval_arrays(config)
    report = code_tflite(content, os.path.join(workdir, "export"), x_test, y_test)
    report.update(workdir=os.path.abspath(workdir), convert_time_s=convert_time, **extra)
    atomic_write_json(os.path.join(workdir, "export", "export.json"), report)
    return report


def _run_tfmot8(config, workdir: str) -> None:
    from cdl_tf import data as cdl_data
    from cdl_tf.training import train_and_evaluate

    if not os.path.isfile(os.path.join(workdir, "metrics.json")):
        train_and_evaluate(config, workdir)
    start = time.time()
    content = convert_int8(_load_model(config, workdir), cdl_data.dataset_info(config.dataset).input_shape)
    _code_int8(config, content, workdir, time.time() - start)


def _run_ptq8(config, workdir: str, float_workdir: str) -> None:
    """Post-training int8 of the float run's model; ``metrics.json`` holds its TFLite accuracy."""
    from cdl_tf import data as cdl_data
    from cdl_tf.io import atomic_write_json
    from tflite_export.export import calibration_data

    if not os.path.isfile(os.path.join(float_workdir, "model.keras")):
        raise BenchmarkError(f"ptq8 needs the float run's model: {float_workdir}/model.keras is missing")
    os.makedirs(workdir, exist_ok=True)
    atomic_write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
    start = time.time()
    content = convert_int8(_load_model(config, float_workdir), cdl_data.dataset_info(config.dataset).input_shape,
                           calibration_data(config))
    convert_time = time.time() - start
    source = os.path.abspath(float_workdir)
    accuracy = _code_int8(config, content, workdir, convert_time, source=source)["accuracy"]["tflite_int8"]
    atomic_write_json(os.path.join(workdir, "metrics.json"), {
        "mode": "ptq8", "model": config.model, "dataset": config.dataset, "test_accuracy": accuracy,
        "test_error": 1.0 - accuracy, "train_time_s": convert_time, "source": source,
    })


def _run_float(config, workdir: str, reference_bytes: int) -> None:
    from cdl_tf.io import atomic_write_json
    from cdl_tf.training import train_and_evaluate

    if not os.path.isfile(os.path.join(workdir, "metrics.json")):
        train_and_evaluate(config, workdir)
    os.makedirs(os.path.join(workdir, "export"), exist_ok=True)
    atomic_write_json(os.path.join(workdir, "export", "export.json"),
                      {"workdir": os.path.abspath(workdir), "bytes": {"float32_weights": reference_bytes}})


def _run_cdl(config, workdir: str) -> None:
    from cdl_tf.training import train_and_evaluate
    from tflite_export.export import export_workdir

    if not os.path.isfile(os.path.join(workdir, "metrics.json")):
        train_and_evaluate(config, workdir)
    export_workdir(workdir, os.path.join(workdir, "export"))


def run_point(config, point: Point, outdir: str, reference_bytes: Optional[int] = None) -> Dict[str, Any]:
    """Run ``point`` of the base ``config`` in ``outdir/point.name`` unless done; returns its row.

    ``reference_bytes``: the float32 size compression ratios divide (default `float32_bytes`).
    """
    reference_bytes = reference_bytes or float32_bytes(config)
    pc = point_config(config, point)
    workdir = os.path.join(outdir, point.name)
    _check_existing(pc, workdir)
    if not _done(workdir):
        if point.method == "float":
            _run_float(pc, workdir, reference_bytes)
        elif point.method == "tfmot8":
            _run_tfmot8(pc, workdir)
        elif point.method == "ptq8":
            _run_ptq8(pc, workdir, os.path.join(outdir, Point("float", seed=point.seed).name))
        else:
            _run_cdl(pc, workdir)
    return {**result_row(point, workdir, reference_bytes), "group": point.group}


def float32_bytes(config) -> int:
    """Size of the float model of ``config`` stored as float32: the reference of compression ratios."""
    from cdl_tf import data as cdl_data
    from cdl_tf import models as cdl_models

    info = cdl_data.dataset_info(config.dataset)
    model = cdl_models.get_model(config.model, info.input_shape, info.num_classes)
    return 4 * int(sum(np.prod(w.shape) for w in model.weights))


def result_row(point: Point, workdir: str, reference_bytes: int) -> Dict[str, Any]:
    """The results-table row of a finished point (from its metrics.json and export.json)."""
    metrics = _read_json(os.path.join(workdir, "metrics.json"))
    export = _read_json(os.path.join(workdir, "export", "export.json"))
    row: Dict[str, Any] = {
        "method": point.method, "point": point.name, "workdir": os.path.abspath(workdir),
        "seed": _read_json(os.path.join(workdir, "config.json"))["seed"],
        "weight_bits": point.weight_bits, "activation_bits": point.activation_bits,
        "lambda_w": point.lambda_w if point.method in ("cdl", "rcdl") else None,
        "lambda_a": point.lambda_a if point.method in ("cdl", "rcdl") else None,
        "keras_accuracy": metrics["test_accuracy"], "train_time_s": metrics.get("train_time_s"),
    }
    if point.method == "float":
        row.update(accuracy=metrics["test_accuracy"], accuracy_source="keras_float", coded_bytes=reference_bytes,
                   bits_per_weight=float(FLOAT_BITS), bits_per_weight_total=float(FLOAT_BITS),
                   bits_per_activation=float(FLOAT_BITS), activation_bits_kind="nominal", tflite_int8_bytes=None)
    else:
        bits = export["bits_per_weight"]
        row.update(accuracy=export["accuracy"]["tflite_int8"], accuracy_source="tflite_int8",
                   coded_bytes=export["bytes"]["cdlz_ans"], bits_per_weight=bits["ans_payload"],
                   bits_per_weight_total=bits["cdlz_ans_total"], tflite_int8_bytes=export["bytes"]["tflite_int8"])
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


def run_benchmark(config, sweep: Sweep, outdir: str) -> Dict[str, Any]:
    """Run (or resume) every point of ``sweep``; write ``results.json``, ``results.md`` and plots.

    After each point its result and a progress bar over the points (with the sweep's ETA) are printed.
    """
    import tf_keras as keras

    from cdl_tf.training import validate_config

    validate_config(config)
    os.makedirs(outdir, exist_ok=True)
    reference = float32_bytes(config)
    rows = []
    points = sweep.points()
    progress = keras.utils.Progbar(len(points), unit_name="point")
    for done, point in enumerate(points, 1):
        rows.append(run_point(config, point, outdir, reference))
        print(f"[cdl-bench] {point.name}: accuracy {rows[-1]['accuracy']:.4f}, {rows[-1]['coded_kb']:.2f} KB",
              flush=True)
        progress.update(done)
        if done < len(points):
            print(flush=True)  # the bar ends its line only when finished; the next point starts below it
    sweep_fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(sweep).items()}
    return _write_results(config, rows, reference, outdir, sweep=sweep_fields)


def _write_results(config, rows: List[Dict[str, Any]], reference: int, outdir: str, **extra) -> Dict[str, Any]:
    """Write ``results.json``, ``results.md`` and the plots of ``rows``; returns the results."""
    from cdl_tf.io import atomic_write_bytes, atomic_write_json

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


def lineage(workdir: str) -> Dict[str, Any]:
    """What a run's results depend on but its seed: its config (`with_later_fields`) without
    ``seed`` (and the fields that change nothing), where the runs it starts from
    (``init_from``) or learns from (``distill.teacher``) are replaced by their own lineages if
    their directories still exist.

    Runs of one recipe under other seeds, each continuing its own seed's parent, share it.
    """
    config = with_later_fields(_read_json(os.path.join(workdir, "config.json")))
    for key in ("seed", *_IGNORED_CONFIG_FIELDS):
        config.pop(key, None)
    for parent, key in ((config, "init_from"), (config.get("distill") or {}, "teacher")):
        path = parent.get(key)
        if path and os.path.isfile(os.path.join(path, "config.json")):
            parent[key] = lineage(path)
    return config


def _lineage_group(workdir: str) -> str:
    digest = hashlib.sha256(json.dumps(lineage(workdir), sort_keys=True).encode()).hexdigest()
    return f"lineage-{digest[:16]}"


def tabulate_runs(workdirs: Sequence[str], outdir: str) -> Dict[str, Any]:
    """Results of finished ``cdl-train`` runs of one model, as a sweep's.

    Each run is exported as its method requires (CDL runs through `export_workdir`,
    tfmot8 runs converted and coded) unless it already was; a float run among them
    also gives the post-training int8 point, written to ``outdir/ptq8_<float run's name>``.
    Runs with the same `lineage` form one group of the summary.
    """
    from cdl_tf.training import validate_config

    if not workdirs:
        raise BenchmarkError("no run directories given")
    os.makedirs(outdir, exist_ok=True)
    rows, configs = [], []
    for workdir in workdirs:
        config = read_run_config(workdir)
        validate_config(config)
        if configs and (config.model, config.dataset) != (configs[0].model, configs[0].dataset):
            raise BenchmarkError(f"{workdir} is a {config.model}/{config.dataset} run; the others are "
                                 f"{configs[0].model}/{configs[0].dataset}")
        configs.append(config)
        bits = {} if config.mode in ("float", "tfmot8") else {
            "weight_bits": config.cdl.weight_bits, "activation_bits": config.cdl.activation_bits}
        lambdas = {"lambda_w": config.cdl.lambda_w, "lambda_a": config.cdl.lambda_a} if config.mode in (
            "cdl", "rcdl") else {}
        point = Point(config.mode, **bits, **lambdas)
        reference = float32_bytes(config)
        if not _done(workdir):
            {"float": lambda: _run_float(config, workdir, reference), "tfmot8": lambda: _run_tfmot8(config, workdir)
             }.get(config.mode, lambda: _run_cdl(config, workdir))()
        group = _lineage_group(workdir)
        rows.append({**result_row(point, workdir, reference), "group": group})
        if config.mode == "float":
            ptq = os.path.join(outdir, f"ptq8_{os.path.basename(os.path.normpath(workdir))}")
            if not _done(ptq):
                _run_ptq8(config, ptq, workdir)
            rows.append({**result_row(Point("ptq8"), ptq, reference), "group": f"ptq8-{group}"})
        print(f"[cdl-bench] {workdir}: accuracy {rows[-1]['accuracy']:.4f}, {rows[-1]['coded_kb']:.2f} KB", flush=True)
    return _write_results(configs[0], rows, float32_bytes(configs[0]), outdir,
                          runs=[os.path.abspath(w) for w in workdirs])


def compare_runs(pairs: Sequence[Tuple[str, str]], outdir: str) -> Dict[str, Any]:
    """Paired comparison of exported runs ``(A, B)``: their int8 TFLite models (``export/model.tflite``)
    scored on the same test examples, per pair and pooled over all pairs (`aggregate.paired_difference`).

    Writes ``outdir/paired.json`` and returns its contents.
    """
    from cdl_tf.io import atomic_write_json
    from tflite_export.convert import TFLiteModel
    from tflite_export.export import eval_arrays

    if not pairs:
        raise BenchmarkError("no pair of runs given")
    configs = {}
    for workdir in {w for pair in pairs for w in pair}:
        if not os.path.isfile(os.path.join(workdir, "export", "model.tflite")):
            raise BenchmarkError(f"{workdir} has no export/model.tflite; export it first "
                                 f"(cdl-export --workdir={workdir}, or cdl-bench --runs={workdir})")
        configs[workdir] = read_run_config(workdir)
    test_sets = {(c.dataset, c.test_subset) for c in configs.values()}
    if len(test_sets) != 1:
        raise BenchmarkError(f"the runs are scored on different test sets {sorted(test_sets)}; a paired "
                             "comparison needs one")
    x, y = eval_arrays(next(iter(configs.values())))
    correct = {}
    for workdir in configs:
        with open(os.path.join(workdir, "export", "model.tflite"), "rb") as f:
            correct[workdir] = TFLiteModel(f.read()).predict(x, batch_size=500).argmax(1) == y
    results = {
        "pairs": [{"a": os.path.abspath(a), "b": os.path.abspath(b), **paired_difference([correct[a]], [correct[b]])}
                  for a, b in pairs],
        "pooled": paired_difference([correct[a] for a, _ in pairs], [correct[b] for _, b in pairs]),
    }
    os.makedirs(outdir, exist_ok=True)
    atomic_write_json(os.path.join(outdir, "paired.json"), results)
    return results


def paired_markdown(results: Dict[str, Any]) -> str:
    """`compare_runs` results as a Markdown table (accuracies and differences in points)."""
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
        lam = f"{r['lambda_w']:g}/{r['lambda_a']:g}" if r["lambda_w"] is not None else "-"
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
