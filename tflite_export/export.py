"""Export a trained run: int8 TFLite on the CDL grid, float TFLite, entropy-coded weights.

`export_workdir` (the ``cdl-export`` tool) writes ``model.tflite`` (full integer),
``model_float.tflite``, ``weights.cdlz`` (ANS) and ``export.json`` with sizes, bits per
weight, accuracy of the Keras ``Q_u`` model and of the TFLite model on the test set, and
their top-1 agreement; ``tflite_float`` is the accuracy of ``model_float.tflite`` (the same
weights, activations clipped to their grid ranges but not rounded), which tells what the
activation grids cost. ``kernels=("builtin", "reference")`` also evaluates the int8 model on
those LiteRT kernel sets (``tflite_int8_<kernels>``), whose requantization rounding differs
from the default XNNPACK kernels.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterator, Sequence, TypeVar

import numpy as np
import tf_keras as keras

from cdl_tf import coding
from cdl_tf import data as cdl_data
from cdl_tf.coded_model import apply_coded, coded_tensors, entropy_bound_bits
from cdl_tf.experiment_config import CDL_MODES
from cdl_tf.export_report import BitsPerWeight, ExportAccuracy, ExportBytes, ExportReport, KernelAccuracy
from cdl_tf.io import atomic_write_bytes
from cdl_tf.training import load_run, test_dataset
from tflite_export.convert import KERNELS, TFLiteModel, to_tflite
from tflite_export.graph import ExportError, InferenceGraph

T = TypeVar("T")


def _load_run(workdir: str):
    config, model = load_run(workdir)
    if config.mode not in CDL_MODES:
        raise ValueError(f"run {workdir!r} is a {config.mode} run; only CDL runs export to the CDL grid")
    bad = [f"{layer.name}/{v.name.split('/')[-1].split(':')[0]}" for layer in model.layers for v in layer.weights
           if v.dtype.is_floating and not np.isfinite(v.numpy()).all()]
    if bad:
        raise ExportError(f"run {workdir!r} has non-finite weights (NaN or inf) in {bad}; nothing was exported")
    return config, model


def eval_arrays(config) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the test set a run is evaluated on (`cdl_tf.training.test_dataset`)."""
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in test_dataset(config, 500)))
    return np.concatenate(xs), np.concatenate(ys)


def calibration_data(config, batches: int = 8) -> list[np.ndarray]:
    """The first ``batches`` unaugmented training batches (validation images held out), which set
    the int8 activation ranges."""
    ds = cdl_data.make_dataset(config.dataset, "train", config.batch_size, data_dir=config.data_dir or None,
                               training=False, seed=config.seed, validation_size=config.validation_size)
    return [x.numpy() for x, _ in ds.take(batches)]


def _progress(items: Sequence[T], title: str, unit: str, show: bool) -> Iterator[T]:
    """``items``; when ``show``, under ``title`` and a progress bar that counts the ones consumed."""
    if not show:
        yield from items
        return
    print(title, flush=True)
    bar = keras.utils.Progbar(len(items), unit_name=unit)
    for done, item in enumerate(items, 1):
        yield item
        bar.update(done)


def _predicted_classes(predictors: Dict[str, Callable[[np.ndarray], np.ndarray]], x: np.ndarray,
                      batch_size: int = 500, progress: bool = False) -> Dict[str, np.ndarray]:
    """Each predictor's argmax class on ``x``, batch by batch (with one progress bar over all)."""
    starts = range(0, len(x), batch_size)
    classes = {name: [] for name in predictors}
    steps = [(name, start) for name in predictors for start in starts]
    for name, start in _progress(steps, f"evaluating {', '.join(predictors)} on {len(x)} test images",
                                 "batch", progress):
        classes[name].append(predictors[name](x[start : start + batch_size]).argmax(1))
    return {name: np.concatenate(c) for name, c in classes.items()}


