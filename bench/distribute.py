"""Scale-out figures: data-parallel step time, and the bits CDL saves in communication.

* Step time: one CDL training step (LeNet-5, mode ``cdl``, MNIST-shaped random data)
  with the same global batch on one device and under `MirroredStrategy` over 2 logical
  CPU devices, each in its own process; the JSON gives the medians and their ratio.
  Logical devices share the machine's cores, so on a small CPU the ratio measures the
  overhead of replication (all-reduces, per-replica kernels), not a speed-up.
* Communication: LeNet-5/MNIST and ResNet-20/CIFAR-10 briefly trained with CDL by
  `train_and_evaluate` (their configs' lambdas, ``--train_examples`` examples, one
  epoch, no warm-ups), then `cdl_tf.communication` on up to 1000 test examples: bits of
  one broadcast of the model (``.cdlz`` vs float32 vs int8) and per example of the
  activation at a cut (ANS-coded indices vs float32 vs int8).

    python bench/distribute.py [--steps=30 --train_examples=4096]
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Global batch of the timed steps.")
flags.DEFINE_integer("steps", 30, "Timed steps per device count (after warm-up).")
flags.DEFINE_integer("warmup", 5, "Untimed steps per device count.")
flags.DEFINE_integer("train_examples", 4096, "Training examples of the brief CDL training (one epoch).")
flags.DEFINE_string("data_dir", os.environ.get("CDL_DATA_DIR", ""), "Datasets directory ('' -> TFDS).")
flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results", "distribute.json"), "Output JSON.")
flags.DEFINE_integer("devices", None, "Internal: time steps on this many logical devices and print JSON.")

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CUTS = {"lenet5": ("lenet5_mnist", "conv2"), "resnet20": ("resnet20_cifar10", "stage2_block3_relu2")}


def measure(devices: int, batch_size: int, steps: int, warmup: int) -> dict:
    """Median step time of LeNet-5 CDL training on ``devices`` logical CPU devices (1: no strategy)."""
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    import tf_keras as keras

    import cdl_tf
    from cdl_tf.distribute import initialize_quantizers
    from cdl_tf.models import get_model

    if devices == 1:
        strategy = tf.distribute.get_strategy()
    else:
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = cdl_tf.quantize_model(get_model("lenet5", (28, 28, 1), 10),
                                      cdl_tf.CDLConfig(mode="cdl", lambda_w=0.02, lambda_a=0.005))
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.RandomState(0)
    x = rng.randn(batch_size, 28, 28, 1).astype("float32")
    y = rng.randint(0, 10, batch_size)
    initialize_quantizers(model, strategy, x)
    batches = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)).repeat()))
    step = model.make_train_function()
    for _ in range(warmup):
        float(step(batches)["loss"])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        float(step(batches)["loss"])
        times.append(time.perf_counter() - t0)
    return {"replicas": strategy.num_replicas_in_sync, "median_step_s": statistics.median(times)}


def communication(model: str, train_examples: int, data_dir: str) -> dict:
    """Broadcast and cut-activation bits of ``model`` after one brief epoch of CDL training."""
    import importlib.util

    from cdl_tf.training import train_and_evaluate

    config_name, cut = CUTS[model]
    spec = importlib.util.spec_from_file_location(config_name, os.path.join(CONFIGS, f"{config_name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data_dir, c.train_subset, c.test_subset, c.epochs, c.verbose = data_dir, train_examples, 1000, 1, 0
    c.optimizer.warmup_epochs, c.rate_warmup_epochs, c.bn_reestimate_steps = 0, 0, 10
    c.split_at = cut
    with tempfile.TemporaryDirectory() as workdir:
        metrics = train_and_evaluate(c, workdir)
    return {
        "training": f"{c.mode}, {train_examples} {c.dataset} examples, 1 epoch, lambda_w={c.cdl.lambda_w}, "
                    f"lambda_a={c.cdl.lambda_a}, {c.cdl.weight_bits}/{c.cdl.activation_bits}-bit",
        "test_accuracy": metrics["test_accuracy"], "bits_per_weight": metrics["bits_per_weight"],
        **metrics["communication"],
    }


def main(argv):
    del argv
    if FLAGS.devices:
        print(json.dumps(measure(FLAGS.devices, FLAGS.batch_size, FLAGS.steps, FLAGS.warmup)))
        return
    timing = {}
    for devices in (1, 2):
        out = subprocess.run(
            [sys.executable, __file__, f"--devices={devices}", f"--batch_size={FLAGS.batch_size}",
             f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}"],
            check=True, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        timing[f"{devices}_device" + ("s" if devices > 1 else "")] = json.loads(out.stdout.strip().splitlines()[-1])
        print(devices, timing, flush=True)
    timing["step_time_2_over_1"] = timing["2_devices"]["median_step_s"] / timing["1_device"]["median_step_s"]
    comm = {}
    for model in CUTS:
        comm[model] = communication(model, FLAGS.train_examples, FLAGS.data_dir)
        print(model, json.dumps(comm[model]), flush=True)
    report = {
        "step_time": {"model": "lenet5, mode cdl, MNIST-shaped random data", "global_batch": FLAGS.batch_size,
                      "steps": FLAGS.steps, **timing},
        "communication": comm,
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    from cdl_tf.io import atomic_write_json

    atomic_write_json(FLAGS.out, report)
    print(f"step time, 2 logical devices / 1 device: {timing['step_time_2_over_1']:.2f}")
    for model, r in comm.items():
        b, s = r["broadcast"], r["split"]
        print(f"{model}: broadcast float32/cdlz {b['float32_over_cdlz']:.1f}x, int8/cdlz {b['int8_over_cdlz']:.1f}x; "
              f"cut {s['site']}: float32/coded {s['float32_over_coded']:.1f}x, int8/coded {s['int8_over_coded']:.1f}x")


if __name__ == "__main__":
    app.run(main)
