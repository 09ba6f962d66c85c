"""Rebuild a model from its coded weights: cdl-decode WEIGHTS.cdlz --like=WORKDIR [--out=DIR]

Writes ``model.keras`` and ``model.tflite`` (`tflite_export.decode.decode_to_dir`).
"""
import os

from absl import app, flags

from cdl_tf.tools import cli

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: cdl-decode WEIGHTS.cdlz --like=WORKDIR [--out=DIR]")
    from tflite_export.decode import decode_to_dir

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
