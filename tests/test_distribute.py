"""tf.distribute: one device vs mirrored replicas, multi-worker training and resume, TPU-safe
counts, and the communication accounting of metrics.json.

Logical devices and multi-worker clusters must be configured before TensorFlow starts,
so those runs happen in fresh Python processes.
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import constriction
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import cdl_tf
from cdl_tf import communication, ops
from cdl_tf.distribute import initialize_quantizers, make_strategy
from cdl_tf.training import ConfigError, train_and_evaluate, validate_config
from conftest import config_module

lenet300_mnist = config_module("lenet300_mnist")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}

# Two logical CPUs and a small CDL model (R-CDL, no BatchNorm), for one device vs mirrored replicas.
PRELUDE = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
tf.config.experimental.enable_op_determinism()
import tf_keras as keras
import cdl_tf
from cdl_tf.distribute import initialize_quantizers
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # one for the process: their collectives' keys

def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu", name="fc")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    return cdl_tf.quantize_model(model, cdl_tf.CDLConfig(mode="rcdl", lambda_w=0.1, lambda_a=0.1))
"""

# One device vs two replicas on the same global batch, in a custom loop after `initialize_quantizers`.
MIRRORED = r"""
rng = np.random.RandomState(0)
x = tf.constant(rng.randn(16, 12, 12, 1).astype("float32"))
y = tf.constant(rng.randint(0, 10, 16))
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

def run(strategy):
    with strategy.scope():
        model = build()
    initialize_quantizers(model, strategy, x.numpy())
    replicas = strategy.num_replicas_in_sync

    def step(xb, yb):
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            task = tf.nn.compute_average_loss(loss_fn(yb, logits), global_batch_size=16)
            rates = tf.stack(model.losses)
            loss = task + tf.reduce_sum(rates) / replicas
        return task, rates, tape.gradient(loss, model.trainable_variables)

    data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(16))
    task, rates, grads = tf.function(lambda b: strategy.run(step, b))(next(iter(data)))
    per_replica = strategy.experimental_local_results(rates)
    return {
        "task": float(strategy.reduce("SUM", task, None)),
        "rates": strategy.experimental_local_results(rates)[0].numpy().tolist(),
        "rate_spread": float(max(np.max(np.abs(r.numpy() - per_replica[0].numpy())) for r in per_replica)),
        "grads": [strategy.reduce("SUM", g, None).numpy().ravel().tolist() for g in grads],
        "replicas": replicas,
    }

one = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
two = run(mirrored)
print(json.dumps({"one": one, "two": two}))
"""

# TF-MOT's flow, `quantize_model` under the strategy's scope, `compile`, then `fit` or `evaluate` with
# no other call, on two replicas vs one device without a strategy; and a custom loop's refused step.
NATURAL = r"""
rng = np.random.RandomState(0)
x = rng.randn(32, 12, 12, 1).astype("float32")
y = rng.randint(0, 10, 32)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

def run(strategy, action):
    with strategy.scope():
        model = build()
        model.compile(keras.optimizers.SGD(0.1), loss)
    if action == "fit":  # two steps of 16: the first initialises the quantizers, the second does not
        logs = model.fit(x, y, batch_size=16, shuffle=False, verbose=0).history
    else:
        logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    return {"weights": [w.astype("float64").ravel().tolist() for w in model.get_weights()], "logs": logs}

out = {action: {"one": run(tf.distribute.get_strategy(), action), "two": run(mirrored, action)}
       for action in ("fit", "evaluate")}
with mirrored.scope():
    model = build()
batches = iter(mirrored.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(16)))
try:
    tf.function(lambda b: mirrored.run(lambda xb: model(xb, training=True), (b,)))(next(batches))
    out["refused"] = ""
except RuntimeError as e:
    out["refused"] = str(e)
print(json.dumps(out))
"""

# One worker of a multi-worker run: argv = workdir, JSON config overrides[, "stop"]; cluster from TF_CONFIG.
# With "stop", the worker waits (until it is killed) as soon as its first epoch's backup is written.
WORKER = r"""
import json, sys, time
import tf_keras as keras
sys.path.insert(0, "tests")
from conftest import config_module
if sys.argv[3:] == ["stop"]:
    back_up = keras.callbacks.BackupAndRestore._backup

    def back_up_and_wait(self, epoch, batch=0):
        back_up(self, epoch, batch)
        open(sys.argv[1] + f"/stopped_{self.model.distribute_strategy.cluster_resolver.task_id}", "w").close()
        time.sleep(3600)

    keras.callbacks.BackupAndRestore._backup = back_up_and_wait
from cdl_tf.training import train_and_evaluate
c = config_module("lenet300_mnist").get_config()
for key, value in json.loads(sys.argv[2]).items():
    c[key] = value
train_and_evaluate(c, sys.argv[1])
"""


def _python(code: str, *args: str, timeout: float = 150) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def replicas():
    """``(MIRRORED's output, NATURAL's)``, run one after the other in one process (whose kernels for the
    model compile once)."""
    lines = _python(PRELUDE + MIRRORED + NATURAL, timeout=300).strip().splitlines()
    return json.loads(lines[-2]), json.loads(lines[-1])


