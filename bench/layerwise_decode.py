"""Peak memory of decoding a ``.cdlz`` file: the whole model at once against layer by layer.

Methods, each on one batch of test images in a fresh process:

* ``full``: what `tflite_export.decode.decode_model` does (read and decode every tensor, set
  them into the Keras model built from the run's config), then the Keras ``Q_u`` inference;
* ``layerwise``: `tflite_export.layerwise.LayerwiseModel` on the file read lazily, each
  layer's tensors decoded just before it runs and released after.

Measured is the memory that holds weights while decoding and inferring, the sum of: the peak
of the bytes TensorFlow's CPU allocator holds (variables, constants, tensors; run with
``TF_CPU_ALLOCATOR_USE_BFC=true``, without which it counts no allocation below 256 KB) above
what it held before the architecture was built; the peak ``tracemalloc`` traces meanwhile
(numpy arrays of decoded tensors and their decoding, the file's bytes, Python objects); and
the int32 symbols of the largest quantized tensor (4 B per index), which the entropy decoder
(constriction) allocates unseen by ``tracemalloc`` and which both methods hold while decoding
that tensor. The sum bounds the joint peak from above. Both methods first build the
architecture from the config (``full``: the Keras model; ``layerwise``: its layers'
configurations, the model and its untrained variables released), then start counting, so
``full`` counts the Keras variables that hold its decoded weights and neither counts the
building. Each figure is the largest of ``--repeats`` identical runs in the process after a
first one that warms up TensorFlow's kernels (whether TensorFlow copies a numpy array or
shares its buffer depends on the array's alignment, which moves a peak by up to one kernel
between runs); a batch of one image keeps activations small. The process's peak
resident set size (``VmHWM``) is reported for comparison: the TensorFlow runtime and the
dataset make it hundreds of MB, against about 1 MB of float32 weights, so it cannot tell the
methods apart.

Files: ``--runs=NAME=CDLZ:RUN_DIR,...`` (a trained run's coded file, and the run whose
``config.json`` gives the architecture) and ``--untrained=CONFIG,...`` (configs of
``configs/``, e.g. ``resnet20_cifar10``, whose untrained model, its quantizer steps set on
256 training images, is coded into a temporary directory). Ratios are layerwise / full,
measured in the same run; the two methods' outputs are compared on ``--agreement_images``
test images (largest logit difference, share of equal argmax):

    python bench/layerwise_decode.py [--runs=lenet5=/tmp/r/export/weights.cdlz:/tmp/r/3_small_hard]
        [--untrained=resnet20_cifar10,lenet300_mnist] [--batch_size=1]
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("full", "layerwise")

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", [], "Trained files as NAME=CDLZ:RUN_DIR (RUN_DIR holds the run's config.json).")
flags.DEFINE_list("untrained", ["resnet20_cifar10"], "Configs of configs/ coded untrained (steps set on data).")
flags.DEFINE_integer("batch_size", 1, "Test images per measured inference.")
flags.DEFINE_integer("repeats", 3, "Measured runs per process (after one that warms up); the largest peaks count.")
flags.DEFINE_integer("agreement_images", 1000, "Test images on which the two methods' outputs are compared.")
flags.DEFINE_string("data_dir", os.environ.get("CDL_DATA_DIR", ""), "Datasets directory ('' -> TFDS).")
flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results", "layerwise_decode.json"),
                    "Output JSON.")
flags.DEFINE_string("measure", None, "Internal: METHOD:CDLZ:RUN_DIR to measure in this process, printed as JSON.")


def _test_batch(config, n: int, data_dir: str):
    from cdl_tf import data as cdl_data

    ds = cdl_data.make_dataset(config.dataset, "test", n, data_dir=data_dir or config.data_dir or None,
                               training=False, subset=n)
    return next(iter(ds))[0].numpy()


def measure(method: str, cdlz: str, like: str, batch_size: int, data_dir: str, repeats: int) -> dict:
    """Peak weight-holding bytes of ``method`` on one batch: the largest of ``repeats`` runs after a first one."""
    if os.environ.get("TF_CPU_ALLOCATOR_USE_BFC") != "true":
        raise RuntimeError("measure in a process started with TF_CPU_ALLOCATOR_USE_BFC=true")
    import gc
    import tracemalloc

    import tensorflow as tf

    from cdl_tf import coding
    from cdl_tf.coded_model import apply_coded
    from cdl_tf.run_config import read_run_config
    from tflite_export.decode import run_model
    from tflite_export.layerwise import Architecture, LayerwiseModel

    def tf_bytes(key: str) -> int:
        return tf.config.experimental.get_memory_info("CPU:0")[key]

    def architecture():
        """The Keras model (full) or its `Architecture` (layerwise), the garbage of building it collected."""
        built = run_model(like)[0]
        if method == "layerwise":
            built = Architecture.from_model(built)
        gc.collect()
        return built

    def decode_and_infer(built, x):
        if method == "full":
            coded = coding.read(cdlz)  # kept during inference, as decode_model returns it
            apply_coded(built, coded)
            return built(x, training=False)
        return LayerwiseModel(built, coding.read(cdlz, lazy=True))(x)

    x = tf.constant(_test_batch(read_run_config(like), batch_size, data_dir))
    tf_peaks, host_peaks = [], []
    for _ in range(1 + repeats):
        gc.collect()
        base = tf_bytes("current")
        built = architecture()
        tf.config.experimental.reset_memory_stats("CPU:0")
        tracemalloc.start()
        decode_and_infer(built, x)
        host_peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        tf_peaks.append(tf_bytes("peak") - base)
        del built
    return {"tf_peak_bytes": int(max(tf_peaks[1:])), "host_peak_bytes": int(max(host_peaks[1:])),
            "peak_rss_bytes": _peak_rss_bytes()}


def _peak_rss_bytes() -> int:
    """The process's peak resident set size (``VmHWM``; ``ru_maxrss`` would carry the parent's over ``exec``)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _file_facts(cdlz: str, like: str) -> dict:
    """The coded file's size, the float32 bytes of its tensors, and those of its largest layer."""
    import numpy as np

    from cdl_tf import coding

    coded = coding.read(cdlz, lazy=True)
    per_layer: dict = {}
    largest_quantized = 0
    for name in coded:
        t = coded[name]
        per_layer[name.rsplit("/", 1)[0]] = per_layer.get(name.rsplit("/", 1)[0], 0) + int(np.prod(t.shape))
        if isinstance(t, coding.QuantizedTensor):
            largest_quantized = max(largest_quantized, t.indices.size)
    return {"cdlz": cdlz, "run": like, "coded_bytes": coded.total_bytes,
            "float32_weight_bytes": 4 * sum(per_layer.values()),
            "largest_layer": max(per_layer, key=per_layer.get),
            "largest_layer_float32_bytes": 4 * max(per_layer.values()),
            "decoder_buffer_bytes": 4 * largest_quantized}


