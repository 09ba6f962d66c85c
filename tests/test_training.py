"""Config validation, short real-data training in every mode, resume, metrics.json."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import cdl_tf
from cdl_tf.experiment_config import CDL_MODES, MODES
from cdl_tf.recipes import ABLATIONS, BASELINES, RECIPE_VARIANTS
from cdl_tf.training import ConfigError, _datasets, evaluate_workdir, train_and_evaluate, validate_config
from cdl_tf.tools.train import summary
from conftest import config_module

lenet300_mnist = config_module("lenet300_mnist")
lenet5_mnist = config_module("lenet5_mnist")
resnet20_cifar10 = config_module("resnet20_cifar10")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small(config_module, data_dir, variant="", **overrides):
    c = config_module.get_config(variant)
    c.data_dir = str(data_dir)
    c.train_subset, c.test_subset, c.epochs, c.batch_size, c.verbose = 1024, 500, 1, 128, 0
    c.validation_size, c.bn_reestimate_steps = 500, 2
    for key, value in overrides.items():
        target = c
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return c


@pytest.mark.parametrize(
    "override,field",
    [
        ({"mode": "int4"}, "config.mode"),
        ({"model": "vgg"}, "config.model"),
        ({"dataset": "svhn"}, "config.dataset"),
        ({"epochs": 0}, "config.epochs"),
        ({"optimizer.name": "lamb"}, "config.optimizer.name"),
        ({"optimizer.learning_rate": -1.0}, "config.optimizer.learning_rate"),
        ({"cdl.weight_bits": 12}, "weight_bits"),
        ({"cdl.lambda_a": -0.1}, "lambda_a"),
        ({"init_from": "/nonexistent"}, "config.init_from"),
        ({"strategy": "horovod"}, "config.strategy"),
        ({"augment": "yes"}, "config.augment"),
        ({"validation_size": -1}, "config.validation_size"),
        ({"validation_size": 60_000}, "config.validation_size"),
        ({"dataset": "cifar10", "validation_size": 50_000}, "config.validation_size"),
        ({"validation_size": 59_000, "train_subset": 1001}, "config.train_subset"),
    ],
)
def test_config_validation_names_the_field(data_dir, override, field):
    c = small(lenet5_mnist, data_dir, **override)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config(c)


def test_experiment_config_exposes_every_cdl_field(data_dir):
    import dataclasses

    from cdl_tf.config import CDLConfig

    c = small(lenet5_mnist, data_dir)
    fields = {f.name for f in dataclasses.fields(CDLConfig)}
    assert fields - {"mode", "seed"} == set(c.cdl.keys())  # mode and seed are top-level fields
    c.cdl.skip_layers = ("conv1",)
    c.cdl.layer_bits = {"conv2": (3, 2)}
    cdl = validate_config(c)
    assert cdl.skip_layers == ("conv1",) and cdl.layer_bits == {"conv2": (3, 2)} and cdl.seed == c.seed


def test_unknown_cdl_field_and_cdl_mode_are_rejected(data_dir):
    c = small(lenet5_mnist, data_dir)
    c.unlock()
    c.cdl.weight_bitz = 3
    with pytest.raises(ConfigError, match="weight_bitz"):
        validate_config(c)
    c = small(lenet5_mnist, data_dir)
    c.cdl.mode = "rcdl"
    with pytest.raises(ConfigError, match="config.mode"):
        validate_config(c)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """``run(mode)``: ``(workdir, config, metrics)`` of the `small` LeNet-300-100 run in ``mode``, trained
    once for the module (tests that change a run copy it)."""
    done = {}

    def get(mode):
        if mode not in done:
            c = small(lenet300_mnist, data_dir, mode=mode)
            c.cdl.quantize_activations = mode != "epr"  # EPR codes weights only
            workdir = tmp_path_factory.mktemp(mode)
            done[mode] = workdir, c, train_and_evaluate(c, str(workdir))
        return done[mode]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_short_training_in_each_mode_writes_metrics(run, mode):
    workdir, c, metrics = run(mode)
    saved = json.loads((workdir / "metrics.json").read_text())
    _, _, test = _datasets(c)
    assert sum(len(y) for _, y in test) == c.test_subset
    assert saved["mode"] == mode and saved["epochs"] == 1
    assert 0.5 < saved["test_accuracy"] <= 1.0  # 1024 MNIST examples, one epoch: far above chance
    assert saved["test_error"] == pytest.approx(1 - saved["test_accuracy"])
    assert saved["params"] > 266_000 and saved["train_time_s"] > 0
    # Training validated on the validation split, not the test set: its last epoch's
    # validation loss is the final model's on the validation split (no BatchNorm to re-estimate).
    assert saved["history"]["val_loss"][-1] == pytest.approx(saved["validation_loss"], rel=1e-5)
    assert saved["validation_loss"] != pytest.approx(saved["test_loss"], rel=1e-3)
    assert 0.5 < saved["validation_accuracy"] <= 1.0
    assert saved["validation_error"] == pytest.approx(1 - saved["validation_accuracy"])
    assert (workdir / "model.keras").is_file() and (workdir / "config.json").is_file()
    if mode in CDL_MODES:
        assert 0 < saved["bits_per_weight"] <= 8
        assert saved["bits_per_activation"] is None if mode == "epr" else 0 < saved["bits_per_activation"] <= 8
        assert saved["quantized_weights"] == 784 * 300 + 300 * 100 + 100 * 10
        kernels = {row["name"]: row["count"] for row in saved["layers"] if row["kind"] == "weight"}
        assert kernels == {"quant_fc1/kernel": 784 * 300, "quant_fc2/kernel": 300 * 100, "quant_logits/kernel": 100 * 10}
        assert {"loss", "accuracy", "bits_per_weight", "val_accuracy"} <= set(saved["history"])
        assert summary(metrics).endswith("bits/weight" if mode == "epr" else
                                         f"{metrics['bits_per_activation']:.3f} bits/activation")
    else:
        assert "bits_per_weight" not in saved
    # The saved model, reloaded and evaluated again on the same test images, gives the same figures.
    again = evaluate_workdir(str(workdir))
    assert again["test_accuracy"] == pytest.approx(saved["test_accuracy"])
    assert again["validation_accuracy"] == pytest.approx(saved["validation_accuracy"])
    assert again.get("bits_per_weight") == pytest.approx(saved.get("bits_per_weight"))


@pytest.mark.slow
def test_without_validation_split_and_config_of_an_older_run(tmp_path, data_dir):
    from cdl_tf.lineage import lineage
    from cdl_tf.run_config import read_run_config

    metrics = train_and_evaluate(small(lenet300_mnist, data_dir, mode="float", validation_size=0), str(tmp_path))
    assert not [k for k in metrics["history"] if k.startswith("val_")]
    assert metrics["validation_accuracy"] is None and 0.5 < metrics["test_accuracy"] <= 1.0
    # A run made before validation_size existed trained on every training image: it reads as 0.
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    assert config["validation_size"] == 0
    new_lineage = lineage(str(tmp_path))
    del config["validation_size"]
    path.write_text(json.dumps(config))
    assert read_run_config(str(tmp_path)).validation_size == 0
    assert lineage(str(tmp_path)) == new_lineage
    again = evaluate_workdir(str(tmp_path))
    assert again["test_accuracy"] == pytest.approx(metrics["test_accuracy"]) and again["validation_accuracy"] is None


@pytest.mark.slow
def test_cdl_run_continues_in_another_mode(run, data_dir):
    import tf_keras as keras

    from cdl_tf.quantize import quantize_scope, model_quantizers
    from cdl_tf.training import build_model

    first = run("rcdl")[0]
    with quantize_scope():
        source = keras.models.load_model(str(first / "model.keras"), compile=False)
    steps = {name: float(v["log_q"].numpy()) for name, _, v in model_quantizers(source)}

    second = small(lenet300_mnist, data_dir, mode="ste", init_from=str(first))
    second.cdl.lambda_w, second.cdl.init_kappa = 0.2, 8.0
    model = build_model(second, validate_config(second))
    for w, v in zip(source.get_weights()[:2], model.get_weights()[:2]):
        np.testing.assert_array_equal(w, v)
    for name, quantizer, v in model_quantizers(model):
        assert float(v["log_q"].numpy()) == steps[name], name  # steps carry over
        assert float(np.exp(v["log_softness"].numpy())) == pytest.approx(8.0), name  # softness is the new config's
        expected = 0.2 if quantizer.kind == "weight" else second.cdl.lambda_a
        assert float(v["rate_weight"].numpy()) == pytest.approx(expected), name

    other_plan = small(lenet300_mnist, data_dir, mode="ste", init_from=str(first))
    other_plan.cdl.quantize_biases = True
    with pytest.raises(ConfigError, match="another quantization plan"):
        build_model(other_plan, validate_config(other_plan))
    other_bits = small(lenet300_mnist, data_dir, mode="ste", init_from=str(first))
    other_bits.cdl.weight_bits = 2
    with pytest.raises(ConfigError, match=r"do not contain: .*quant_fc2/kernel \[\(-7, 7\) -> \(-1, 1\)\]"):
        build_model(other_bits, validate_config(other_bits))
    # More bits: the run's points i q are all on the larger grids; only values that the old
    # alphabet clipped at its ends may now round to the new outer points.
    more_bits = small(lenet300_mnist, data_dir, mode="ste", init_from=str(first))
    more_bits.cdl.weight_bits, more_bits.cdl.activation_bits = 5, 5
    wider = build_model(more_bits, validate_config(more_bits))
    alphabets = {name: (q.lo, q.hi) for name, q, _ in model_quantizers(wider)}
    assert alphabets["quant_fc2/kernel"] == (-15, 15)
    assert any(hi == 31 for lo, hi in alphabets.values())  # a 5-bit activation site
    old_alphabets = {name: (q.lo, q.hi) for name, q, _ in model_quantizers(source)}
    old_indices, new_indices = cdl_tf.hard_indices(source), cdl_tf.hard_indices(wider)
    for name, old in old_indices.items():
        inner = (old > old_alphabets[name][0]) & (old < old_alphabets[name][1])
        assert inner.mean() > 0.5, name
        np.testing.assert_array_equal(new_indices[name][inner], old[inner], err_msg=name)
    for name, _, v in model_quantizers(wider):
        assert float(v["log_q"].numpy()) == steps[name], name
    float_mode = small(lenet300_mnist, data_dir, mode="float", init_from=str(first))
    float_cdl = validate_config(float_mode)
    with pytest.raises(ConfigError, match="needs a CDL mode"):
        build_model(float_mode, float_cdl)


@pytest.mark.parametrize("module,variant", [(m, v) for m in (lenet5_mnist, lenet300_mnist)
                                            for v in RECIPE_VARIANTS]
                         + [(resnet20_cifar10, v) for v in resnet20_cifar10.VARIANTS])
def test_every_config_variant_validates(module, variant):
    from cdl_tf.tools import pipeline

    config = module.get_config(variant)
    if module is resnet20_cifar10 and variant == "long":
        pipeline.validate_recipe(config)
        assert config.phase_order == ("float", "rcdl", "hard") and config.phases.float.epochs >= 60
        assert [config.phases[n].mode for n in config.phase_order] == ["float", "rcdl", "ste"]
    elif pipeline.is_recipe(config):
        pipeline.validate_recipe(config)
        assert config.phase_order == ("float", "small", "small_hard")
        modes = [config.phases[n].mode for n in config.phase_order]
        expected = {"ablation_ste": ["float", "ste", "ste"], "baseline_epr": ["float", "epr", "epr"]}
        assert modes == expected.get(variant, ["float", "rcdl", "ste"])
        full = module.get_config("recipe_full")
        rates = [config.phases[n].cdl.lambda_w for n in ("small", "small_hard")]
        full_rates = [full.phases[n].cdl.lambda_w for n in ("small", "small_hard")]
        assert rates == ([0.0, 0.0] if variant == "ablation_no_rate" else full_rates)
        assert min(full_rates) > 0
        if variant in ABLATIONS or variant in BASELINES:  # the rest of the recipe is recipe_full's
            changed = {f"{n}.{f}" for n, fields in {**ABLATIONS, **BASELINES}[variant].items() for f in fields}
            flat, flat_full = config.phases.to_dict(), full.phases.to_dict()
            differ = {f"{n}.{k}" for n in flat for k, v in _flatten(flat[n]).items()
                      if _flatten(flat_full[n])[k] != v}
            assert differ == changed
    else:
        validate_config(config)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_unknown_config_variant_is_named():
    with pytest.raises(ValueError, match="unknown config variant 'tiny'.*small_hard"):
        lenet300_mnist.get_config("tiny")


@pytest.mark.slow
def test_batchnorm_model_trains_and_reestimates(tmp_path, data_dir, monkeypatch):
    """After training, every BatchNorm's moving statistics are replaced by the average statistics of
    the hard-quantized model's batches, and the saved model holds them."""
    import tf_keras as keras

    from cdl_tf import training
    from cdl_tf.quantize import quantize_scope
    from cdl_tf.layer_registry import layer_edges

    seen = {}

    def spy(model, data, steps):
        bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
        seen["before"] = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
        seen["batches"] = []

        def recorded():
            for batch in data:
                seen["batches"].append(batch[0].numpy())
                yield batch

        seen["used"] = reestimate_batchnorm(model, recorded(), steps=steps)
        seen["model"], seen["bns"] = model, bns
        return seen["used"]

    reestimate_batchnorm = training.reestimate_batchnorm
    monkeypatch.setattr(training, "reestimate_batchnorm", spy)
    c = small(lenet5_mnist, data_dir, model="resnet8", dataset="cifar10", mode="rcdl", train_subset=128,
              test_subset=64, validation_size=64, batch_size=32)
    c.cdl.activation_window = 3
    metrics = train_and_evaluate(c, str(tmp_path))
    assert metrics["bits_per_weight"] > 0 and seen["used"] == c.bn_reestimate_steps == 2
    model, bns = seen["model"], seen["bns"]
    assert len(bns) == 9  # 7 on the main path, 2 on the projections
    for bn, (mean, var) in zip(bns, seen["before"]):
        assert not np.allclose(bn.moving_mean.numpy(), mean), bn.name
        assert not np.allclose(bn.moving_variance.numpy(), var), bn.name
    # The first BatchNorm reads the stem convolution of the images, whose hard (Q_u) output is the
    # inference output: its statistics are the average of those of the batches it was re-estimated on.
    _, inbound, _ = layer_edges(model)
    stem = keras.Model(model.inputs, model.get_layer(inbound[bns[0].name][0]).output)
    outputs = [stem(x, training=False).numpy().reshape(-1, bns[0].moving_mean.shape[0])
               for x in seen["batches"][:seen["used"]]]
    np.testing.assert_allclose(bns[0].moving_mean.numpy(), np.mean([o.mean(0) for o in outputs], 0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bns[0].moving_variance.numpy(), np.mean([o.var(0, ddof=1) for o in outputs], 0),
                               rtol=1e-4, atol=1e-5)
    with quantize_scope():
        saved = keras.models.load_model(str(tmp_path / "model.keras"), compile=False)
    for bn in bns:
        np.testing.assert_array_equal(saved.get_layer(bn.name).moving_mean.numpy(), bn.moving_mean.numpy())
        np.testing.assert_array_equal(saved.get_layer(bn.name).moving_variance.numpy(), bn.moving_variance.numpy())


# `tools/train.py` in a process that kills itself hard (SIGKILL) as soon as its first epoch's backup
# is written: a run killed at that point whatever its speed.
KILLED_AFTER_FIRST_BACKUP = r"""
import os, signal
import tf_keras as keras
back_up = keras.callbacks.BackupAndRestore._backup

def back_up_and_die(self, epoch, batch=0):
    back_up(self, epoch, batch)
    os.kill(os.getpid(), signal.SIGKILL)

keras.callbacks.BackupAndRestore._backup = back_up_and_die
from cdl_tf.tools import train
train.run()
"""


@pytest.mark.slow
def test_killed_run_resumes_from_its_backup(tmp_path, data_dir):
    workdir = tmp_path / "run"
    flags = [f"--config={ROOT}/configs/lenet300_mnist.py", f"--workdir={workdir}", f"--config.data_dir={data_dir}",
             "--config.train_subset=1024", "--config.validation_size=500", "--config.test_subset=256",
             "--config.epochs=3", "--config.verbose=2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_FIRST_BACKUP, *flags], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    backup = workdir / "backup"
    assert any(backup.rglob("checkpoint")), "no complete backup was written"
    assert not (workdir / "metrics.json").exists()
    logged = json.loads((workdir / "epochs.json").read_text())["epochs"]
    assert [e["epoch"] for e in logged] == [0]
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"), *flags], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((workdir / "metrics.json").read_text())
    # The restarted run trained only the epochs that were not yet done ...
    rerun = [line for line in done.stdout.splitlines() if line.startswith("Epoch ")]
    assert rerun == ["Epoch 2/3", "Epoch 3/3"], rerun
    # ... and its history and train time still cover all three.
    epochs = json.loads((workdir / "epochs.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and epochs[0] == logged[0]
    assert len(metrics["history"]["loss"]) == len(metrics["history"]["val_accuracy"]) == 3
    assert metrics["history"]["loss"] == [e["logs"]["loss"] for e in epochs]
    assert metrics["train_time_s"] >= sum(e["seconds"] for e in epochs)
    assert metrics["test_accuracy"] > 0.5
    assert not list(backup.rglob("*.index"))  # the backup is deleted once training finished


@pytest.mark.slow
def test_training_on_a_nan_input_stops_and_says_why(tmp_path, data_dir, monkeypatch):
    """One NaN pixel per image makes a CDL model's loss NaN: training stops at the first batch
    and says so (Keras still evaluates the validation split on the NaN weights, which must not fail)."""
    from cdl_tf import training

    datasets = training._datasets
    pixel = np.zeros((28, 28, 1), bool)
    pixel[14, 14] = True

    def with_bad_pixel(config, drop_remainder=False):
        train, validation, test = datasets(config, drop_remainder)
        return train.map(lambda x, y: (tf.where(pixel, np.float32("nan"), x), y)), validation, test

    monkeypatch.setattr(training, "_datasets", with_bad_pixel)
    c = small(lenet300_mnist, data_dir, mode="rcdl", train_subset=256, validation_size=128, test_subset=128)
    with pytest.raises(FloatingPointError, match="training stopped on a NaN loss"):
        train_and_evaluate(c, str(tmp_path))
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "model.keras").exists()


@pytest.mark.slow
def test_cdl_run_distilled_from_a_float_run(run, tmp_path, data_dir):
    shutil.copytree(run("float")[0], tmp_path / "float")  # the teacher, deleted below
    c = small(lenet300_mnist, data_dir, mode="cdl")
    c.cdl.lambda_w, c.rate_warmup_epochs = 0.05, 1
    c.distill.teacher, c.distill.weight = str(tmp_path / "float"), 0.7
    metrics = train_and_evaluate(c, str(tmp_path / "cdl"))
    # The callbacks act on the student: the rate warm-up halved its weight rate terms in epoch 1 of 2.
    from cdl_tf.quantize import model_quantizers
    from cdl_tf.training import load_run

    _, student = load_run(str(tmp_path / "cdl"))
    weight_rates = [float(v["rate_weight"].numpy()) for _, q, v in model_quantizers(student) if q.kind == "weight"]
    assert weight_rates and all(r == pytest.approx(0.025) for r in weight_rates)
    assert 0.5 < metrics["test_accuracy"] <= 1.0 and 0 < metrics["bits_per_weight"] <= 8
    assert {"distillation_loss", "bits_per_weight", "val_bits_per_weight"} <= set(metrics["history"])
    # The saved model is the student alone: it reloads and re-evaluates to the same figures.
    again = evaluate_workdir(str(tmp_path / "cdl"))
    assert again["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert json.loads((tmp_path / "cdl" / "config.json").read_text())["distill"]["weight"] == 0.7
    # The student exports on its own, also once its teacher's run is gone.
    from tflite_export.export import export_workdir

    shutil.rmtree(tmp_path / "float")
    report = export_workdir(str(tmp_path / "cdl"), str(tmp_path / "cdl" / "export"))
    assert report.accuracy.keras_q_u == pytest.approx(metrics["test_accuracy"])


@pytest.mark.parametrize("override,field", [({"distill.teacher": "/nonexistent"}, "distill.teacher"),
                                            ({"distill.weight": 0.0}, "distill.weight"),
                                            ({"distill.temperature": -1.0}, "distill.temperature")])
def test_distillation_config_is_validated(tmp_path, data_dir, override, field):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.keras").write_bytes(b"")
    (teacher / "config.json").write_text(json.dumps({"dataset": "mnist"}))
    c = small(lenet300_mnist, data_dir, **{"distill.teacher": str(teacher), **override})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config(c)


def test_teacher_of_another_dataset_is_rejected(tmp_path, data_dir):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.keras").write_bytes(b"")
    (teacher / "config.json").write_text(json.dumps({"dataset": "cifar10"}))
    c = small(lenet300_mnist, data_dir, **{"distill.teacher": str(teacher)})
    with pytest.raises(ConfigError, match="trained on 'cifar10'"):
        validate_config(c)


def test_augment_field_reaches_the_training_pipeline(data_dir):
    def first_batches(augment):
        train, validation, _ = _datasets(small(lenet5_mnist, data_dir, augment=augment))
        return next(iter(train))[0].numpy(), next(iter(validation))[0].numpy()

    (off, validation_off), (on, validation_on) = first_batches("off"), first_batches("on")
    np.testing.assert_array_equal(first_batches("auto")[0], off)  # MNIST: off by default
    assert not np.allclose(on, off)
    np.testing.assert_array_equal(validation_on, validation_off)  # validation images are never augmented