@pytest.mark.slow
def test_mirrored_replicas_match_one_device(replicas):
    one, two = replicas[0]["one"], replicas[0]["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert abs(one["task"] - two["task"]) < 1e-5
    # Every replica adds the rate of the global batch: the replicas' copies agree up to float32
    # rounding (a few ulps of rates of order 1), far inside the 1e-5 asked of replicas vs one device.
    assert two["rate_spread"] <= 1e-6
    np.testing.assert_allclose(two["rates"], one["rates"], rtol=0, atol=1e-5)
    assert len(one["rates"]) == 6 and min(one["rates"]) > 0  # 3 weight + 3 activation terms
    for g1, g2 in zip(one["grads"], two["grads"]):
        np.testing.assert_allclose(g2, g1, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("action", ["fit", "evaluate"])
def test_tfmot_flow_under_a_strategy_scope_matches_one_device(replicas, action):
    """No `initialize_quantizers`: the first step initialises the quantizers from the global batch."""
    one, two = replicas[1][action]["one"], replicas[1][action]["two"]
    assert len(one["weights"]) == len(two["weights"]) > 20  # kernels, biases and every quantizer's variables
    for w1, w2 in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(w2, w1, rtol=0, atol=1e-5)
    flat = lambda logs: np.ravel([logs[k] for k in sorted(logs)])
    assert sorted(one["logs"]) == sorted(two["logs"])
    np.testing.assert_allclose(flat(two["logs"]), flat(one["logs"]), rtol=1e-4)


@pytest.mark.slow
def test_a_custom_replica_step_before_initialisation_says_what_to_call(replicas):
    lines = [l for l in replicas[1]["refused"].splitlines() if "initialize_quantizers(model, strategy" in l]
    assert lines and "quant_conv/kernel: quantizer used in a tf.distribute replica step" in lines[0]


def _free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(workdir, data_dir, *args, **overrides) -> list:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    config = {"strategy": "multiworker", "data_dir": str(data_dir), "train_subset": 256, "test_subset": 128, "validation_size": 256,
              "batch_size": 64, "bn_reestimate_steps": 0, "verbose": 0, "split_at": "fc2", **overrides}
    procs = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(workdir), json.dumps(config), *args], env=env,
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs, timeout: float = 240) -> None:
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_two_workers_agree_and_resume_from_backup_after_a_kill(tmp_path, data_dir):
    """Two workers on 127.0.0.1 train a CDL model; both wait once epoch 1 is backed up and are killed.

    A lost worker leaves the chief's collectives waiting, so the cluster is restarted as a
    whole (worker 1 is killed first, then the chief). Restarted, the workers train only the
    epoch that was not backed up and end with identical weights.
    """
    procs = _start_workers(tmp_path, data_dir, "stop", epochs=2)
    stopped = [tmp_path / f"stopped_{index}" for index in range(2)]
    deadline = time.time() + 240
    while time.time() < deadline and not all(path.exists() for path in stopped):
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[0][-3000:]  # a worker waits once backed up
        time.sleep(0.05)
    assert all(path.exists() for path in stopped), "the workers wrote no backup"
    backup = tmp_path / "backup"
    assert (backup / "chief" / "checkpoint").exists()  # the chief's backup of the epoch-1 state
    for proc in reversed(procs):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "metrics.json").exists()
    logged = json.loads((tmp_path / "epochs.json").read_text())["epochs"]  # logged before its backup
    _finish(_start_workers(tmp_path, data_dir, epochs=2))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    epochs = json.loads((tmp_path / "epochs.json").read_text())["epochs"]
    assert epochs[0] == logged[0] and [e["epoch"] for e in epochs] == [0, 1]  # epoch 1 was not run again
    assert len(metrics["history"]["loss"]) == 2  # the history still covers both epochs
    assert metrics["replicas"] == 2 and metrics["strategy"] == "multiworker"
    assert metrics["test_accuracy"] > 0.3 and metrics["communication"]["split"]["site"] == "fc2"
    assert not list(backup.rglob("*.index"))
    weights = []
    for path in (tmp_path / "model.keras", tmp_path / "workers" / "1" / "model.keras"):
        with cdl_tf.quantize_scope():
            weights.append(keras.models.load_model(path, compile=False).get_weights())
    assert len(weights[0]) == len(weights[1]) > 0
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def _replica_step(mode: str):
    """A jit-compiled training step of a small CDL model run by `strategy.run`, as TPUStrategy compiles it."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.Flatten()(h)))
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        qmodel = cdl_tf.quantize_model(model, cdl_tf.CDLConfig(mode=mode, lambda_w=0.1, lambda_a=0.1))
    x = np.random.RandomState(1).randn(16, 8, 8, 1).astype("float32")
    y = np.arange(16) % 3
    initialize_quantizers(qmodel, strategy, x)

    def replica(x, y):
        with tf.GradientTape() as tape:
            logits = qmodel(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)) + tf.add_n(qmodel.losses)
        return loss, tape.gradient(loss, qmodel.trainable_variables)

    return tf.function(lambda x, y: strategy.run(replica, (x, y)), jit_compile=True), x, y


@pytest.mark.slow
def test_tpu_formulation_compiles_the_step_with_static_shapes(monkeypatch):
    """XLA (TPUStrategy's compiler) cannot size `bincount` in a step; under TPUStrategy counts are segment sums."""
    step, x, y = _replica_step("cdl")
    with pytest.raises(tf.errors.InvalidArgumentError, match="compile time"):
        step(x, y)
    monkeypatch.setattr(ops, "_on_tpu", lambda: True)
    step, x, y = _replica_step("cdl")
    loss, grads = step(x, y)
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g.numpy())) for g in grads)
    assert "<=" not in step.experimental_get_compiler_ir(x, y)(stage="hlo")  # no bounded-dynamic shapes


