"""Bias and spread of activation rates estimated from a random subset of each tensor.

`CDLConfig.activation_count_sample = n` estimates a tensor's soft index counts from ``n`` of its
values (`cdl_tf.ops.quantize_with_counts(count_sample=n)`); the rate is the entropy of those
counts, a plug-in estimate, biased low by about ``(K - 1) / (2 n ln 2)`` bits for ``K`` levels in
use. Measured on the ReLU activations of ResNet-20 (BatchNorm in training mode, He-initialised
weights) on a batch of 128 CIFAR-10 training images, each tensor on a 4-bit unsigned grid with
LSQ's initial step, window 5, at two hardnesses; per tensor and subset size, ``--draws`` seeds:

    python bench/count_sample.py [--sizes=1024,4096,16384 --draws=50]
"""
from __future__ import annotations

import math
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["1024", "4096", "16384"], "Subset sizes n.")
flags.DEFINE_integer("draws", 50, "Seeds per tensor and subset size.")
flags.DEFINE_string("data_dir", None, "Dataset directory (default: $CDL_DATA_DIR).")
flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results", "count_sample.json"), "Output JSON.")

BITS, LO, HI, WINDOW, KAPPAS = 4, 0, 15, 5, (4.0, 16.0)


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from cdl_tf import ops
    from cdl_tf.data.arrays import load_arrays
    from cdl_tf.data.pipeline import normalization
    from cdl_tf.io import atomic_write_json
    from cdl_tf.models import get_model

    images, _ = load_arrays("cifar10", "train", FLAGS.data_dir or os.environ.get("CDL_DATA_DIR"))
    mean, std = normalization("cifar10")
    x = ((images[:128].astype("float32") / 255.0 - mean) / std).astype("float32")
    keras.utils.set_random_seed(0)
    model = get_model("resnet20", (32, 32, 3), 10)
    relus = [layer.output for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    acts = keras.Model(model.input, relus)(x, training=True)
    sizes = [int(n) for n in FLAGS.sizes]
    rows = []
    for name, a in zip([t.node.layer.name for t in relus], acts):
        a = tf.cast(a, tf.float64)
        q = 2.0 * float(tf.reduce_mean(tf.abs(a))) / math.sqrt(2.0 ** (BITS - 1))
        for kappa in KAPPAS:
            alpha = kappa / q**2
            exact = float(ops.entropy_bits(a, q, alpha, LO, HI, window=WINDOW))
            row = {"tensor": name, "values": int(tf.size(a)), "kappa": kappa, "exact_bits": exact, "subsets": {}}
            for n in sizes:
                est = np.array([float(ops.pmf_entropy_bits(c / tf.reduce_sum(c))) for c in (
                    ops.quantize_with_counts(a, q, alpha, LO, HI, window=WINDOW, count_sample=n, seed=[s, 1])[1]
                    for s in range(FLAGS.draws))])
                row["subsets"][n] = {"mean_bias_bits": float(est.mean() - exact), "sd_bits": float(est.std(ddof=1)),
                                     "relative_bias": float((est.mean() - exact) / exact)}
            rows.append(row)
            print(name, kappa, f"{exact:.3f} bits", {n: f"{r['mean_bias_bits']:+.4f} +- {r['sd_bits']:.4f}"
                                                    for n, r in row["subsets"].items()}, flush=True)
    summary = {n: {"mean_bias_bits": float(np.mean([r["subsets"][n]["mean_bias_bits"] for r in rows])),
                   "max_abs_bias_bits": float(np.max([abs(r["subsets"][n]["mean_bias_bits"]) for r in rows])),
                   "mean_sd_bits": float(np.mean([r["subsets"][n]["sd_bits"] for r in rows])),
                   "mean_relative_bias": float(np.mean([r["subsets"][n]["relative_bias"] for r in rows]))}
               for n in sizes}
    atomic_write_json(FLAGS.out, {"model": "resnet20 (He init), ReLU outputs, 128 CIFAR-10 training images",
                                  "bits": BITS, "window": WINDOW, "draws": FLAGS.draws, "summary": summary,
                                  "tensors": rows})
    for n, s in summary.items():
        print(f"n={n}: mean bias {s['mean_bias_bits']:+.4f} bits (max |bias| {s['max_abs_bias_bits']:.4f}), "
              f"spread {s['mean_sd_bits']:.4f} bits, relative {100 * s['mean_relative_bias']:+.2f}%")


if __name__ == "__main__":
    app.run(main)
