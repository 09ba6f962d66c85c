"""Rebuild a model from its coded weights alone (the ``cdl-decode`` tool).

The architecture comes from the run's ``config.json`` (``like``); every inference weight
comes from the ``.cdlz`` file, which is validated before anything is decoded.
`decode_to_dir` writes ``model.keras`` (load inside `cdl_tf.quantize_scope()`) and, from the
calibrated ranges stored in the file, the int8 ``model.tflite`` again. `layerwise_model` runs
the same model straight from the file, decoding one layer's weights at a time
(`tflite_export.layerwise`); `accuracy_on_test_set` evaluates either on the run's test set.
"""
from __future__ import annotations

import gc
import os

import numpy as np

from cdl_tf import coding
from cdl_tf import data as cdl_data
from cdl_tf.coded_model import apply_coded
from cdl_tf.io import atomic_write_bytes
from cdl_tf.run_config import read_run_config
from cdl_tf.training import build_model, validate_config
from tflite_export.convert import to_tflite
from tflite_export.export import eval_arrays
from tflite_export.graph import InferenceGraph
from tflite_export.layerwise import Architecture, LayerwiseModel


def run_model(like: str):
    """The model of run ``like`` as its config builds it, untrained, and the config."""
    config = read_run_config(like)
    config.init_from = ""
    return build_model(config, validate_config(config)), config


def decode_model(cdlz_path: str, like: str):
    """The Keras model of run ``like`` with the weights of ``cdlz_path``, and the coded file."""
    coded = coding.read(cdlz_path)
    model, config = run_model(like)
    apply_coded(model, coded)
    return model, coded, config


def layerwise_model(cdlz_path: str, like: str):
    """`LayerwiseModel` of run ``like`` on ``cdlz_path`` (read lazily), and the config.

    The untrained model that gives the architecture is released, its variables with it,
    before any weight is decoded.
    """
    model, config = run_model(like)
    architecture = Architecture.from_model(model)
    del model
    gc.collect()  # Keras layers hold reference cycles
    return LayerwiseModel(architecture, coding.read(cdlz_path, lazy=True)), config


def accuracy_on_test_set(cdlz_path: str, like: str, *, layerwise: bool, batch_size: int = 500) -> tuple[float, int]:
    """``(top-1 accuracy, images)`` on run ``like``'s test set (``config.test_subset``) of the Keras
    ``Q_u`` model decoded from ``cdlz_path``, or with ``layerwise`` of `layerwise_model` (which
    decodes every layer again for each batch of ``batch_size`` images)."""
    if layerwise:
        predict, config = layerwise_model(cdlz_path, like)
    else:
        model, _, config = decode_model(cdlz_path, like)
        predict = lambda x: model(x, training=False)
    x, y = eval_arrays(config)
    classes = np.concatenate([np.argmax(predict(x[i : i + batch_size]), axis=1) for i in range(0, len(x), batch_size)])
    return float(np.mean(classes == y)), len(y)


def decode_to_dir(cdlz_path: str, like: str, out: str) -> dict:
    """Write ``model.keras`` and ``model.tflite`` rebuilt from the coded weights alone."""
    model, coded, config = decode_model(cdlz_path, like)
    os.makedirs(out, exist_ok=True)
    model.save(os.path.join(out, "model.keras"))
    graph = InferenceGraph(model)
    graph.load_ranges(coded.metadata.get("ranges"))
    tflite = to_tflite(graph, "int8", cdl_data.dataset_info(config.dataset).input_shape)
    atomic_write_bytes(os.path.join(out, "model.tflite"), tflite)
    return {"keras": os.path.join(out, "model.keras"), "tflite": os.path.join(out, "model.tflite"),
            "tflite_bytes": len(tflite)}
