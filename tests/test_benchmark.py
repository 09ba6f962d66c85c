"""The compression benchmark (cdl-bench) on a tiny sweep: one row per method, derived fields, plots, resume,
PTQ coded size, seeds and their summary, lineage of tabulated runs, paired comparison of runs."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cdl_tf import aggregate, coding
from cdl_tf.export_report import BitsPerWeight, ExportAccuracy, ExportBytes, ExportReport
from cdl_tf.lineage import lineage
from cdl_tf.plots import LEGEND_INSIDE_MAX, PLOTS, plot_results
from cdl_tf.results import METHODS, BenchmarkError, Point, result_row
from cdl_tf.results_markdown import paired_markdown
from cdl_tf.run_config import read_run_config
from cdl_tf.training import load_run
from conftest import config_module
from tflite_export.convert import TFLiteModel
from cdl_tf.tools.paired_comparison import compare_runs
from cdl_tf.tools.sweep import Sweep, _check_existing, point_config, quick_config, run_point, run_sweep, tabulate_runs

lenet300_mnist = config_module("lenet300_mnist")

SWEEP = Sweep(bits=(4,), lambda_w=(0.05,), lambda_a=(0.005,))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
    c = lenet300_mnist.get_config()
    c.data_dir = ""  # $CDL_DATA_DIR
    c.train_subset, c.test_subset, c.epochs, c.verbose = 1024, 500, 1, 0
    c.validation_size = 500
    c.bn_reestimate_steps, c.rate_warmup_epochs = 2, 0
    return c


def _mtimes(outdir):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(outdir) for f in files
            if f in ("metrics.json", "model.keras", "export.json", "weights.cdlz", "model.tflite")}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, data_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDL_DATA_DIR", str(data_dir))
        outdir = str(tmp_path_factory.mktemp("bench"))
        first = run_sweep(tiny_config(), SWEEP, outdir)
        mtimes = _mtimes(outdir)
        second = run_sweep(tiny_config(), SWEEP, outdir)
        yield outdir, first, second, mtimes


def _written(outdir):
    with open(os.path.join(outdir, "results.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_one_row_per_method(bench):
    outdir, results, _, _ = bench
    assert [r["method"] for r in results["rows"]] == list(METHODS)
    assert [r["point"] for r in results["rows"]] == [
        "float", "tfmot8", "ptq8", "ste_w4a4", "cdl_w4a4_lw0.05_la0.005", "rcdl_w4a4_lw0.05_la0.005", "epr_w4_lw0.05"]
    md = open(os.path.join(outdir, "results.md")).read()
    assert md.count("\n| ") == 2 + len(results["rows"]) + 2  # 2 headers, rows, 2 published points


@pytest.mark.slow
def test_derived_fields(bench):
    outdir, _, _, _ = bench
    results = _written(outdir)
    reference = 4 * (784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    assert results["float32_bytes"] == reference
    for r in results["rows"]:
        assert r["compression_ratio"] == pytest.approx(reference / r["coded_bytes"])
        assert r["error"] == pytest.approx(1 - r["accuracy"])
        assert r["coded_kb"] == pytest.approx(r["coded_bytes"] / 1000)
        assert 0.3 < r["accuracy"] <= 1
        if r["method"] == "float":
            assert r["coded_bytes"] == reference and r["bits_per_weight"] == 32
            continue
        assert r["coded_bytes"] == os.path.getsize(os.path.join(r["workdir"], "export", "weights.cdlz"))
        assert r["coded_bytes"] < reference / 3
        assert 0 < r["bits_per_weight"] < r["bits_per_weight_total"] < 8.5
    cdl = next(r for r in results["rows"] if r["method"] == "cdl")
    assert (cdl["lambda_w"], cdl["weight_bits"], cdl["activation_bits_kind"]) == (0.05, 4, "entropy")
    assert (cdl["first_layer_bits"], cdl["last_layer_bits"]) == (8, 8)


@pytest.mark.slow
def test_plots_written_and_redrawn(bench, tmp_path):
    outdir, results, _, _ = bench
    assert results["plots"] == list(PLOTS)
    for name in PLOTS:
        with open(os.path.join(outdir, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(outdir, "results.json")) as f:
        assert plot_results(json.load(f), str(tmp_path)) == list(PLOTS)
    assert all((tmp_path / name).stat().st_size > 10_000 for name in PLOTS)


@pytest.mark.slow
def test_many_methods_get_their_legend_beside_the_axes(bench, tmp_path):
    """Past LEGEND_INSIDE_MAX methods the legend leaves the axes and the figure widens to hold it."""
    from matplotlib.image import imread

    _, results, _, _ = bench
    few, many = tmp_path / "few", tmp_path / "many"
    plot_results(results, str(few))
    rows = [dict(results["rows"][0], method=f"method {i}", group=f"group {i}") for i in range(LEGEND_INSIDE_MAX + 1)]
    plot_results(dict(results, rows=rows), str(many))
    for name in PLOTS:
        assert imread(many / name).shape[1] > 1.5 * imread(few / name).shape[1], name


@pytest.mark.slow
def test_second_run_does_not_retrain(bench):
    outdir, first, second, mtimes = bench
    assert len(mtimes) >= 6 * 2
    assert _mtimes(outdir) == mtimes
    assert second["rows"] == first["rows"]


@pytest.mark.slow
def test_changed_config_is_refused(bench, data_dir, monkeypatch):
    outdir, _, _, _ = bench
    monkeypatch.setenv("CDL_DATA_DIR", str(data_dir))
    c = tiny_config()
    c.epochs = 2
    with pytest.raises(BenchmarkError, match=r"float holds a run with another config \(fields \['epochs'\]"):
        run_point(c, Point("float"), outdir)


def test_run_made_before_validation_size_existed_is_refused_for_a_split(tmp_path):
    # Its config has no validation_size: it trained on every training image, as validation_size=0 does.
    c = tiny_config()
    old = json.loads(point_config(c, Point("float")).to_json())
    del old["validation_size"]
    workdir = tmp_path / "float"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(old))
    with pytest.raises(BenchmarkError, match=r"another config \(fields \['validation_size'\]"):
        run_point(c, Point("float"), str(tmp_path))
    c.validation_size = 0
    _check_existing(point_config(c, Point("float")), str(workdir))


@pytest.mark.slow
def test_ptq_int8_weights_are_coded(bench):
    _, results, _, _ = bench
    ptq = next(r for r in results["rows"] if r["method"] == "ptq8")
    export = os.path.join(ptq["workdir"], "export")
    tflite = TFLiteModel(open(os.path.join(export, "model.tflite"), "rb").read())
    int8 = {t["name"]: t for t in tflite.int8_tensors()}
    coded = coding.read(os.path.join(export, "weights.cdlz"))
    quantized = {n: coded[n] for n in coded if isinstance(coded[n], coding.QuantizedTensor)}
    assert sum(t.indices.size for t in quantized.values()) == 784 * 300 + 300 * 100 + 100 * 10
    for name, t in quantized.items():
        value, q = int8[name]["value"], int8[name]["quantization_parameters"]
        if t.scales is None:
            np.testing.assert_array_equal(t.indices, value)
            assert t.q == pytest.approx(q["scales"][0])
        else:
            np.testing.assert_array_equal(t.indices, np.moveaxis(value, q["quantized_dimension"], -1))
            np.testing.assert_allclose(t.scales, q["scales"], rtol=1e-6)
    biases = [np.asarray(coded[n]) for n in coded if n not in quantized]
    assert sorted(b.size for b in biases) == [10, 100, 300]
    report = ExportReport.read(export)
    assert ptq["coded_bytes"] == report.bytes.cdlz_ans < report.bytes.tflite_int8
    assert report.bits_per_weight.ans_payload <= 1.01 * report.bits_per_weight.entropy + 0.01
    assert report.source == next(r["workdir"] for r in results["rows"] if r["method"] == "float")
    assert {n: list(t.indices.shape) for n, t in quantized.items()} == {n: list(report.tensors[n]) for n in quantized}


def test_quick_config_keeps_command_line_overrides():
    c = quick_config(lenet300_mnist.get_config(), {"epochs": 1, "optimizer.learning_rate": 0.01})
    assert (c.train_subset, c.test_subset, c.epochs, c.optimizer.learning_rate) == (8192, 2000, 1, 0.01)
    assert quick_config(lenet300_mnist.get_config()).epochs == 2


def test_sweep_points_and_errors():
    names = [p.name for p in Sweep(bits=(2, 4), lambda_w=(0.01, 0.1), activation_bits=8).points()]
    assert names[:3] == ["float", "tfmot8", "ptq8"] and len(names) == 3 + 2 * (1 + 2 * 2 + 2)
    assert "cdl_w2a8_lw0.1_la0.005" in names and "ste_w4a8" in names and "epr_w2_lw0.1" in names
    with pytest.raises(BenchmarkError, match="add 'float'"):
        Sweep(methods=("ptq8", "cdl"))
    with pytest.raises(BenchmarkError, match="unknown methods"):
        Sweep(methods=("int4",))


@pytest.mark.slow
def test_finished_runs_tabulate_like_a_sweep(bench, tmp_path):
    outdir, results, _, _ = bench
    by_point = {r["point"]: r for r in results["rows"]}
    runs = [os.path.join(outdir, p) for p in ("float", "tfmot8") + tuple(p for p in by_point if p.startswith("cdl"))]
    mtimes = _mtimes(outdir)
    table = tabulate_runs(runs, str(tmp_path))
    assert _mtimes(outdir) == mtimes  # finished runs are read, not retrained or re-exported
    rows = {r["point"]: r for r in table["rows"]}
    assert set(rows) == {os.path.basename(r) for r in runs} | {"ptq8"}
    for name, row in rows.items():
        if name != "ptq8":
            assert row["accuracy"] == pytest.approx(by_point[name]["accuracy"])
            assert row["coded_bytes"] == by_point[name]["coded_bytes"]
    assert os.path.isfile(tmp_path / "results.md") and table["plots"]
    with pytest.raises(BenchmarkError, match="no run"):
        tabulate_runs([], str(tmp_path))


def test_weights_only_cdl_row_reports_calibrated_int8_activations(tmp_path):
    for quantize_activations in (True, False):
        run = tmp_path / str(quantize_activations)
        (run / "export").mkdir(parents=True)
        ExportReport(workdir=str(run), bytes=ExportBytes(float32_weights=320_000, cdlz_ans=2000, tflite_int8=9000),
                     bits_per_weight=BitsPerWeight(entropy=0.04, ans_payload=0.05, cdlz_ans_total=0.06),
                     accuracy=ExportAccuracy(tflite_int8=0.98)).write(str(run / "export"))
        metrics = {"test_accuracy": 0.979, "train_time_s": 1.0, "bits_per_activation": 1.5,
                   "cdl": {"first_layer_bits": 8, "last_layer_bits": None,
                           "quantize_activations": quantize_activations}}
        (run / "metrics.json").write_text(json.dumps(metrics))
        (run / "config.json").write_text(json.dumps({"seed": 3}))
        row = result_row(Point("rcdl", 4, 4, 0.1, 0.0), str(run), 100_000)
        assert row["coded_bytes"] == 2000 and row["compression_ratio"] == 50.0
        assert row["seed"] == 3
        if quantize_activations:
            assert (row["bits_per_activation"], row["activation_bits_kind"], row["activation_bits"]) == (1.5, "entropy", 4)
        else:
            assert (row["bits_per_activation"], row["activation_bits_kind"], row["activation_bits"]) == (8.0, "nominal", 8)


def test_sweep_points_under_seeds():
    points = Sweep(bits=(4,), lambda_w=(0.1,), methods=("float", "ptq8", "cdl"), seeds=(0, 2)).points()
    assert [p.name for p in points] == ["float_seed0", "float_seed2", "ptq8_seed0", "ptq8_seed2",
                                        "cdl_w4a4_lw0.1_la0.005_seed0", "cdl_w4a4_lw0.1_la0.005_seed2"]
    assert [p.group for p in points] == ["float"] * 2 + ["ptq8"] * 2 + ["cdl_w4a4_lw0.1_la0.005"] * 2
    assert point_config(tiny_config(), points[-1]).seed == 2
    assert point_config(tiny_config(), Point("float")).seed == tiny_config().seed
    for seeds in ((1, 1), (-1,)):
        with pytest.raises(BenchmarkError, match="seeds must be distinct and >= 0"):
            Sweep(seeds=seeds)


def test_summary_mean_std_and_sem():
    rows = [{"method": "cdl", "point": f"p_seed{i}", "group": "p", "seed": i, "workdir": f"/r/p{i}",
             "accuracy": a, "error": 1 - a, "keras_accuracy": a, "coded_kb": kb, "bits_per_weight": 1.0,
             "bits_per_activation": None} for i, (a, kb) in enumerate([(0.90, 3.0), (0.92, 2.0), (0.97, 4.0)])]
    rows.append({**rows[0], "group": None, "workdir": "/r/other", "seed": 7})
    p, other = aggregate.summarize(rows)
    assert (p["n"], p["seeds"], other["n"], other["group"]) == (3, [0, 1, 2], 1, "/r/other")
    assert p["accuracy"] == pytest.approx(0.93)
    std = math.sqrt((0.03 ** 2 + 0.01 ** 2 + 0.04 ** 2) / 2)
    assert p["accuracy_std"] == pytest.approx(std) and p["error_std"] == pytest.approx(std)
    assert p["accuracy_sem"] == pytest.approx(std / math.sqrt(3))
    assert (p["coded_kb"], p["coded_kb_std"], p["bits_per_weight_std"]) == (pytest.approx(3.0), pytest.approx(1.0), 0.0)
    assert p["bits_per_activation"] is None and p["bits_per_activation_std"] is None
    assert (other["accuracy"], other["accuracy_std"]) == (pytest.approx(0.90), 0.0)


def test_paired_difference_is_the_mean_and_standard_error_of_per_example_differences():
    rng = np.random.RandomState(0)
    a, b = rng.rand(3, 400) < 0.8, rng.rand(3, 400) < 0.7
    d = (a.astype(int) - b.astype(int)).reshape(-1)  # the 1200 pooled per-example differences
    pooled = aggregate.paired_difference(list(a), list(b))
    assert pooled["n"] == 1200 and pooled["only_a"] - pooled["only_b"] == d.sum()
    assert pooled["difference"] == pytest.approx(d.mean())
    assert pooled["se"] == pytest.approx(d.std() / math.sqrt(d.size))
    assert pooled["accuracy_a"] - pooled["accuracy_b"] == pytest.approx(pooled["difference"])
    same = aggregate.paired_difference([a[0]], [a[0]])
    assert (same["difference"], same["se"]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same, non-empty examples"):
        aggregate.paired_difference([a[0]], [b[0][:10]])


@pytest.mark.slow
def test_exported_runs_compare_pairwise_on_their_test_set(bench, tmp_path):
    outdir, results, _, _ = bench
    rows = {r["point"]: r for r in results["rows"]}
    cdl, rcdl, ste = (os.path.join(outdir, p) for p in ("cdl_w4a4_lw0.05_la0.005", "rcdl_w4a4_lw0.05_la0.005",
                                                          "ste_w4a4"))
    paired = compare_runs([(cdl, rcdl), (ste, cdl)], str(tmp_path))
    first, second = paired["pairs"]
    assert first["accuracy_a"] == pytest.approx(rows["cdl_w4a4_lw0.05_la0.005"]["accuracy"])
    assert first["accuracy_b"] == pytest.approx(rows["rcdl_w4a4_lw0.05_la0.005"]["accuracy"])
    assert second["accuracy_a"] == pytest.approx(rows["ste_w4a4"]["accuracy"])
    assert first["n"] == second["n"] == 500 and paired["pooled"]["n"] == 1000
    assert paired["pooled"]["only_a"] == first["only_a"] + second["only_a"]
    with open(tmp_path / "paired.json") as f:
        assert json.load(f) == paired
    assert paired_markdown(paired).count("\n| ") == 2 + 1  # rows of the pairs and the pooled row
    with pytest.raises(BenchmarkError, match="no export/model.tflite"):
        compare_runs([(cdl, str(tmp_path))], str(tmp_path))


@pytest.mark.slow
def test_sweep_under_seeds_runs_each_point_per_seed(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("CDL_DATA_DIR", str(data_dir))
    sweep = Sweep(bits=(4,), lambda_w=(0.05,), methods=("float", "ptq8"), seeds=(0, 1))
    results = run_sweep(tiny_config(), sweep, str(tmp_path))
    rows = results["rows"]
    assert [(r["point"], r["seed"], r["group"]) for r in rows] == [
        ("float_seed0", 0, "float"), ("float_seed1", 1, "float"), ("ptq8_seed0", 0, "ptq8"), ("ptq8_seed1", 1, "ptq8")]
    for r in rows[2:]:  # each seed's ptq8 converts its own seed's float model
        with open(os.path.join(r["workdir"], "metrics.json")) as f:
            assert json.load(f)["source"] == str(tmp_path / f"float_seed{r['seed']}")
    w0, w1 = (load_run(r["workdir"])[1].get_weights()[0] for r in rows[:2])
    assert not np.allclose(w0, w1)
    floats = results["summary"][0]
    assert (floats["method"], floats["n"], floats["seeds"]) == ("float", 2, [0, 1])
    assert floats["accuracy"] == pytest.approx((rows[0]["accuracy"] + rows[1]["accuracy"]) / 2)
    md = open(tmp_path / "results.md").read()
    assert "seeds 0, 1" in md and md.count("| float_seed0, float_seed1 | 2 | 0, 1 | ") == 1


def _write_run(path, **config):
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"seed": 0, "init_from": "", "verbose": 2, "data_dir": "", "distill": {"teacher": ""},
                   "cdl": {"lambda_w": 0.5}, **config}, f)
    return str(path)


def test_lineage_ignores_seeds_along_the_chain(tmp_path):
    parents = [_write_run(tmp_path / f"float{s}", seed=s) for s in (0, 1)]
    other_parent = _write_run(tmp_path / "float_lr", seed=0, lr=0.1)
    children = [_write_run(tmp_path / f"cdl{s}", seed=s, init_from=parents[s], verbose=0) for s in (0, 1)]
    same = lineage(children[0])
    assert lineage(children[1]) == same and same["init_from"] == lineage(parents[0])
    assert lineage(_write_run(tmp_path / "cdl_lw", init_from=parents[0], cdl={"lambda_w": 1})) != same
    assert lineage(_write_run(tmp_path / "cdl_lr", init_from=other_parent)) != same
    taught = [_write_run(tmp_path / f"kd{s}", seed=s, init_from=children[s], distill={"teacher": parents[1 - s]})
              for s in (0, 1)]
    assert lineage(taught[0]) == lineage(taught[1])
    gone = _write_run(tmp_path / "orphan", init_from=str(tmp_path / "deleted"))
    assert lineage(gone)["init_from"] == str(tmp_path / "deleted")
    # A config written before `augment` existed means its default: the same lineage.
    newer = _write_run(tmp_path / "cdl0_newer", seed=2, init_from=parents[0], augment="auto")
    assert lineage(newer) == same
    assert lineage(_write_run(tmp_path / "cdl0_shifted", init_from=parents[0], augment="on")) != same
    assert read_run_config(parents[0]).augment == "auto" and read_run_config(newer).seed == 2
    # Also a field of the cdl section (written as {"lambda_w": 0.5} before it existed).
    exact = _write_run(tmp_path / "cdl0_exact", seed=3, init_from=parents[0], cdl={"lambda_w": 0.5,
                                                                                  "activation_count_sample": 0})
    assert lineage(exact) == same
    assert read_run_config(children[0]).cdl.activation_count_sample == 0
    sampled = _write_run(tmp_path / "cdl0_sampled", init_from=parents[0], cdl={"lambda_w": 0.5,
                                                                               "activation_count_sample": 64})
    assert lineage(sampled) != same


@pytest.mark.slow
def test_tabulated_runs_of_other_seeds_form_one_group(bench, tmp_path):
    outdir, results, _, _ = bench
    cdl = next(r for r in results["rows"] if r["method"] == "cdl")["workdir"]
    copy = str(tmp_path / "runs" / "cdl_seed1")
    shutil.copytree(cdl, copy)
    with open(os.path.join(copy, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(copy, "config.json"), "w") as f:
        json.dump({**config, "seed": 1}, f)
    table = tabulate_runs([os.path.join(outdir, "float"), cdl, copy], str(tmp_path / "report"))
    assert [r["point"] for r in table["rows"]] == ["float", "ptq8"] + ["cdl_w4a4_lw0.05_la0.005"] * 2
    assert table["rows"][1]["workdir"] == str(tmp_path / "report" / "ptq8_float")
    assert [(g["method"], g["n"], g["seeds"]) for g in table["summary"]] == [
        ("float", 1, [0]), ("ptq8", 1, [0]), ("cdl", 2, [0, 1])]
    assert table["summary"][2]["coded_kb_std"] == 0.0


def _tool(*args: str, data_dir) -> subprocess.CompletedProcess:
    """``python *args`` from the repository, in a fresh process."""
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, "CDL_DATA_DIR": str(data_dir)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


# cdl-bench with the sweep replaced by a print of what it would run: the sweep and the config as JSON.
BENCH_ARGUMENTS = r"""
import dataclasses, json
from cdl_tf.tools import sweep