def test_tpu_counts_equal_bincount_counts(monkeypatch):
    theta = tf.constant(np.random.RandomState(0).randn(4000).astype("float32"))
    q, alpha = tf.constant(0.3), tf.constant(40.0)

    def counts():
        return ops.quantize_with_counts(theta, q, alpha, -7, 7, window=5)[1], ops.hard_index_counts(theta, q, -7, 7)

    expected = counts()
    monkeypatch.setattr(ops, "_on_tpu", lambda: True)
    for e, g in zip(expected, counts()):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-6)


def test_make_strategy_names():
    assert make_strategy("default") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="horovod"):
        make_strategy("horovod")


def _small(data_dir, **overrides):
    c = lenet300_mnist.get_config()
    c.data_dir = str(data_dir)
    c.train_subset, c.test_subset, c.epochs, c.batch_size, c.verbose = 256, 200, 1, 64, 0
    c.validation_size = 256
    c.mode, c.bn_reestimate_steps = "rcdl", 0
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.mark.slow
def test_split_at_must_name_an_activation_site(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="config.split_at"):
        validate_config(_small(data_dir, mode="float", split_at="fc1"))
    with pytest.raises(ConfigError, match=r"config\.split_at: 'flatten' is not an activation site.*'fc1'"):
        train_and_evaluate(_small(data_dir, split_at="flatten"), str(tmp_path))


@pytest.mark.slow
def test_metrics_report_broadcast_and_split_bits(tmp_path, data_dir):
    train_and_evaluate(_small(data_dir, split_at="fc2"), str(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    broadcast, split = saved["communication"]["broadcast"], saved["communication"]["split"]
    # Format 4 codes kernel columns as multisets, so the file may go below sum N H (not below it minus
    # the order of the units, log2(n!) per layer: at most 300! and 100! here) but stays near it.
    order_bits = sum(math.lgamma(n + 1) / math.log(2) for n in (300, 100))
    assert broadcast["entropy_bound_bits"] - order_bits <= broadcast["cdlz_bits"] < broadcast["int8_bits"]
    assert broadcast["int8_bits"] < broadcast["float32_bits"]
    assert broadcast["float32_bits"] == 32 * (broadcast["quantized_values"] + broadcast["float_values"])
    assert split["site"] == "fc2" and split["values"] == 100 and split["examples"] == 200
    assert split["float32_bits"] == 32 * split["values"] and split["int8_bits"] == 8 * split["values"]
    # ANS reaches the bound N H within its final state (<= 64 bits) and word rounding.
    assert split["entropy_bound_bits"] - 1 < split["coded_bits"] < split["entropy_bound_bits"] + 96
    assert split["coded_bits"] < split["int8_bits"]
    assert any((tmp_path / "tensorboard" / "communication").iterdir())


def test_split_coding_decodes_to_the_site_indices():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.Flatten()(x)))
    qmodel = cdl_tf.quantize_model(model, cdl_tf.CDLConfig(mode="rcdl"))
    x = np.random.RandomState(1).randn(20, 8, 8, 1).astype("float32")
    qmodel(x, training=False)
    idx, quantizer = communication.site_indices(qmodel, "quant_conv", x, batch_size=7)
    assert idx.shape == (20, 6, 6, 4) and idx.min() >= quantizer.lo and idx.max() <= quantizer.hi
    symbols = (idx - quantizer.lo).reshape(20, -1)
    counts = np.bincount(symbols.ravel(), minlength=quantizer.hi - quantizer.lo + 1)
    sizes = []
    for example in symbols:
        words = communication.ans_encode(example, counts)
        decoder = constriction.stream.stack.AnsCoder(words)
        pmf = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
        np.testing.assert_array_equal(decoder.decode(pmf, symbols.shape[1]), example)
        assert decoder.is_empty()
        sizes.append(32 * words.size)
    split = communication.split_bits(qmodel, "conv", x)
    assert split["coded_bits"] == pytest.approx(np.mean(sizes)) and split["values"] == 144
