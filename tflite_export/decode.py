"""Rebuild a model from its coded weights: cdl-decode WEIGHTS.cdlz --like=WORKDIR [--out=DIR]

The architecture comes from the run's ``config.json`` (``--like``); every inference
weight comes from the ``.cdlz`` file, which is validated before anything is decoded.
Writes ``model.keras`` (load inside `cdl_tf.quantize_scope()`) and, from the
calibrated ranges stored in the file, the int8 ``model.tflite`` again.
"""
from __future__ import annotations

import os

from absl import app, flags

from tools import cli

FLAGS = flags.FLAGS


def decode_model(cdlz_path: str, like: str):
    """The Keras model of run ``like`` with the weights of ``cdlz_path``, and the coded file."""
    from cdl_tf import coding
    from cdl_tf.run_config import read_run_config
    from cdl_tf.training import build_model, validate_config
    from tflite_export.coded import apply_coded

    coded = coding.read(cdlz_path)
    config = read_run_config(like)
    config.init_from = ""
    model = build_model(config, validate_config(config))
    apply_coded(model, coded)
    return model, coded, config


def decode_to_dir(cdlz_path: str, like: str, out: str) -> dict:
    """Write ``model.keras`` and ``model.tflite`` rebuilt from the coded weights alone."""
    from cdl_tf import data as cdl_data
    from cdl_tf.io import atomic_write_bytes
    from tflite_export.convert import to_tflite
    from tflite_export.graph import InferenceGraph

    model, coded, config = decode_model(cdlz_path, like)
    os.makedirs(out, exist_ok=True)
    model.save(os.path.join(out, "model.keras"))
    graph = InferenceGraph(model)
    graph.load_ranges(coded.metadata.get("ranges"))
    tflite = to_tflite(graph, "int8", cdl_data.dataset_info(config.dataset).input_shape)
    atomic_write_bytes(os.path.join(out, "model.tflite"), tflite)
    return {"keras": os.path.join(out, "model.keras"), "tflite": os.path.join(out, "model.tflite"),
            "tflite_bytes": len(tflite)}


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: cdl-decode WEIGHTS.cdlz --like=WORKDIR [--out=DIR]")
    out = FLAGS.out or os.path.join(os.path.dirname(os.path.abspath(argv[1])), "decoded")
    written = decode_to_dir(argv[1], FLAGS.like, out)
    print(f"wrote {written['keras']} and {written['tflite']} ({written['tflite_bytes']} B)")


def run():
    flags.DEFINE_string("like", None, "Run directory whose config.json gives the architecture.")
    flags.DEFINE_string("out", "", "Output directory (default: decoded/ beside the .cdlz file).")
    flags.mark_flag_as_required("like")
    cli.run(main)


if __name__ == "__main__":
    run()