def show(config, sweep, outdir):
    print(json.dumps({"sweep": dataclasses.asdict(sweep), "config": config.to_dict(), "outdir": outdir}))
    raise SystemExit(0)

sweep.run_sweep = show
from cdl_tf.tools import bench as tool
tool.run()
"""


@pytest.mark.slow
def test_bench_flags_set_the_sweep_and_the_quick_config(tmp_path, data_dir):
    done = _tool("-c", BENCH_ARGUMENTS, "--quick", "--bits=2,8", "--lambda_w=0.1", "--lambda_a=0.01,0.02",
                 "--activation_bits=8", "--methods=float,ptq8,cdl", "--seeds=0,3", "--config.epochs=1",
                 f"--outdir={tmp_path}", data_dir=data_dir)
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert shown["sweep"] == {"bits": [2, 8], "lambda_w": [0.1], "lambda_a": [0.01, 0.02], "activation_bits": 8,
                              "methods": ["float", "ptq8", "cdl"], "seeds": [0, 3]}
    config = shown["config"]
    assert (config["model"], config["train_subset"], config["test_subset"]) == ("lenet300_100", 8192, 2000)
    assert config["epochs"] == 1 and shown["outdir"] == str(tmp_path)  # the command line's override is kept


@pytest.mark.slow
def test_bench_paired_flag_compares_the_runs(bench, tmp_path, data_dir):
    outdir, _, _, _ = bench
    cdl, rcdl = (os.path.join(outdir, p) for p in ("cdl_w4a4_lw0.05_la0.005", "rcdl_w4a4_lw0.05_la0.005"))
    done = _tool("-m", "cdl_tf.tools.bench", f"--paired={cdl}:{rcdl}", f"--outdir={tmp_path}", data_dir=data_dir)
    with open(tmp_path / "paired.json") as f:
        paired = json.load(f)
    assert [(p["a"], p["b"]) for p in paired["pairs"]] == [(cdl, rcdl)]
    assert done.stdout == paired_markdown(paired) + "\n"


@pytest.mark.slow
def test_plot_tool_redraws_the_plots_of_a_results_file(bench, tmp_path, data_dir):
    outdir, _, _, _ = bench
    done = _tool(os.path.join(ROOT, "tools", "plot.py"), f"--results={outdir}/results.json", f"--outdir={tmp_path}",
                 data_dir=data_dir)
    assert done.stdout.splitlines() == [str(tmp_path / name) for name in PLOTS]
    for name in PLOTS:
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
