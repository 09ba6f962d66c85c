"""Config validation, short real-data training in every mode, resume, metrics.json."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cdl_tf
from cdl_tf.experiment_config import CDL_MODES, MODES
from cdl_tf.recipes import RECIPE_VARIANTS
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


@pytest.mark.parametrize("mode", MODES)
def test_short_training_in_each_mode_writes_metrics(tmp_path, data_dir, mode):
    c = small(lenet300_mnist, data_dir, mode=mode)
    metrics = train_and_evaluate(c, str(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
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
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "config.json").is_file()
    if mode in CDL_MODES:
        assert 0 < saved["bits_per_weight"] <= 8 and 0 < saved["bits_per_activation"] <= 8
        assert saved["quantized_weights"] == 784 * 300 + 300 * 100 + 100 * 10
        names = [row["name"] for row in saved["layers"]]
        assert "quant_dense/kernel" in names or any(n.endswith("/kernel") for n in names)
        assert {"loss", "accuracy", "bits_per_weight", "val_accuracy"} <= set(saved["history"])
        assert summary(metrics).endswith(f"{metrics['bits_per_activation']:.3f} bits/activation")
    else:
        assert "bits_per_weight" not in saved
    # Re-evaluating the saved run gives the same figures.
    again = evaluate_workdir(str(tmp_path))
    assert again["test_accuracy"] == pytest.approx(saved["test_accuracy"])
    assert again["validation_accuracy"] == pytest.approx(saved["validation_accuracy"])
    assert again.get("bits_per_weight") == pytest.approx(saved.get("bits_per_weight"))


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


def test_cdl_run_continues_in_another_mode(tmp_path, data_dir):
    import numpy as np
    import tf_keras as keras

    from cdl_tf.quantize import quantize_scope, model_quantizers
    from cdl_tf.training import build_model

    first = small(lenet300_mnist, data_dir, mode="rcdl")
    first.cdl.lambda_w, first.cdl.init_kappa = 0.05, 4.0
    train_and_evaluate(first, str(tmp_path / "rcdl"))
    with quantize_scope():
        source = keras.models.load_model(str(tmp_path / "rcdl" / "model.keras"), compile=False)
    steps = {name: float(v["log_q"].numpy()) for name, _, v in model_quantizers(source)}

    second = small(lenet300_mnist, data_dir, mode="ste", init_from=str(tmp_path / "rcdl"))
    second.cdl.lambda_w, second.cdl.init_kappa = 0.2, 8.0
    model = build_model(second, validate_config(second))
    for w, v in zip(source.get_weights()[:2], model.get_weights()[:2]):
        np.testing.assert_array_equal(w, v)
    for name, quantizer, v in model_quantizers(model):
        assert float(v["log_q"].numpy()) == steps[name], name  # steps carry over
        assert float(np.exp(v["log_softness"].numpy())) == pytest.approx(8.0), name  # softness is the new config's
        expected = 0.2 if quantizer.kind == "weight" else second.cdl.lambda_a
        assert float(v["rate_weight"].numpy()) == pytest.approx(expected), name
    metrics = train_and_evaluate(second, str(tmp_path / "ste"))
    assert 0.5 < metrics["test_accuracy"] <= 1.0

    other_plan = small(lenet300_mnist, data_dir, mode="ste", init_from=str(tmp_path / "rcdl"))
    other_plan.cdl.quantize_biases = True
    with pytest.raises(ConfigError, match="another quantization plan"):
        build_model(other_plan, validate_config(other_plan))
    other_bits = small(lenet300_mnist, data_dir, mode="ste", init_from=str(tmp_path / "rcdl"))
    other_bits.cdl.weight_bits = 2
    with pytest.raises(ConfigError, match=r"do not contain: .*quant_fc2/kernel \[\(-7, 7\) -> \(-1, 1\)\]"):
        build_model(other_bits, validate_config(other_bits))
    # More bits: the run's points i q are all on the larger grids; only values that the old
    # alphabet clipped at its ends may now round to the new outer points.
    more_bits = small(lenet300_mnist, data_dir, mode="ste", init_from=str(tmp_path / "rcdl"))
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
    with pytest.raises(ConfigError, match="needs a CDL mode"):
        float_mode = small(lenet300_mnist, data_dir, mode="float", init_from=str(tmp_path / "rcdl"))
        build_model(float_mode, validate_config(float_mode))


@pytest.mark.parametrize("module,variant", [(m, v) for m in (lenet5_mnist, lenet300_mnist)
                                            for v in RECIPE_VARIANTS]
                         + [(resnet20_cifar10, v) for v in resnet20_cifar10.VARIANTS])
def test_every_config_variant_validates(module, variant):
    from cdl_tf.tools import pipeline

    config = module.get_config(variant)
    if pipeline.is_recipe(config):
        pipeline.validate_recipe(config)
        assert config.phase_order == ("float", "small", "small_hard")
        assert [config.phases[n].mode for n in config.phase_order] == ["float", "rcdl", "ste"]
    else:
        validate_config(config)


def test_config_variants_chain_float_small_hard(tmp_path, data_dir):
    from cdl_tf.quantize import model_quantizers
    from cdl_tf.training import build_model

    with pytest.raises(ValueError, match="unknown config variant 'tiny'.*small_hard"):
        lenet300_mnist.get_config("tiny")
    previous = ""
    for variant in ("float", "small", "small_hard"):
        c = small(lenet300_mnist, data_dir, variant=variant, init_from=previous)
        metrics = train_and_evaluate(c, str(tmp_path / variant))
        assert metrics["mode"] == {"float": "float", "small": "rcdl", "small_hard": "ste"}[variant]
        line = summary(metrics)  # what cdl-train prints
        assert line.startswith(f"test accuracy {metrics['test_accuracy']:.4f}") and "bits/activation" not in line
        assert ("bits/weight" in line) == (variant != "float")
        previous = str(tmp_path / variant)
    model = build_model(c, validate_config(c))
    assert {q.kind for _, q, _ in model_quantizers(model)} == {"weight"}  # activations stay int8, not coded
    assert metrics["bits_per_activation"] is None and 0 < metrics["bits_per_weight"] < 4


def test_batchnorm_model_trains_and_reestimates(tmp_path, data_dir):
    c = small(lenet5_mnist, data_dir, model="resnet20", dataset="cifar10", mode="rcdl", train_subset=256,
              test_subset=128, batch_size=64)
    c.cdl.activation_window = 3
    metrics = train_and_evaluate(c, str(tmp_path))
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["bits_per_weight"] > 0


def test_killed_run_resumes_from_its_backup(tmp_path, data_dir):
    workdir = tmp_path / "run"
    args = [sys.executable, os.path.join(ROOT, "tools", "train.py"), f"--config={ROOT}/configs/lenet300_mnist.py",
            f"--workdir={workdir}", f"--config.data_dir={data_dir}", "--config.train_subset=2048", "--config.validation_size=500",
            "--config.test_subset=256", "--config.epochs=4", "--config.verbose=2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Kill it hard once the first epoch's backup is complete: the checkpoint manager writes its
    # `checkpoint` state file (which a restart reads) after the data and index files.
    deadline = time.time() + 240
    backup = workdir / "backup"
    while time.time() < deadline and not (backup.exists() and any(backup.rglob("checkpoint"))):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    assert any(backup.rglob("checkpoint")), "no complete backup was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "metrics.json").exists()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((workdir / "metrics.json").read_text())
    # The restarted run trained only the epochs that were not yet done ...
    rerun = [line for line in done.stdout.splitlines() if line.startswith("Epoch ")]
    assert 1 <= len(rerun) < 4 and rerun[0] != "Epoch 1/4", rerun
    # ... and its history and train time still cover all four.
    epochs = json.loads((workdir / "epochs.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert len(metrics["history"]["loss"]) == len(metrics["history"]["val_accuracy"]) == 4
    assert metrics["history"]["loss"] == [e["logs"]["loss"] for e in epochs]
    assert metrics["train_time_s"] >= sum(e["seconds"] for e in epochs)
    assert metrics["test_accuracy"] > 0.5
    assert not list(backup.rglob("*.index"))  # the backup is deleted once training finished


def test_cdl_run_distilled_from_a_float_run(tmp_path, data_dir):
    train_and_evaluate(small(lenet300_mnist, data_dir, mode="float"), str(tmp_path / "float"))
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
    assert report["accuracy"]["keras_q_u"] == pytest.approx(metrics["test_accuracy"])


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
