"""The experiment config schema: its defaults, every check, older run configs, loading config files by path."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from cdl_tf.config import CDLConfig
from cdl_tf.experiment_config import ConfigError, ExperimentConfig, base_config
from cdl_tf.run_config import read_run_config, with_later_fields
from cdl_tf.training import validate_config
from conftest import CONFIGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What `configs/common.py`'s `base_config()` gave before the schema existed.
BASE_CONFIG = {
    "model": "lenet5", "dataset": "mnist", "data_dir": "", "train_subset": 0, "test_subset": 0,
    "validation_size": 5000, "augment": "auto", "mode": "cdl", "epochs": 20, "batch_size": 128, "seed": 0,
    "init_from": "",
    "optimizer": {"name": "adam", "learning_rate": 0.001, "momentum": 0.9, "schedule": "cosine",
                  "warmup_epochs": 0, "weight_decay": 0.0},
    "cdl": {"weight_bits": 4, "activation_bits": 4, "first_layer_bits": 8, "last_layer_bits": 8,
            "weight_window": 5, "activation_window": 5, "activation_count_sample": 0,
            "weight_alphabet": "symmetric", "quantize_biases": False, "bias_bits": 8,
            "quantize_activations": True, "init_kappa": 4.0, "weight_init_step_scale": 1.0,
            "softness_param": "kappa", "train_softness": True, "train_step": True, "step_grad_scale": True,
            "skip_layers": (), "layer_bits": {}, "lambda_w": 0.0, "lambda_a": 0.0},
    "rate_warmup_epochs": 0, "final_kappa": 0.0,
    "distill": {"teacher": "", "weight": 0.5, "temperature": 4.0},
    "bn_reestimate_steps": 50, "strategy": "default", "split_at": "", "verbose": 2,
}
# Fields added after the schema, at their defaults (what older runs did: `OLDER`).
ADDED = {"cdl.distortion_weight": 0.0, "cdl.fisher_examples": 256}
# What `CDLConfig()` was before.
CDL_CONFIG = {
    "weight_bits": 4, "activation_bits": 4, "first_layer_bits": 8, "last_layer_bits": 8, "layer_bits": {},
    "skip_layers": (), "mode": "cdl", "weight_window": 5, "activation_window": 5, "activation_count_sample": 0,
    "weight_alphabet": "symmetric", "quantize_biases": False, "bias_bits": 8, "quantize_activations": True,
    "init_kappa": 4.0, "weight_init_step_scale": 1.0, "softness_param": "kappa", "train_softness": True,
    "train_step": True, "step_grad_scale": True, "lambda_w": 0.0, "lambda_a": 0.0, "seed": 0,
}
# Fields that run configs written before they existed lack, at what such a run did.
OLDER = {
    "validation_size": 0,  # it trained on every training image
    "augment": "auto", "final_kappa": 0.0, "split_at": "",
    "distill": {"teacher": "", "weight": 0.5, "temperature": 4.0},  # no distillation
    "cdl.activation_count_sample": 0, "cdl.weight_init_step_scale": 1.0, "cdl.quantize_biases": False,
    "cdl.bias_bits": 8, "cdl.skip_layers": [], "cdl.layer_bits": {}, **ADDED,
}


def _leaves(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "layer_bits":
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _parent(tree, name):
    """``(section, field)`` of the dotted field ``name`` in the nested dict ``tree``."""
    *sections, field = name.split(".")
    for section in sections:
        tree = tree[section]
    return tree, field


def _config(**overrides):
    """`base_config()` as a plain dict (which may hold any type), ``overrides`` by dotted name."""
    c = base_config().to_dict()
    for name, value in overrides.items():
        node, field = _parent(c, name)
        node[field] = value
    return c


def test_defaults_are_those_before_the_schema():
    got = _leaves(base_config().to_dict())
    want = {**_leaves(BASE_CONFIG), **ADDED}
    assert got == want
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}  # the flags' types
    assert dataclasses.asdict(CDLConfig()) == {**CDL_CONFIG, **{k.split(".")[1]: v for k, v in ADDED.items()}}
    assert validate_config(base_config()) == CDLConfig()


def test_cdl_config_is_the_cdl_section_with_mode_and_seed():
    section = set(base_config().cdl.keys())
    assert {f.name for f in dataclasses.fields(CDLConfig)} == section | {"mode", "seed"}
    c = base_config()
    c.mode, c.seed, c.cdl.first_layer_bits, c.cdl.skip_layers = "tfmot8", 7, 0, ("fc1",)
    cdl = validate_config(c)
    assert (cdl.mode, cdl.seed, cdl.first_layer_bits, cdl.skip_layers) == ("cdl", 7, None, ("fc1",))


def _checked_fields(kind=ExperimentConfig, prefix=""):
    out = set()
    for f in dataclasses.fields(kind):
        if dataclasses.is_dataclass(f.default_factory):
            out |= _checked_fields(f.default_factory, f"{prefix}{f.name}.")
        elif f.metadata.get("check"):
            out.add(prefix + f.name)
    return out


# (field, bad value, the problem stated): one row per check of a field.
BAD_VALUES = [
    ("model", "vgg", "unknown model; known: .*lenet5.*"),
    ("dataset", "svhn", "unknown dataset; known: .*mnist.*"),
    ("train_subset", -1, "must be >= 0"),
    ("test_subset", -1, "must be >= 0"),
    ("validation_size", -1, "must be >= 0"),
    ("augment", "yes", r"must be one of \('auto', 'on', 'off'\)"),
    ("mode", "int4", r"must be one of \('float', 'cdl', 'rcdl', 'ste', 'epr', 'tfmot8'\)"),
    ("epochs", 0, "must be > 0"),
    ("batch_size", 0, "must be > 0"),
    ("seed", -1, "must be >= 0"),
    ("init_from", "/nonexistent", "holds no model.keras"),
    ("optimizer.name", "lamb", r"must be one of \('adam', 'sgd'\)"),
    ("optimizer.learning_rate", 0.0, "must be > 0"),
    ("optimizer.momentum", 1.0, r"must be in \[0, 1\)"),
    ("optimizer.schedule", "step", r"must be one of \('cosine', 'constant'\)"),
    ("optimizer.warmup_epochs", -1, "must be >= 0"),
    ("optimizer.weight_decay", -1e-4, "must be >= 0"),
    ("cdl.weight_bits", 12, r"must be in \[2, 8\]"),
    ("cdl.activation_bits", 1, r"must be in \[2, 8\]"),
    ("cdl.first_layer_bits", 1, r"must be in \[2, 8\], or 0 \(as the other layers\)"),
    ("cdl.last_layer_bits", 9, r"must be in \[2, 8\], or 0 \(as the other layers\)"),
    ("cdl.weight_window", 0, "must be >= 1"),
    ("cdl.activation_window", 0, "must be >= 1"),
    ("cdl.activation_count_sample", -1, "must be >= 0"),
    ("cdl.weight_alphabet", "odd", r"must be one of \('symmetric', 'full'\)"),
    ("cdl.bias_bits", 9, r"must be in \[2, 8\]"),
    ("cdl.init_kappa", 0.0, "must be > 0"),
    ("cdl.weight_init_step_scale", -2.0, "must be > 0"),
    ("cdl.softness_param", "beta", r"must be one of \('kappa', 'alpha'\)"),
    ("cdl.layer_bits", {"fc1": (4, 4), "conv2": (12, 4)}, r"the bits of layer 'conv2' must be in \[2, 8\]"),
    ("cdl.lambda_w", -0.1, "must be >= 0"),
    ("cdl.lambda_a", float("nan"), "must be >= 0"),
    ("cdl.distortion_weight", -1.0, "must be >= 0"),
    ("cdl.fisher_examples", 0, "must be > 0"),
    ("rate_warmup_epochs", -1, "must be >= 0"),
    ("final_kappa", -1.0, "must be >= 0"),
    ("distill.teacher", "/nonexistent", r"is not a finished run \(no config.json and model.keras\)"),
    ("distill.weight", 0.0, r"must be in \(0, 1\]"),
    ("distill.temperature", 0.0, "must be > 0"),
    ("bn_reestimate_steps", -1, "must be >= 0"),
    ("strategy", "horovod", "unknown strategy; known: default, mirrored, multiworker, tpu"),
    ("verbose", 3, r"must be one of \(0, 1, 2\)"),
]


def test_every_checked_field_has_a_bad_value_below():
    assert {field for field, _, _ in BAD_VALUES} == _checked_fields()


@pytest.mark.parametrize("field,value,problem", BAD_VALUES)
def test_bad_value_is_named_with_the_field(field, value, problem):
    with pytest.raises(ConfigError, match=rf"^config\.{re.escape(field)}: {problem}, got {re.escape(repr(value))}$"):
        validate_config(_config(**{field: value}))


@pytest.mark.parametrize("field,value,kind", [
    ("epochs", 2.5, "an integer"),
    ("epochs", True, "an integer"),
    ("optimizer.learning_rate", "fast", "a number"),
    ("data_dir", 0, "a string"),
    ("cdl.quantize_biases", 1, "True or False"),
    ("cdl.first_layer_bits", 4.0, "an integer or None"),
    ("cdl.skip_layers", "conv1", r"Tuple\[str, \.\.\.\]"),
    ("cdl.layer_bits", {"conv2": (3,)}, r"Dict\[str, Tuple\[int, int\]\]"),
])
def test_value_of_another_type_is_named_with_the_field(field, value, kind):
    with pytest.raises(ConfigError, match=rf"^config\.{re.escape(field)}: must be {kind}, got {re.escape(repr(value))}$"):
        validate_config(_config(**{field: value}))


@pytest.mark.parametrize("overrides,message", [
    ({"validation_size": 60_000}, r"validation_size: must be in \[0, 60000\) \(mnist has 60000 training images\)"),
    ({"dataset": "cifar10", "validation_size": 50_000}, r"validation_size: must be in \[0, 50000\)"),
    ({"validation_size": 59_000, "train_subset": 1001},
     "train_subset: must be <= 1000, the training images left by validation_size=59000, got 1001"),
    ({"optimizer.warmup_epochs": 20}, r"optimizer.warmup_epochs: must be an integer in \[0, epochs=20\), got 20"),
    ({"final_kappa": 32.0}, "final_kappa: annealing kappa needs cdl.train_softness=False"),
    ({"final_kappa": 32.0, "cdl.train_softness": False, "cdl.softness_param": "alpha"},
     "final_kappa: annealing kappa needs .* cdl.softness_param='kappa'"),
    ({"split_at": "fc1", "mode": "float"}, r"split_at: needs a CDL mode \(cdl, rcdl, ste, epr\) with quantized activations"),
    ({"split_at": "fc1", "cdl.quantize_activations": False}, "split_at: needs a CDL mode"),
])
def test_fields_that_do_not_go_together_are_named(overrides, message):
    with pytest.raises(ConfigError, match=rf"^config\.{message}"):
        validate_config(_config(**overrides))


def test_missing_unknown_and_misplaced_fields_are_named():
    c = _config()
    del c["epochs"]
    with pytest.raises(ConfigError, match=r"^config\.epochs: missing$"):
        validate_config(c)
    c = _config()
    del c["optimizer"]["name"]
    with pytest.raises(ConfigError, match=r"^config\.optimizer\.name: missing$"):
        validate_config(c)
    with pytest.raises(ConfigError, match=r"^config\.epoch: unknown field; known: model, dataset, .*, verbose$"):
        validate_config(_config(epoch=3))
    with pytest.raises(ConfigError, match=r"^config\.cdl\.mode: unknown field; the training mode is config\.mode$"):
        validate_config(_config(**{"cdl.mode": "rcdl"}))
    with pytest.raises(ConfigError, match=r"^config\.cdl\.seed: unknown field; the seed is config\.seed$"):
        validate_config(_config(**{"cdl.seed": 1}))
    with pytest.raises(ConfigError, match=r"^config\.optimizer: must be a section of fields, got 'adam'$"):
        validate_config(_config(optimizer="adam"))
    with pytest.raises(ConfigError, match="^config: must be a ConfigDict or a mapping, got 3$"):
        ExperimentConfig.from_config(3)


def test_cdl_config_names_its_bad_field():
    with pytest.raises(ConfigError, match=r"^CDLConfig\.weight_bits: must be in \[2, 8\], got 12$"):
        CDLConfig(weight_bits=12)
    with pytest.raises(ConfigError, match=r"^CDLConfig\.mode: must be one of \('cdl', 'rcdl', 'ste', 'epr'\), got 'float'$"):
        CDLConfig(mode="float")
    with pytest.raises(ConfigError, match=r"^CDLConfig\.skip_layers: must be Tuple\[str, \.\.\.\], got \['a', 1\]$"):
        CDLConfig(skip_layers=["a", 1])
    assert CDLConfig(skip_layers=["a"], layer_bits={"b": [3, 2]}, last_layer_bits=0) == CDLConfig(
        skip_layers=("a",), layer_bits={"b": (3, 2)}, last_layer_bits=None)


def test_run_config_without_the_later_fields_reads_as_runs_made_before_them(tmp_path):
    assert ExperimentConfig.later_fields().keys() == OLDER.keys()
    new = base_config()
    new.validation_size = 0  # the one later field whose default is not what older runs did
    old = json.loads(new.to_json())
    for name in OLDER:
        node, field = _parent(old, name)
        del node[field]
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = read_run_config(str(tmp_path))
    read = config.to_dict()
    assert {name: _parent(read, name)[0][_parent(read, name)[1]] for name in OLDER} == OLDER
    assert with_later_fields(old) == json.loads(new.to_json())  # as a newer run's config.json reads
    assert validate_config(config) == validate_config(new)
    del old["epochs"]  # a field that every run config holds is not filled in
    assert "epochs" not in with_later_fields(old)


LOAD = r"""
import json, sys
from absl import flags
from ml_collections import config_flags
config_flags.DEFINE_config_file("config", lock_config=True)
sys.argv = ["load", "--config=" + sys.argv[1], "--config.phases.small.cdl.lambda_w=0.25"]
flags.FLAGS(sys.argv)
c = flags.FLAGS.config
print(json.dumps({"phases": c.phase_order, "lambda_w": c.phases.small.cdl.lambda_w,
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def test_config_file_loads_by_path_from_outside_the_repository(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    copy = tmp_path / "experiments" / "mine.py"  # a config file outside the repository
    copy.parent.mkdir()
    shutil.copy(CONFIGS / "lenet5_mnist.py", copy)
    for path in (str(CONFIGS / "lenet5_mnist.py"), "experiments/mine.py"):
        done = subprocess.run([sys.executable, "-c", LOAD, f"{path}:recipe"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        # Reading a config starts no TensorFlow (the tools start it quietly, after their flags).
        assert json.loads(done.stdout) == {"phases": ["float", "small", "small_hard"], "lambda_w": 0.25,
                                           "tensorflow": False}
    # cdl-bench's default --config is the repository's, wherever it runs.
    done = subprocess.run([sys.executable, "-c", "import cdl_tf.tools.bench, absl.flags as f; "
                           "print(f.FLAGS['config'].value.model)"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "lenet300_100"