def export_workdir(workdir: str, out: str, int8_io: bool = False, calibration_batches: int = 8,
                   kernels: Sequence[str] = (), progress: bool = False) -> ExportReport:
    """Export the run in ``workdir`` into ``out``; returns its report, as written to ``export.json``.

    ``kernels``: LiteRT kernel sets besides the default on which the int8 model is also evaluated.
    ``progress``: show progress bars for the calibration and the test-set evaluation.
    """
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        raise ValueError(f"unknown kernel sets {unknown}; choose from {sorted(KERNELS)}")
    config, model = _load_run(workdir)
    tensors = coded_tensors(model)
    apply_coded(model, tensors)  # what is evaluated and converted is exactly what decodes
    info = cdl_data.dataset_info(config.dataset)
    x_test, y_test = eval_arrays(config)
    graph = InferenceGraph(model)
    batches = calibration_data(config, calibration_batches)
    graph.calibrate(_progress(batches, f"calibrating activation ranges on {len(batches)} training batches",
                              "batch", progress))
    int8 = to_tflite(graph, "int8", info.input_shape, int8_io=int8_io)
    float_model = to_tflite(graph, "float", info.input_shape)
    metadata = {"ranges": graph.stored_ranges()}  # the architecture comes from the run's config
    coded = coding.encode_bytes(tensors, coder="ans", metadata=metadata)
    huffman = coding.encode_bytes(tensors, coder="huffman", metadata=metadata)
    os.makedirs(out, exist_ok=True)
    atomic_write_bytes(os.path.join(out, "model.tflite"), int8)
    atomic_write_bytes(os.path.join(out, "model_float.tflite"), float_model)
    atomic_write_bytes(os.path.join(out, "weights.cdlz"), coded)

    predictors = {"Keras Q_u": model.predict_on_batch, "TFLite int8": TFLiteModel(int8),
                  "TFLite float": TFLiteModel(float_model),
                  **{f"TFLite int8 ({k})": TFLiteModel(int8, kernels=k) for k in kernels}}
    pred = _predicted_classes(predictors, x_test, progress=progress)
    keras_pred = pred["Keras Q_u"]
    accuracy = ExportAccuracy(
        keras_q_u=float((keras_pred == y_test).mean()),
        tflite_int8=float((pred["TFLite int8"] == y_test).mean()),
        top1_agreement=float((keras_pred == pred["TFLite int8"]).mean()),
        tflite_float=float((pred["TFLite float"] == y_test).mean()),
        kernels={k: KernelAccuracy(tflite_int8=float((pred[f"TFLite int8 ({k})"] == y_test).mean()),
                                   top1_agreement=float((keras_pred == pred[f"TFLite int8 ({k})"]).mean()))
                 for k in kernels},
    )
    quantized = [t for t in tensors.values() if isinstance(t, coding.QuantizedTensor)]
    n_weights = sum(t.indices.size for t in quantized)
    float_values = sum(np.asarray(t).size for t in tensors.values() if not isinstance(t, coding.QuantizedTensor))
    bound = entropy_bound_bits(tensors)
    index_bits = {
        name: 8 * coding.decode_bytes(blob).index_bytes for name, blob in (("ans", coded), ("huffman", huffman))
    }
    report = ExportReport(
        workdir=os.path.abspath(workdir),
        quantized_weights=int(n_weights),
        float_values=int(float_values),
        bytes=ExportBytes(
            tflite_float=len(float_model), tflite_int8=len(int8),
            cdlz_ans=len(coded), cdlz_huffman=len(huffman),
            entropy_bound_quantized=bound / 8, float32_weights=4 * (n_weights + float_values),
        ),
        bits_per_weight=BitsPerWeight(
            entropy=bound / n_weights,
            ans_payload=index_bits["ans"] / n_weights,
            huffman_payload=index_bits["huffman"] / n_weights,
            cdlz_ans_total=8 * len(coded) / n_weights,
        ),
        test_examples=int(len(y_test)),
        accuracy=accuracy,
        int8_io=bool(int8_io),
    )
    report.write(out)
    return report
