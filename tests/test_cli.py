"""The command-line tools' output: TensorFlow starts quietly, ``-v`` brings its logs back, rate reports
and export do not retrace, and export shows progress bars. Each tool runs in a fresh process."""
import os
import re
import subprocess
import sys

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


def test_training_with_warnings_shown_has_no_retracing(trained):
    _, done = trained
    assert "test accuracy" in done.stdout
    assert ABSL_START in done.stderr  # --verbosity given: TensorFlow's start-up lines are back
    assert "retracing" not in done.stderr, done.stderr[-3000:]


def test_export_is_quiet_by_default_and_shows_progress(trained, data_dir):
    workdir, _ = trained
    done = _cli("cdl_tf.tools.export", f"--workdir={workdir}", data_dir=data_dir)
    noise = [line for line in done.stderr.splitlines() if line.strip() and line != LITERT_DELEGATE]
    assert noise == []
    out = done.stdout.replace("\b", "").replace("\r", "\n")
    assert "calibrating activation ranges on 8 training batches\n" in out and "8/8 [=====" in out
    assert "evaluating Keras Q_u, TFLite int8, TFLite float on 500 test images\n" in out and "3/3 [=====" in out
    assert "accuracy Keras Q_u" in out


def test_export_with_verbosity_logs_tensorflow_and_does_not_retrace(trained, data_dir):
    workdir, _ = trained
    done = _cli("cdl_tf.tools.export", f"--workdir={workdir}", f"--out={workdir}/export_v", "--verbosity=0",
                data_dir=data_dir)
    lines = done.stderr.splitlines()
    assert ABSL_START in lines and sum(bool(LOG_LINE.match(line)) for line in lines) >= 3
    assert "retracing" not in done.stderr