def _agreement(cdlz: str, like: str, n: int, data_dir: str) -> dict:
    """How the layer-wise outputs differ from the decoded Keras model's on ``n`` test images."""
    import numpy as np

    from cdl_tf.run_config import read_run_config
    from tflite_export.decode import decode_model, layerwise_model

    x = _test_batch(read_run_config(like), n, data_dir)
    model = decode_model(cdlz, like)[0]
    layerwise = layerwise_model(cdlz, like)[0]
    a = np.concatenate([model(x[i : i + 500], training=False).numpy() for i in range(0, n, 500)])
    b = np.concatenate([layerwise(x[i : i + 500]).numpy() for i in range(0, n, 500)])
    return {"logits_max_abs_diff": float(np.abs(a - b).max()), "logits_max_abs": float(np.abs(a).max()),
            "argmax_agreement": float(np.mean(a.argmax(1) == b.argmax(1)))}


def _write_untrained(config_name: str, workdir: str, data_dir: str) -> tuple[str, str]:
    """``config.json`` and ``weights.cdlz`` of the untrained model of ``configs/<config_name>.py``."""
    import importlib.util

    import tf_keras as keras

    from cdl_tf import coding
    from cdl_tf import data as cdl_data
    from cdl_tf.coded_model import coded_tensors
    from cdl_tf.training import build_model, validate_config

    spec = importlib.util.spec_from_file_location(config_name, os.path.join(REPO, "configs", f"{config_name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # configs/ is read by path, as --config= reads it
    c = module.get_config()
    c.data_dir = data_dir
    keras.utils.set_random_seed(c.seed)
    model = build_model(c, validate_config(c))
    ds = cdl_data.make_dataset(c.dataset, "train", 256, data_dir=data_dir or None, training=False, subset=256)
    model(next(iter(ds))[0], training=False)  # the first call sets every quantizer's step q
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json())
    cdlz = os.path.join(workdir, "weights.cdlz")
    coding.write(cdlz, coded_tensors(model))
    return cdlz, workdir


def _measured(method: str, cdlz: str, like: str) -> dict:
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, __file__, f"--measure={method}:{cdlz}:{like}", f"--batch_size={FLAGS.batch_size}",
         f"--data_dir={FLAGS.data_dir}", f"--repeats={FLAGS.repeats}"],
        check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.measure:
        method, cdlz, like = FLAGS.measure.split(":", 2)
        print(json.dumps(measure(method, cdlz, like, FLAGS.batch_size, FLAGS.data_dir, FLAGS.repeats)))
        return
    from cdl_tf.io import atomic_write_json

    runs = {}
    for spec in FLAGS.runs:
        name, sep, paths = spec.partition("=")
        cdlz, sep2, like = paths.partition(":")
        if not (sep and sep2 and os.path.isfile(cdlz) and os.path.isfile(os.path.join(like, "config.json"))):
            raise app.UsageError(f"--runs: {spec!r} is not NAME=CDLZ:RUN_DIR with a .cdlz file and a run's config.json")
        runs[name] = ("trained run", cdlz, like)
    report = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "batch_size": FLAGS.batch_size, "agreement_images": FLAGS.agreement_images,
              "repeats": FLAGS.repeats,
              "measure": "peak TF CPU allocator bytes (TF_CPU_ALLOCATOR_USE_BFC=true) above the bytes held before "
                         "the architecture was built + tracemalloc peak, over decoding and inference of one batch, "
                         "largest of --repeats runs after a warm-up, in a fresh process per method; + "
                         "decoder_buffer_bytes, the int32 symbols of the largest quantized tensor, which "
                         "constriction allocates unseen by tracemalloc",
              "models": {}}
    with tempfile.TemporaryDirectory(prefix="layerwise_decode_") as scratch:
        for config_name in FLAGS.untrained:
            cdlz, like = _write_untrained(config_name, os.path.join(scratch, config_name), FLAGS.data_dir)
            runs[f"{config_name}_untrained"] = (
                "untrained, quantizer steps set on 256 training images, coded into a temporary directory", cdlz, like)
        for name, (source, cdlz, like) in runs.items():
            facts = _file_facts(cdlz, like)
            results = {m: _measured(m, cdlz, like) for m in METHODS}
            for r in results.values():
                r["peak_bytes"] = r["tf_peak_bytes"] + r["host_peak_bytes"] + facts["decoder_buffer_bytes"]
            full, layerwise = results["full"], results["layerwise"]
            report["models"][name] = {
                "source": source, **facts, "results": results,
                "peak_ratio": layerwise["peak_bytes"] / full["peak_bytes"],
                "tf_peak_ratio": layerwise["tf_peak_bytes"] / full["tf_peak_bytes"],
                "host_peak_ratio": layerwise["host_peak_bytes"] / full["host_peak_bytes"],
                "peak_rss_ratio": layerwise["peak_rss_bytes"] / full["peak_rss_bytes"],
                **_agreement(cdlz, like, FLAGS.agreement_images, FLAGS.data_dir),
            }
            print(f"{name}: peak {full['peak_bytes']:,} B full, {layerwise['peak_bytes']:,} B layer-wise "
                  f"({report['models'][name]['peak_ratio']:.2f}x)", flush=True)
    os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    atomic_write_json(FLAGS.out, report)


if __name__ == "__main__":
    app.run(main)
