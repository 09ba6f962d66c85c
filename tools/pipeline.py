"""A recipe of several training phases, run in one work directory, then exported and summarised.

A config whose ``phases`` is non-empty is a recipe (e.g. ``configs/lenet5_mnist.py:recipe``):
``phases.<name>`` are training configs, run in the order of ``phase_order``, each continuing the
one before it (``init_from``); ``cdl-train`` runs it whole:

    DIR/pipeline.json          the recipe, as validated
    DIR/<i>_<name>/            one `cdl_tf.training` run per phase
    DIR/export/                `cdl-export` of the last phase
    DIR/summary.json           accuracy, coded size, rates and compression ratios (`summarize`)

Every phase is validated before the first starts. A phase whose run finished (its
``metrics.json`` exists) is not run again, and an interrupted one resumes from its backup, so
the same command continues a recipe killed at any point.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import ml_collections

from cdl_tf.experiment_config import CDL_MODES
from cdl_tf.export_report import EXPORT_FILE, ExportReport
from cdl_tf.io import atomic_write_json
from cdl_tf.results import float32_bytes
from cdl_tf.run_config import read_run_config, with_later_fields
from cdl_tf.training import ConfigError, train_and_evaluate, validate_config
from tflite_export.export import export_workdir

PIPELINE_FILE = "pipeline.json"
SUMMARY_FILE = "summary.json"
EXPORT_DIR = "export"
_ABSENT = object()  # a field one of two compared recipes lacks


class RecipeError(ValueError):
    """A recipe's phases are missing, misnamed or inconsistent."""


def is_recipe(config) -> bool:
    return bool(config.get("phases"))


def phase_dirs(config, workdir: str) -> List[str]:
    """The run directory of each phase, in order."""
    return [os.path.join(workdir, f"{i}_{name}") for i, name in enumerate(config.phase_order, 1)]


def final_run(workdir: str) -> str:
    """The run that a recipe's directory ships (its last phase); any other directory is itself."""
    path = os.path.join(workdir, PIPELINE_FILE)
    if not os.path.isfile(path):
        return workdir
    with open(path) as f:
        return phase_dirs(ml_collections.ConfigDict(json.load(f)), workdir)[-1]


def validate_recipe(config) -> None:
    """Check the phase list and every phase's config before anything runs."""
    order = tuple(config.get("phase_order") or ())
    names = tuple(config.phases.keys())
    if not order or sorted(order) != sorted(names) or len(set(order)) != len(order):
        raise RecipeError(f"config.phase_order {order} must name each of config.phases {names} once")
    for i, name in enumerate(order):
        phase = config.phases[name]
        if i and phase.init_from:
            raise RecipeError(f"config.phases.{name}.init_from: a later phase continues the one before it; "
                              f"leave it ''")
        try:
            validate_config(phase)
        except ConfigError as e:
            raise RecipeError(f"config.phases.{name}: {e}") from e
        if phase.mode in CDL_MODES and phase.cdl.distortion_weight:
            # The weights' importance is estimated at the float model the phase starts from.
            field = f"config.phases.{name}.cdl.distortion_weight"
            if i and config.phases[order[i - 1]].mode != "float":
                raise RecipeError(f"{field}: needs a float phase before it (the weights' importance is estimated at "
                                  f"a float model); phase {order[i - 1]!r} is {config.phases[order[i - 1]].mode!r}")
            if not i and not phase.init_from:
                raise RecipeError(f"{field}: the first phase needs init_from, a float run (the weights' importance "
                                  f"is estimated at a float model)")


def recipe_changes(stored: Dict[str, Any], recipe: Dict[str, Any]) -> List[str]:
    """The dotted fields in which ``recipe`` differs from the ``stored`` one (a ``pipeline.json``).

    A field added to the training config after ``stored`` was written means its older value
    there (`with_later_fields`), so a recipe started by an older version still continues.
    """
    stored = dict(stored, phases={name: with_later_fields(phase)
                                  for name, phase in (stored.get("phases") or {}).items()})
    changed: List[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, _ABSENT), b.get(key, _ABSENT), f"{prefix}{key}.")
        elif a != b:
            changed.append(prefix[:-1])

    walk(stored, recipe, "")
    return changed


