"""Training step time and peak memory of float, TF-MOT 8-bit QAT, CDL and R-CDL.

Each variant runs in its own process on the same small CNN and batch; the JSON
gives medians and their ratios to float measured in the same run:

    python bench/step_time.py [--batch_size=64 --steps=40]
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Examples per step.")
flags.DEFINE_integer("steps", 40, "Timed steps per variant (after warm-up).")
flags.DEFINE_integer("warmup", 5, "Untimed steps per variant.")
flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results", "step_time.json"), "Output JSON.")
flags.DEFINE_string("variant", None, "Internal: measure one variant in this process and print JSON.")

VARIANTS = ("float", "tfmot8", "cdl", "rcdl")


def small_cnn():
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = inp
    for i, filters in enumerate((16, 32, 64)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu", name="fc")(x)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(x))


def measure(variant: str, batch_size: int, steps: int, warmup: int) -> dict:
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot

    import cdl_tf

    model = small_cnn()
    if variant == "tfmot8":
        model = tfmot.quantization.keras.quantize_model(model)
    elif variant in ("cdl", "rcdl"):
        model = cdl_tf.quantize_model(model, cdl_tf.CDLConfig(mode=variant, lambda_w=0.01, lambda_a=0.01))
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.RandomState(0)
    x = tf.constant(rng.randn(batch_size, 32, 32, 3).astype("float32"))
    y = tf.constant(rng.randint(0, 10, batch_size))
    for _ in range(warmup):
        model.train_on_batch(x, y)
    tf.config.experimental.reset_memory_stats("CPU:0")
    base = tf.config.experimental.get_memory_info("CPU:0")["current"]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return {"median_step_s": statistics.median(times), "peak_step_bytes": int(peak - base), "peak_bytes": int(peak)}


def main(argv):
    del argv
    if FLAGS.variant:
        print(json.dumps(measure(FLAGS.variant, FLAGS.batch_size, FLAGS.steps, FLAGS.warmup)))
        return
    results = {}
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, f"--variant={variant}", f"--batch_size={FLAGS.batch_size}",
             f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}"],
            check=True, capture_output=True, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(variant, results[variant], flush=True)
    base = results["float"]
    for r in results.values():
        r["step_time_vs_float"] = r["median_step_s"] / base["median_step_s"]
        r["peak_step_memory_vs_float"] = r["peak_step_bytes"] / base["peak_step_bytes"]
    report = {
        "model": "3x(conv3x3-BN-ReLU-maxpool) 16/32/64 + fc128 + fc10, 32x32x3 input",
        "batch_size": FLAGS.batch_size, "steps": FLAGS.steps, "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "targets": {"cdl_step_time_vs_float": 1.5, "cdl_peak_memory_vs_float": 1.5},
        "results": results,
    }
    os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    from cdl_tf.io import atomic_write_json

    atomic_write_json(FLAGS.out, report)
    for name, r in results.items():
        print(f"{name:7s} step {r['step_time_vs_float']:.2f}x float, peak memory {r['peak_step_memory_vs_float']:.2f}x float")


if __name__ == "__main__":
    app.run(main)
