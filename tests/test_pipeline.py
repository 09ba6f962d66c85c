"""Recipes: several training phases in one work directory, resumable, exported and summarised."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from cdl_tf.tools import pipeline
from conftest import config_module

lenet300_mnist = config_module("lenet300_mnist")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_recipe(data_dir, **phase_overrides):
    c = lenet300_mnist.get_config("recipe")
    for phase in c.phases.values():
        phase.data_dir = str(data_dir)
        phase.train_subset, phase.test_subset, phase.epochs, phase.verbose = 1024, 500, 1, 0
        phase.validation_size, phase.bn_reestimate_steps = 500, 2
    for key, value in phase_overrides.items():
        name, *path, field = key.split(".")
        target = c.phases[name]
        for part in path:
            target = target[part]
        target[field] = value
    return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("recipe"))
    logs = []
    summary = pipeline.run_recipe(tiny_recipe(data_dir), workdir, log=logs.append)
    return workdir, summary, logs


@pytest.mark.slow
def test_recipe_runs_every_phase_in_order_then_exports(finished):
    workdir, _, logs = finished
    dirs = [os.path.join(workdir, d) for d in ("1_float", "2_small", "3_small_hard")]
    for i, run_dir in enumerate(dirs):
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
        assert config["init_from"] == (dirs[i - 1] if i else "")
        assert config["mode"] == ("float", "rcdl", "ste")[i]
    assert [line.split(":")[0] for line in logs[:3]] == ["phase 1/3 float", "phase 2/3 small", "phase 3/3 small_hard"]
    with open(os.path.join(workdir, "export", "export.json")) as f:
        export = json.load(f)
    assert export["workdir"] == os.path.abspath(dirs[-1])
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    coded = os.path.getsize(os.path.join(workdir, "export", "weights.cdlz"))
    assert summary["coded_bytes"] == coded and summary["accuracy"] == export["accuracy"]["tflite_int8"]
    # LeNet-300-100: 266,610 float32 parameters.
    assert summary["float32_bytes"] == 4 * 266_610
    assert summary["vs_float32"] == pytest.approx(4 * 266_610 / coded)
    assert summary["vs_int8"] == pytest.approx((export["quantized_weights"] + 4 * export["float_values"]) / coded)
    assert [p["name"] for p in summary["phases"]] == ["float", "small", "small_hard"]
    with open(os.path.join(dirs[-1], "metrics.json")) as f:
        assert summary["validation_accuracy"] == json.load(f)["validation_accuracy"]


@pytest.mark.slow
def test_rerun_skips_finished_phases_and_redoes_what_is_missing(finished, tmp_path, data_dir):
    workdir, summary, _ = finished
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    before = {d: os.path.getmtime(os.path.join(copy, d, "metrics.json")) for d in ("1_float", "2_small")}
    # As if killed during the last phase: its outputs and the export are gone.
    for name in ("3_small_hard", "export", "summary.json"):
        path = os.path.join(copy, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    logs = []
    again = pipeline.run_recipe(tiny_recipe(data_dir), copy, log=logs.append)
    assert logs[0].startswith("phase 1/3 float: done") and logs[1].startswith("phase 2/3 small: done")
    assert logs[2].startswith("phase 3/3 small_hard: ste")
    assert {d: os.path.getmtime(os.path.join(copy, d, "metrics.json")) for d in before} == before
    assert os.path.isfile(os.path.join(copy, "3_small_hard", "metrics.json")) and again["coded_bytes"] > 0


def test_bad_phase_field_is_refused_before_anything_runs(tmp_path, data_dir):
    workdir = tmp_path / "bad"
    with pytest.raises(pipeline.RecipeError, match=r"config\.phases\.small_hard: config\.optimizer\.learning_rate"):
        pipeline.run_recipe(tiny_recipe(data_dir, **{"small_hard.optimizer.learning_rate": -1.0}), str(workdir))
    assert not workdir.exists()
    c = tiny_recipe(data_dir)
    c.phase_order = ("float", "small")
    with pytest.raises(pipeline.RecipeError, match="phase_order"):
        pipeline.validate_recipe(c)
    c = tiny_recipe(data_dir, **{"small.init_from": str(tmp_path)})
    with pytest.raises(pipeline.RecipeError, match=r"phases\.small\.init_from"):
        pipeline.validate_recipe(c)


@pytest.mark.slow
def test_another_recipe_in_the_same_directory_is_refused(finished, data_dir):
    workdir, _, _ = finished
    with pytest.raises(pipeline.RecipeError, match=r"another recipe .*differs in phases\.small\.cdl\.lambda_w\)"):
        pipeline.run_recipe(tiny_recipe(data_dir, **{"small.cdl.lambda_w": 0.3}), workdir)


def test_a_distortion_weight_needs_a_float_model_to_start_from(data_dir):
    """The rate-distortion objective's importance is estimated at a float model: a phase with
    cdl.distortion_weight after a CDL phase, or first without init_from, is refused before
    anything trains; right after the float phase it is not."""
    pipeline.validate_recipe(tiny_recipe(data_dir, **{"small.cdl.distortion_weight": 1.0}))
    with pytest.raises(pipeline.RecipeError, match=r"small_hard\.cdl\.distortion_weight: needs a float phase .*'small' is 'rcdl'"):
        pipeline.validate_recipe(tiny_recipe(data_dir, **{"small_hard.cdl.distortion_weight": 1.0}))
    c = tiny_recipe(data_dir, **{"small.cdl.distortion_weight": 1.0})
    c.phase_order = ("small", "float", "small_hard")
    with pytest.raises(pipeline.RecipeError, match=r"small\.cdl\.distortion_weight: the first phase needs init_from"):
        pipeline.validate_recipe(c)


def test_a_recipe_stored_before_a_field_existed_is_the_same_recipe(data_dir):
    """A ``pipeline.json`` lacking a later field (written by an older version) matches the recipe
    that holds the field at its older value, and differs where the field has another value."""
    recipe = json.loads(tiny_recipe(data_dir).to_json())
    stored = json.loads(json.dumps(recipe))
    for phase in stored["phases"].values():
        del phase["cdl"]["distortion_weight"], phase["cdl"]["fisher_examples"]
    assert pipeline.recipe_changes(stored, recipe) == []
    recipe["phases"]["small"]["cdl"]["distortion_weight"] = 1.0
    recipe["phases"]["float"]["epochs"] += 1
    assert pipeline.recipe_changes(stored, recipe) == ["phases.float.epochs", "phases.small.cdl.distortion_weight"]


@pytest.mark.slow
def test_phases_are_the_config_variants_and_report_their_rates(finished):
    """The phases are the float, small and small_hard variants (but for their epochs), each CDL one
    continuing the run before it; what cdl-train prints of each leaves out the rates it does not have,
    and the last one codes its weights only."""
    from cdl_tf.quantize import model_quantizers
    from cdl_tf.training import load_run
    from cdl_tf.tools.train import summary

    workdir, _, _ = finished
    recipe = lenet300_mnist.get_config("recipe")
    for i, (name, mode) in enumerate(zip(recipe.phase_order, ("float", "rcdl", "ste"))):
        phase, variant = recipe.phases[name].to_dict(), lenet300_mnist.get_config(name).to_dict()
        assert {k: v for k, v in phase.items() if k != "epochs"} == {k: v for k, v in variant.items() if k != "epochs"}
        with open(os.path.join(workdir, f"{i + 1}_{name}", "metrics.json")) as f:
            metrics = json.load(f)
        assert metrics["mode"] == mode and 0.5 < metrics["test_accuracy"] <= 1.0
        line = summary(metrics)
        assert line.startswith(f"test accuracy {metrics['test_accuracy']:.4f}") and "bits/activation" not in line
        assert ("bits/weight" in line) == (mode != "float")
    _, model = load_run(os.path.join(workdir, "3_small_hard"))
    assert {q.kind for _, q, _ in model_quantizers(model)} == {"weight"}  # activations stay int8, not coded
    assert metrics["bits_per_activation"] is None and 0 < metrics["bits_per_weight"] < 4


@pytest.mark.slow
def test_float_phase_is_not_exported_to_the_cdl_grid(finished, tmp_path):
    from tflite_export.export import export_workdir

    workdir, _, _ = finished
    with pytest.raises(ValueError, match="is a float run; only CDL runs export"):
        export_workdir(os.path.join(workdir, "1_float"), str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()


@pytest.mark.slow
def test_final_run_of_a_recipe_and_of_a_plain_run(finished, tmp_path):
    workdir, _, _ = finished
    assert pipeline.final_run(workdir) == os.path.join(workdir, "3_small_hard")
    assert pipeline.final_run(str(tmp_path)) == str(tmp_path)


@pytest.mark.slow
def test_cdl_train_runs_a_recipe_and_cdl_bench_reads_its_directory(finished, tmp_path, data_dir):
    workdir, summary, _ = finished
    copy = str(tmp_path / "recipe")
    shutil.copytree(workdir, copy)
    # Every phase is done: the command only exports and summarises again.
    shutil.rmtree(os.path.join(copy, "export"))
    env = {**os.environ, "CDL_DATA_DIR": str(data_dir)}
    overrides = [f"--config.phases.{name}.{field}={value}" for name in ("float", "small", "small_hard")
                 for field, value in (("data_dir", data_dir), ("train_subset", 1024), ("test_subset", 500),
                                      ("epochs", 1), ("verbose", 0), ("validation_size", 500),
                                      ("bn_reestimate_steps", 2))]
    done = subprocess.run([sys.executable, "-m", "cdl_tf.tools.train", "--config=configs/lenet300_mnist.py:recipe",
                           f"--workdir={copy}", *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"coded weights {summary['coded_bytes']:,} B" in done.stdout
    bench = subprocess.run([sys.executable, "-m", "cdl_tf.tools.bench", f"--runs={copy}", f"--outdir={tmp_path / 'b'}"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr[-3000:]
    with open(tmp_path / "b" / "results.json") as f:
        rows = json.load(f)["rows"]
    assert [r["workdir"] for r in rows if r["method"] == "ste"] == [os.path.join(copy, "3_small_hard")]