def run_recipe(config, workdir: str, log=lambda line: print(line, flush=True)) -> Dict[str, Any]:
    """Run (or continue) the recipe ``config`` in ``workdir``; returns the summary."""
    validate_recipe(config)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, PIPELINE_FILE)
    recipe = json.loads(config.to_json())
    if os.path.isfile(path):
        with open(path) as f:
            changed = recipe_changes(json.load(f), recipe)
        if changed:
            raise RecipeError(f"{workdir!r} holds another recipe ({path}; it differs in "
                              f"{', '.join(changed)}); use a new work directory")
    atomic_write_json(path, recipe)
    dirs = phase_dirs(config, workdir)
    for i, (name, run_dir) in enumerate(zip(config.phase_order, dirs)):
        if os.path.isfile(os.path.join(run_dir, "metrics.json")):
            log(f"phase {i + 1}/{len(dirs)} {name}: done ({run_dir})")
            continue
        phase = ml_collections.ConfigDict(config.phases[name].to_dict())
        if i:
            phase.init_from = dirs[i - 1]
        log(f"phase {i + 1}/{len(dirs)} {name}: {phase.mode}, {phase.epochs} epochs -> {run_dir}")
        train_and_evaluate(phase, run_dir)
    export_dir = os.path.join(workdir, EXPORT_DIR)
    if not os.path.isfile(os.path.join(export_dir, EXPORT_FILE)):
        log(f"export {dirs[-1]} -> {export_dir}")
        export_workdir(dirs[-1], export_dir)
    summary = summarize(workdir)
    atomic_write_json(os.path.join(workdir, SUMMARY_FILE), summary)
    return summary


def summarize(workdir: str) -> Dict[str, Any]:
    """The shipped model of a finished recipe: test accuracy of its int8 TFLite model, coded size,
    rates, compression ratios and train time.

    ``vs_float32`` divides the float model's float32 size by the coded size; ``vs_int8`` the size
    of the same tensors at one byte per quantized weight and four per other value by it.
    """
    with open(os.path.join(workdir, PIPELINE_FILE)) as f:
        config = ml_collections.ConfigDict(json.load(f))
    dirs = phase_dirs(config, workdir)
    phases = []
    for name, run_dir in zip(config.phase_order, dirs):
        with open(os.path.join(run_dir, "metrics.json")) as f:
            final = json.load(f)  # the last phase's is the shipped model's
        phases.append({"name": name, "mode": config.phases[name].mode, "epochs": final["epochs"],
                       "train_time_s": final["train_time_s"], "validation_accuracy": final.get("validation_accuracy")})
    export = ExportReport.read(os.path.join(workdir, EXPORT_DIR))
    coded = export.bytes.cdlz_ans
    reference = float32_bytes(read_run_config(dirs[-1]))
    int8 = export.quantized_weights + 4 * export.float_values
    accuracy = export.accuracy.tflite_int8
    return {
        "workdir": os.path.abspath(workdir),
        "accuracy": accuracy, "error": 1.0 - accuracy,
        "validation_accuracy": final.get("validation_accuracy"),
        "coded_bytes": coded, "coded_kb": coded / 1000.0,
        "bits_per_weight": export.bits_per_weight.cdlz_ans_total,
        "bits_per_activation": final.get("bits_per_activation"),
        "float32_bytes": reference, "int8_bytes": int8,
        "vs_float32": reference / coded, "vs_int8": int8 / coded,
        "train_time_s": sum(p["train_time_s"] for p in phases),
        "phases": phases,
        "test_examples": export.test_examples,
    }


def format_summary(s: Dict[str, Any]) -> str:
    acts = "" if s["bits_per_activation"] is None else f", {s['bits_per_activation']:.2f} bits/activation"
    return (f"int8 TFLite test accuracy {s['accuracy']:.4f} (error {100 * s['error']:.2f}%), coded weights "
            f"{s['coded_bytes']:,} B ({s['coded_kb']:.2f} KB), {s['bits_per_weight']:.3f} bits/weight{acts}; "
            f"{s['vs_float32']:.0f}x smaller than float32, {s['vs_int8']:.1f}x smaller than 8-bit; "
            f"trained in {s['train_time_s'] / 60:.1f} min over {len(s['phases'])} phases")
