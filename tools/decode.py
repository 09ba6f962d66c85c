"""Rebuild a model from its coded weights: cdl-decode WEIGHTS.cdlz --like=WORKDIR [--out=DIR] [--eval [--layerwise]]

Writes ``model.keras`` and ``model.tflite`` (`tflite_export.decode.decode_to_dir`); ``--eval``
also prints the decoded Keras model's test accuracy. ``--eval --layerwise`` writes nothing and
evaluates the test set straight from the file, one layer's weights decoded at a time
(`tflite_export.layerwise`).
"""
import os

from absl import app, flags

from cdl_tf.tools import cli

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: cdl-decode WEIGHTS.cdlz --like=WORKDIR [--out=DIR] [--eval [--layerwise]]")
    if FLAGS.layerwise and not FLAGS.eval:
        raise app.UsageError("--layerwise runs the test set through the coded layers; it needs --eval")
    if FLAGS.batch_size < 1:
        raise app.UsageError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    from tflite_export.decode import accuracy_on_test_set, decode_to_dir

    if not FLAGS.layerwise:
        out = FLAGS.out or os.path.join(os.path.dirname(os.path.abspath(argv[1])), "decoded")
        written = decode_to_dir(argv[1], FLAGS.like, out)
        print(f"wrote {written['keras']} and {written['tflite']} ({written['tflite_bytes']} B)")
    if FLAGS.eval:
        accuracy, images = accuracy_on_test_set(argv[1], FLAGS.like, layerwise=FLAGS.layerwise,
                                                batch_size=FLAGS.batch_size)
        how = "layer by layer from the coded file" if FLAGS.layerwise else "decoded Keras model"
        print(f"test accuracy {accuracy:.4f} on {images} images ({how})")


def run():
    flags.DEFINE_string("like", None, "Run directory whose config.json gives the architecture.")
    flags.DEFINE_string("out", "", "Output directory (default: decoded/ beside the .cdlz file).")
    flags.DEFINE_bool("eval", False, "Print the test accuracy of the decoded model (Keras Q_u inference).")
    flags.DEFINE_bool("layerwise", False, "With --eval: run the test set straight from the .cdlz file, decoding "
                      "each layer's weights just before it runs and releasing them after; writes nothing.")
    flags.DEFINE_integer("batch_size", 500, "Test images per batch for --eval (the layer-wise path decodes every "
                         "layer once per batch).")
    flags.mark_flag_as_required("like")
    cli.run(main)


if __name__ == "__main__":
    run()
