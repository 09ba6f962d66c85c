"""Rebuild a model from its coded weights alone (the ``cdl-decode`` tool).

The architecture comes from the run's ``config.json`` (``like``); every inference weight
comes from the ``.cdlz`` file, which is validated before anything is decoded.
`decode_to_dir` writes ``model.keras`` (load inside `cdl_tf.quantize_scope()`) and, from the
calibrated ranges stored in the file, the int8 ``model.tflite`` again.
"""
from __future__ import annotations

import os

from cdl_tf import coding
from cdl_tf import data as cdl_data
from cdl_tf.coded_model import apply_coded
from cdl_tf.io import atomic_write_bytes
from cdl_tf.run_config import read_run_config
from cdl_tf.training import build_model, validate_config
from tflite_export.convert import to_tflite
from tflite_export.graph import InferenceGraph


def decode_model(cdlz_path: str, like: str):
    """The Keras model of run ``like`` with the weights of ``cdlz_path``, and the coded file."""
    coded = coding.read(cdlz_path)
    config = read_run_config(like)
    config.init_from = ""
    model = build_model(config, validate_config(config))
    apply_coded(model, coded)
    return model, coded, config


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
