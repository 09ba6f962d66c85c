"""The benchmark's float and 8-bit baselines, each exported with an `ExportReport`.

- ``float``: the float model, sized by its float32 weights;
- ``tfmot8``: TF-MOT's default 8-bit QAT, converted to TFLite int8;
- ``ptq8``: post-training int8 of the float run's model (TFLite converter, representative dataset).

The int8 weight tensors of the ``tfmot8`` and ``ptq8`` TFLite models are ANS-coded into
``weights.cdlz`` like a CDL export's, each with its own PMF, plus their other constant tensors as
float32; their report gives the sizes and the TFLite model's test accuracy.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from cdl_tf import coding
from cdl_tf import data as cdl_data
from cdl_tf.coded_model import entropy_bound_bits
from cdl_tf.coding import QuantizedTensor
from cdl_tf.export_report import BitsPerWeight, ExportAccuracy, ExportBytes, ExportReport
from cdl_tf.io import atomic_write_bytes, atomic_write_json
from cdl_tf.results import BenchmarkError
from cdl_tf.training import build_model, train_and_evaluate, validate_config
from tflite_export.convert import TFLiteModel
from tflite_export.export import calibration_data, eval_arrays


def convert_int8(model, input_shape: Sequence[int], representative: Optional[List[np.ndarray]] = None) -> bytes:
    """TFLite int8 model of a Keras model: a TF-MOT QAT model as is, a float one calibrated on
    ``representative`` batches (post-training full-integer quantization). Inputs and outputs stay float."""
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


def code_tflite(content: bytes, workdir: str, x_test: np.ndarray, y_test: np.ndarray) -> ExportReport:
    """Write ``model.tflite`` and its ANS-coded constants ``weights.cdlz`` into ``workdir/export``;
    returns the report of their sizes and the TFLite model's accuracy on ``x_test`` (not written)."""
    tensors = tflite_coded_tensors(content)
    coded = coding.encode_bytes(tensors, coder="ans")
    decoded = coding.decode_bytes(coded)
    quantized = [n for n, t in tensors.items() if isinstance(t, coding.QuantizedTensor)]
    if not quantized:
        raise BenchmarkError("the TFLite model has no int8 weight tensors")
    n_weights = sum(tensors[n].indices.size for n in quantized)
    float_values = sum(np.asarray(t).size for n, t in tensors.items() if n not in quantized)
    out = os.path.join(workdir, "export")
    os.makedirs(out, exist_ok=True)
    atomic_write_bytes(os.path.join(out, "model.tflite"), content)
    atomic_write_bytes(os.path.join(out, "weights.cdlz"), coded)
    pred = TFLiteModel(content).predict(x_test, batch_size=500).argmax(1)
    bound = entropy_bound_bits(tensors)
    return ExportReport(
        workdir=os.path.abspath(workdir),
        quantized_weights=int(n_weights),
        float_values=int(float_values),
        tensors={n: tuple(np.shape(tensors[n].indices if n in quantized else tensors[n])) for n in tensors},
        bytes=ExportBytes(tflite_int8=len(content), cdlz_ans=len(coded), entropy_bound_quantized=bound / 8,
                          float32_weights=4 * (n_weights + float_values)),
        bits_per_weight=BitsPerWeight(entropy=bound / n_weights, ans_payload=8 * decoded.index_bytes / n_weights,
                                      cdlz_ans_total=8 * len(coded) / n_weights),
        test_examples=int(len(y_test)),
        accuracy=ExportAccuracy(tflite_int8=float((pred == y_test).mean())),
    )


def _load_model(config, workdir: str):
    """The trained model of a float or ``tfmot8`` run (TF-MOT models do not reload from ``.keras``
    with `load_model`: the model is rebuilt from ``config`` and its weights loaded)."""
    model = build_model(config, validate_config(config))
    model.load_weights(os.path.join(workdir, "model.keras"))
    return model


def _code_int8(config, content: bytes, workdir: str, convert_time: float,
               source: Optional[str] = None) -> ExportReport:
    """Code and evaluate an int8 TFLite model into ``workdir/export``; writes and returns its report."""
    x_test, y_test = eval_arrays(config)
    report = dataclasses.replace(code_tflite(content, workdir, x_test, y_test), convert_time_s=convert_time,
                                 source=source)
    report.write(os.path.join(workdir, "export"))
    return report


def run_tfmot8(config, workdir: str) -> None:
    """Train the ``tfmot8`` run of ``config`` in ``workdir`` unless done, then convert and code it."""
    if not os.path.isfile(os.path.join(workdir, "metrics.json")):
        train_and_evaluate(config, workdir)
    start = time.time()
    content = convert_int8(_load_model(config, workdir), cdl_data.dataset_info(config.dataset).input_shape)
    _code_int8(config, content, workdir, time.time() - start)


def run_ptq8(config, workdir: str, float_workdir: str) -> None:
    """Post-training int8 of the float run's model; ``metrics.json`` holds its TFLite accuracy."""
    if not os.path.isfile(os.path.join(float_workdir, "model.keras")):
        raise BenchmarkError(f"ptq8 needs the float run's model: {float_workdir}/model.keras is missing")
    os.makedirs(workdir, exist_ok=True)
    atomic_write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
    start = time.time()
    content = convert_int8(_load_model(config, float_workdir), cdl_data.dataset_info(config.dataset).input_shape,
                           calibration_data(config))
    convert_time = time.time() - start
    source = os.path.abspath(float_workdir)
    accuracy = _code_int8(config, content, workdir, convert_time, source=source).accuracy.tflite_int8
    atomic_write_json(os.path.join(workdir, "metrics.json"), {
        "mode": "ptq8", "model": config.model, "dataset": config.dataset, "test_accuracy": accuracy,
        "test_error": 1.0 - accuracy, "train_time_s": convert_time, "source": source,
    })


def run_float(config, workdir: str, reference_bytes: int) -> None:
    """Train the float run of ``config`` in ``workdir`` unless done; its report holds its float32
    size ``reference_bytes`` alone."""
    if not os.path.isfile(os.path.join(workdir, "metrics.json")):
        train_and_evaluate(config, workdir)
    export = os.path.join(workdir, "export")
    os.makedirs(export, exist_ok=True)
    ExportReport(workdir=os.path.abspath(workdir), bytes=ExportBytes(float32_weights=reference_bytes)).write(export)
