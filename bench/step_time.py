"""Training step time and peak memory of float, TF-MOT 8-bit QAT and the CDL modes.

Each (model, variant) runs in its own process on the same batch; the JSON gives medians and
their ratios to float and to TF-MOT 8-bit measured in the same run, and the time of the first
step (``first_step_s``: tracing the step and compiling it, the wait before training starts).
Models: a small CNN on random 32x32x3 inputs (batch 64) and ResNet-20 on CIFAR-10 training
images (batch 128, from ``--data_dir`` / ``$CDL_DATA_DIR``, else random images of the same
shape). Variants ``cdl``, ``rcdl`` and ``ste`` use exact activation counts; ``cdl_sampled`` and
``rcdl_sampled`` estimate them from ``--count_sample`` values per activation tensor
(`CDLConfig.activation_count_sample`). Every variant is measured in each of ``--rounds`` rounds,
the variants of a model taking turns, and keeps its fastest round: a step time measured here
moves by up to 2x when another tenant takes the cores, and the least-disturbed round is the one
closest to the machine's own speed:

    python bench/step_time.py [--models=cnn,resnet20 --steps=30 --rounds=2]
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
flags.DEFINE_list("models", ["cnn", "resnet20"], "Models to measure: cnn, resnet20.")
flags.DEFINE_list("variants", ["float", "tfmot8", "cdl", "rcdl", "ste", "cdl_sampled", "rcdl_sampled"],
                  "Variants to measure (float and tfmot8 are the baselines of the ratios).")
flags.DEFINE_integer("steps", 30, "Timed steps per variant (after warm-up).")
flags.DEFINE_integer("warmup", 5, "Untimed steps per variant.")
flags.DEFINE_integer("rounds", 2, "Rounds over the variants; each variant keeps its fastest round.")
flags.DEFINE_integer("count_sample", 4096, "Values per activation tensor of the *_sampled variants.")
flags.DEFINE_string("data_dir", None, "Dataset directory (default: $CDL_DATA_DIR).")
flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results", "step_time.json"), "Output JSON.")
flags.DEFINE_string("measure", None, "Internal: MODEL:VARIANT to measure in this process, printed as JSON.")

MODELS = {
    "cnn": ("3x(conv3x3-BN-ReLU-maxpool) 16/32/64 + fc128 + fc10, random 32x32x3 inputs", 64),
    "resnet20": ("ResNet-20, CIFAR-10 training images", 128),
}


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


def _batch(model_name: str, batch_size: int):
    """``(x, y, source)``: CIFAR-10 training images for ResNet-20 when a data directory has them."""
    import numpy as np

    rng = np.random.RandomState(0)
    data_dir = FLAGS.data_dir or os.environ.get("CDL_DATA_DIR")
    if model_name == "resnet20" and data_dir:
        from cdl_tf.data.arrays import load_arrays
        from cdl_tf.data.pipeline import normalization

        images, labels = load_arrays("cifar10", "train", data_dir)
        mean, std = normalization("cifar10")
        x = ((images[:batch_size].astype("float32") / 255.0 - mean) / std).astype("float32")
        return x, labels[:batch_size], "cifar10 train[:batch]"
    x = rng.randn(batch_size, 32, 32, 3).astype("float32")
    return x, rng.randint(0, 10, batch_size), "random"


def measure(model_name: str, variant: str, steps: int, warmup: int, count_sample: int) -> dict:
    import tensorflow as tf
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot

    import cdl_tf
    from cdl_tf.models import get_model

    batch_size = MODELS[model_name][1]
    if model_name == "cnn":
        model = small_cnn()
    else:
        keras.utils.set_random_seed(0)
        model = get_model("resnet20", (32, 32, 3), 10)
    if variant == "tfmot8":
        model = tfmot.quantization.keras.quantize_model(model)
    elif variant != "float":
        mode, _, sampled = variant.partition("_")
        extra = {"activation_count_sample": count_sample} if sampled else {}
        model = cdl_tf.quantize_model(model, cdl_tf.CDLConfig(mode=mode, lambda_w=0.01, lambda_a=0.01, **extra))
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_np, y_np, source = _batch(model_name, batch_size)
    x, y = tf.constant(x_np), tf.constant(y_np)
    t0 = time.perf_counter()
    model.train_on_batch(x, y)  # traces and compiles the step
    first_step_s = time.perf_counter() - t0
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
    return {"median_step_s": statistics.median(times), "first_step_s": first_step_s, "peak_step_bytes": int(peak - base),
            "peak_bytes": int(peak), "inputs": source}


def main(argv):
    del argv
    if FLAGS.measure:
        model_name, variant = FLAGS.measure.split(":")
        print(json.dumps(measure(model_name, variant, FLAGS.steps, FLAGS.warmup, FLAGS.count_sample)))
        return
    for name in FLAGS.models:
        if name not in MODELS:
            raise app.UsageError(f"--models: unknown model {name!r}; known: {sorted(MODELS)}")
    if not {"float", "tfmot8"} <= set(FLAGS.variants):
        raise app.UsageError("--variants must include the baselines float and tfmot8")
    report = {
        "steps": FLAGS.steps, "rounds": FLAGS.rounds, "count_sample": FLAGS.count_sample,
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "targets": {"step_time_vs_float": 1.5, "step_time_vs_tfmot8": 1.2, "peak_memory_vs_float": 1.5},
        "models": {},
    }
    for name in FLAGS.models:
        rounds = {variant: [] for variant in FLAGS.variants}
        for round_ in range(FLAGS.rounds):
            for variant in FLAGS.variants:
                out = subprocess.run(
                    [sys.executable, __file__, f"--measure={name}:{variant}", f"--steps={FLAGS.steps}",
                     f"--warmup={FLAGS.warmup}", f"--count_sample={FLAGS.count_sample}"]
                    + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else []),
                    check=True, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                )
                rounds[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(name, variant, f"round {round_ + 1}", rounds[variant][-1], flush=True)
        results = {variant: dict(min(rs, key=lambda r: r["median_step_s"]),
                                 round_median_step_s=[r["median_step_s"] for r in rs])
                   for variant, rs in rounds.items()}
        base, tfmot8 = results["float"], results["tfmot8"]
        for r in results.values():
            r["step_time_vs_float"] = r["median_step_s"] / base["median_step_s"]
            r["step_time_vs_tfmot8"] = r["median_step_s"] / tfmot8["median_step_s"]
            r["peak_step_memory_vs_float"] = r["peak_step_bytes"] / base["peak_step_bytes"]
            r["first_step_vs_float"] = r["first_step_s"] / base["first_step_s"]
        report["models"][name] = {"model": MODELS[name][0], "batch_size": MODELS[name][1], "results": results}
    os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    from cdl_tf.io import atomic_write_json

    atomic_write_json(FLAGS.out, report)
    for name, entry in report["models"].items():
        for variant, r in entry["results"].items():
            print(f"{name:8s} {variant:12s} step {r['step_time_vs_float']:.2f}x float, "
                  f"{r['step_time_vs_tfmot8']:.2f}x tfmot8, peak memory {r['peak_step_memory_vs_float']:.2f}x float, "
                  f"first step (trace and compile) {r['first_step_s']:.1f} s")


if __name__ == "__main__":
    app.run(main)
