"""Export a trained run: cdl-export --workdir=/tmp/lenet5 [--out=/tmp/lenet5/export --int8_io]

Writes ``model.tflite`` (full integer), ``model_float.tflite``, ``weights.cdlz`` and
``export.json`` (`tflite_export.export.export_workdir`) and prints their sizes and accuracies.
"""
import os

from absl import flags

from cdl_tf.tools import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Run directory written by cdl-train.")
    flags.DEFINE_string("out", "", "Output directory (default: WORKDIR/export).")
    flags.DEFINE_bool("int8_io", False, "int8 input and output tensors instead of float.")
    flags.DEFINE_integer("calibration_batches", 8, "Training batches used to calibrate ranges.")
    flags.DEFINE_list("kernels", [], "LiteRT kernel sets (builtin, reference) on which the int8 model is "
                      "also evaluated, besides the default XNNPACK kernels.")
    flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    from tflite_export.export import export_workdir

    report = export_workdir(FLAGS.workdir, FLAGS.out or os.path.join(FLAGS.workdir, "export"), FLAGS.int8_io,
                            FLAGS.calibration_batches, FLAGS.kernels, progress=True)
    b, a = report.bytes, report.accuracy
    print(f"float TFLite {b.tflite_float} B, int8 TFLite {b.tflite_int8} B, "
          f"coded weights {b.cdlz_ans} B (ANS), {b.cdlz_huffman} B (Huffman), "
          f"index entropy {b.entropy_bound_quantized:.0f} B")
    print(f"accuracy Keras Q_u {a.keras_q_u:.4f}, TFLite int8 {a.tflite_int8:.4f}, "
          f"agreement {a.top1_agreement:.4f}; unrounded activations (model_float.tflite) {a.tflite_float:.4f}")
    for k, on in a.kernels.items():
        print(f"TFLite int8 on the {k} kernels {on.tflite_int8:.4f}, agreement {on.top1_agreement:.4f}")


def run():
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
