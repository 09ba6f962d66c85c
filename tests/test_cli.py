"""The command-line tools' output: TensorFlow starts quietly, ``-v`` brings its logs back, rate reports
and export do not retrace, and export shows progress bars; the flags of cdl-export, cdl-evaluate and
cdl-decode. Each tool runs in a fresh process."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A line of TensorFlow's C++ log or of absl's Python log ("I1202 11:49:43.290122 ... file:line]"),
# and the line absl's C++ log prints before its first messages at start-up.
LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")
ABSL_START = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# LiteRT prints this once, when the first interpreter with the default kernels starts; not TensorFlow's log.
LITERT_DELEGATE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def _cli(module: str, *args: str, data_dir) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_")}
    env.update(PYTHONPATH=ROOT, CDL_DATA_DIR=str(data_dir))
    done = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """``cdl-train`` of a small LeNet-5 CDL run (two epochs, so two rate reports and the final one),
    with TensorFlow's warnings shown."""
    workdir = tmp_path_factory.mktemp("lenet5")
    done = _cli("cdl_tf.tools.train", "--config=configs/lenet5_mnist.py", f"--workdir={workdir}",
                "--config.train_subset=1000", "--config.test_subset=500", "--config.validation_size=500", "--config.epochs=2",
                "--config.verbose=0", "--verbosity=-1", data_dir=data_dir)
    return workdir, done


@pytest.fixture(scope="module")
def exported(trained, data_dir):
    """``cdl-export`` of the run with the default flags, into ``WORKDIR/export``."""
    workdir, _ = trained
    return _cli("cdl_tf.tools.export", f"--workdir={workdir}", data_dir=data_dir)


@pytest.fixture(scope="module")
def exported_int8_io(trained, data_dir):
    """``cdl-export --int8_io`` of the run, calibrated on 2 batches, into ``WORKDIR/export_io``, logging at -v 0."""
    workdir, _ = trained
    return _cli("cdl_tf.tools.export", f"--workdir={workdir}", f"--out={workdir}/export_io", "--int8_io",
                "--calibration_batches=2", "--verbosity=0", data_dir=data_dir)


@pytest.mark.slow
def test_training_with_warnings_shown_has_no_retracing(trained):
    _, done = trained
    assert "test accuracy" in done.stdout
    assert ABSL_START in done.stderr  # --verbosity given: TensorFlow's start-up lines are back
    assert "retracing" not in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_export_is_quiet_by_default_and_shows_progress(exported):
    noise = [line for line in exported.stderr.splitlines() if line.strip() and line != LITERT_DELEGATE]
    assert noise == []
    out = exported.stdout.replace("\b", "").replace("\r", "\n")
    assert "calibrating activation ranges on 8 training batches\n" in out and "8/8 [=====" in out
    assert "evaluating Keras Q_u, TFLite int8, TFLite float on 500 test images\n" in out and "3/3 [=====" in out
    assert "accuracy Keras Q_u" in out


@pytest.mark.slow
def test_export_with_verbosity_logs_tensorflow_and_does_not_retrace(exported_int8_io):
    lines = exported_int8_io.stderr.splitlines()
    assert ABSL_START in lines and sum(bool(LOG_LINE.match(line)) for line in lines) >= 3
    assert "retracing" not in exported_int8_io.stderr


@pytest.mark.slow
def test_export_with_int8_io_has_int8_inputs_and_outputs_and_the_same_weights(trained, exported, exported_int8_io):
    from tflite_export.convert import TFLiteModel

    workdir, _ = trained
    assert "calibrating activation ranges on 2 training batches" in exported_int8_io.stdout
    models = {}
    for name in ("export", "export_io"):
        with open(workdir / name / "export.json") as f:
            report = json.load(f)
        assert report["int8_io"] == (name == "export_io")
        models[name] = TFLiteModel((workdir / name / "model.tflite").read_bytes())
        io = (models[name].interpreter.get_input_details()[0], models[name].interpreter.get_output_details()[0])
        assert [d["dtype"] for d in io] == [np.int8 if name == "export_io" else np.float32] * 2, name
        assert report["accuracy"]["top1_agreement"] >= 0.98, name  # as test_export's bound for the default kernels
    weights = [{t["name"]: t["value"] for t in m.int8_tensors() if "_kernel_fq" in t["name"]} for m in models.values()]
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) == 4
    for name, value in weights[0].items():
        np.testing.assert_array_equal(weights[1][name], value, err_msg=name)


@pytest.mark.slow
def test_evaluate_reads_the_data_from_its_flag(trained, tmp_path, data_dir):
    workdir, _ = trained
    with open(workdir / "metrics.json") as f:
        trained_metrics = json.load(f)
    with open(workdir / "config.json") as f:
        assert json.load(f)["data_dir"] == ""  # the run reads $CDL_DATA_DIR, here an empty directory
    done = _cli("cdl_tf.tools.evaluate", f"--workdir={workdir}", f"--data_dir={data_dir}", data_dir=tmp_path)
    metrics = json.loads(done.stdout)
    assert "layers" not in metrics and "cdl" not in metrics  # the per-tensor rows are left out
    assert metrics["test_accuracy"] == pytest.approx(trained_metrics["test_accuracy"])
    assert metrics["validation_accuracy"] == pytest.approx(trained_metrics["validation_accuracy"])
    assert metrics["bits_per_weight"] == pytest.approx(trained_metrics["bits_per_weight"])


@pytest.mark.slow
def test_decode_rebuilds_the_exported_model_beside_the_coded_file(trained, exported, tmp_path, data_dir):
    workdir, _ = trained
    coded = tmp_path / "weights.cdlz"
    shutil.copy(workdir / "export" / "weights.cdlz", coded)
    done = _cli("cdl_tf.tools.decode", str(coded), f"--like={workdir}", data_dir=data_dir)
    out = tmp_path / "decoded"
    tflite = (out / "model.tflite").read_bytes()
    assert tflite == (workdir / "export" / "model.tflite").read_bytes()
    assert done.stdout.strip() == f"wrote {out / 'model.keras'} and {out / 'model.tflite'} ({len(tflite)} B)"
