"""Time and peak memory of the CDL quantizer op alone, per 2^20 values.

`cdl_tf.ops.quantize_with_counts` on a ReLU'd tensor of 2^20 float32 values (4-bit unsigned
alphabet, kappa = 4), forward (values and soft counts) and forward+backward (gradient of a loss
on both), for the ``Q_p`` draw and ``Q_d``, windowed (k = 5) and on the whole alphabet, with
exact counts and with counts estimated from ``--count_sample`` values.
Ratios are to a ReLU forward+backward on the same tensor (time) and to the tensor's own
bytes (memory), measured in the same run. Every function is timed in each of ``--rounds``
rounds over all of them and keeps its fastest round's median (as `bench/step_time.py` does:
another tenant of the cores can slow a minute of measurements by up to 2x):

    python bench/quantizer_kernel.py [--repeats=30 --rounds=2]
"""
from __future__ import annotations

import os
import platform
import statistics
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 30, "Timed calls per case (after one warm-up call).")
flags.DEFINE_integer("rounds", 2, "Rounds over all timed functions; each keeps its fastest round.")
flags.DEFINE_integer("count_sample", 4096, "Values the *_sampled cases estimate the counts from.")
flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results", "quantizer_kernel.json"),
                    "Output JSON.")

SHAPE = (64, 32, 32, 16)  # 2^20 values: a batch of 64 activations of a 32x32x16 conv
LO, HI, KAPPA, Q = 0, 15, 4.0, 0.1


def _measure(fn, repeats: int) -> dict:
    import tensorflow as tf

    fn()  # trace and compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    tf.config.experimental.reset_memory_stats("CPU:0")
    base = tf.config.experimental.get_memory_info("CPU:0")["current"]
    fn()
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - base
    return {"median_ms": 1e3 * statistics.median(times), "peak_bytes": int(peak)}


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from cdl_tf import ops
    from cdl_tf.io import atomic_write_json

    rng = np.random.RandomState(0)
    x = tf.Variable(rng.randn(*SHAPE).astype("float32"))
    q = tf.Variable(Q)
    alpha = tf.Variable(KAPPA / Q**2)
    seed = tf.constant([1, 2], tf.int64)
    input_bytes = int(np.prod(SHAPE)) * 4

    @tf.function
    def relu_fwd_bwd():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(tf.nn.relu(x)))
        return tape.gradient(loss, x)

    functions = {"relu": relu_fwd_bwd}

    def case(value, window, count_sample):
        """``(forward, forward+backward)`` of one value mode, window and count estimate."""
        def quantize():
            return ops.quantize_with_counts(tf.nn.relu(x), q, alpha, LO, HI, value=value, seed=seed,
                                            window=window, count_sample=count_sample)

        @tf.function
        def fwd():
            values, counts = quantize()
            return tf.reduce_sum(values), counts

        @tf.function
        def fwd_bwd():
            with tf.GradientTape() as tape:
                values, counts = quantize()
                loss = tf.reduce_sum(tf.square(values)) + ops.pmf_entropy_bits(counts / tf.reduce_sum(counts))
            return tape.gradient(loss, [x, q, alpha])

        return fwd, fwd_bwd

    for value, window, count_sample in [(v, w, n) for v in ("sample", "soft") for w in (5, None)
                                        for n in (None, FLAGS.count_sample)]:
        name = f"{value}_window{window or 'all'}" + ("_sampled" if count_sample else "")
        functions[name + "/fwd"], functions[name + "/fwd_bwd"] = case(value, window, count_sample)
    best = {}
    for _ in range(FLAGS.rounds):
        for key, fn in functions.items():
            m = _measure(fn, FLAGS.repeats)
            if key not in best or m["median_ms"] < best[key]["median_ms"]:
                best[key] = m
    baseline = best.pop("relu")
    cases = {}
    for key in [k for k in best if k.endswith("/fwd")]:
        name = key[:-len("/fwd")]
        f, fb = best[key], best[name + "/fwd_bwd"]
        cases[name] = {
            "forward_ms": f["median_ms"], "forward_peak_bytes": f["peak_bytes"],
            "forward_backward_ms": fb["median_ms"], "forward_backward_peak_bytes": fb["peak_bytes"],
            "forward_backward_vs_relu_time": fb["median_ms"] / baseline["median_ms"],
            "forward_backward_peak_vs_input": fb["peak_bytes"] / input_bytes,
        }
        print(f"{name:22s}: forward {f['median_ms']:.1f} ms, forward+backward "
              f"{fb['median_ms']:.1f} ms ({fb['median_ms'] / baseline['median_ms']:.1f}x ReLU), peak "
              f"{fb['peak_bytes'] / 2**20:.0f} MiB ({fb['peak_bytes'] / input_bytes:.1f}x input)", flush=True)
    report = {
        "values": int(np.prod(SHAPE)), "input_bytes": input_bytes, "alphabet": [LO, HI], "kappa": KAPPA,
        "count_sample": FLAGS.count_sample,
        "targets": {"forward_backward_vs_relu_time": 8.0, "forward_backward_peak_vs_input": 6.0},
        "repeats": FLAGS.repeats, "rounds": FLAGS.rounds,
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "relu_forward_backward": baseline, "cases": cases,
    }
    os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    atomic_write_json(FLAGS.out, report)


if __name__ == "__main__":
    app.run(main)
