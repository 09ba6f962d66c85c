"""cdl-bench, the compression benchmark: CDL/R-CDL sweeps against float, TF-MOT 8-bit QAT,
post-training int8 and uniform QAT (`tools/sweep.py`), with results.json, results.md and plots in
--outdir; or the same table of finished runs (--runs), or paired comparisons of exported runs
(--paired, `tools/paired_comparison.py`).

cdl-bench --config=configs/lenet5_mnist.py --outdir=/tmp/bench --bits=2,4 --lambda_w=0.01,0.05 --config.epochs=8
cdl-bench --quick --outdir=/tmp/bench_quick     # LeNet-300-100, 8192 images, 2 epochs, 2 lambdas
cdl-bench --quick --seeds=0,1,2 --methods=ste,cdl,rcdl --outdir=/tmp/bench_seeds   # mean ± std over 3 seeds
cdl-bench --paired=runs/a_seed0:runs/b_seed0,runs/a_seed1:runs/b_seed1 --outdir=/tmp/paired  # A - B ± paired SE
"""
import os

from absl import app, flags
from ml_collections import config_flags

from cdl_tf.tools import cli

FLAGS = flags.FLAGS
# The repository's configs/ (an installed copy ships none: then give --config).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                              "lenet300_mnist.py")
config_flags.DEFINE_config_file("config", DEFAULT_CONFIG,
                                "Base experiment config file (configs/*.py; default: the repository's "
                                "configs/lenet300_mnist.py); every point overrides mode, bits, lambdas.",
                                lock_config=True)
flags.DEFINE_string("outdir", None, "Output directory: one run directory per point, results.json/.md, plots.")
flags.DEFINE_bool("quick", False, "Reduced sweep: 8192 training images, 2 epochs, 4 bits, 2 lambda_w.")
flags.DEFINE_list("bits", None, "Weight bit widths of the cdl/rcdl/ste points (default 2,4,8; quick: 4).")
flags.DEFINE_list("lambda_w", None, "Weight rate weights of the cdl/rcdl points (default 0.005,0.02,0.05).")
flags.DEFINE_list("lambda_a", None, "Activation rate weights of the cdl/rcdl points (default 0.005).")
flags.DEFINE_integer("activation_bits", 0, "Activation bit width (0: that of the weights).")
flags.DEFINE_list("methods", None, "Subset of float,tfmot8,ptq8,ste,cdl,rcdl,epr (default: all).")
flags.DEFINE_list("seeds", None, "Run every point once per seed; the table and plots add mean ± std "
                  "(default: once, with the config's seed).")
flags.DEFINE_list("runs", None, "Instead of sweeping, tabulate these finished cdl-train run directories "
                  "(a recipe's directory stands for its last phase).")
flags.DEFINE_list("paired", None, "Instead of sweeping, compare exported runs A:B pairwise on their test set "
                  "(accuracy difference and its paired standard error, per pair and pooled).")
flags.mark_flag_as_required("outdir")


def _parse(flag: str, kind: type) -> tuple:
    """The values of list flag ``--flag`` as ``kind`` (empty if not given); a bad value is a usage error."""
    try:
        return tuple(kind(v) for v in FLAGS[flag].value or ())
    except ValueError as e:
        raise app.UsageError(f"--{flag}: {e}") from e


def main(argv):
    del argv
    import dataclasses

    from cdl_tf.results import BenchmarkError
    from cdl_tf.results_markdown import markdown, paired_markdown
    from cdl_tf.tools.sweep import QUICK_SWEEP, Sweep, quick_config, run_sweep, tabulate_runs
    from cdl_tf.tools.pipeline import final_run

    if FLAGS.runs:
        print(markdown(tabulate_runs([final_run(d) for d in FLAGS.runs], FLAGS.outdir)))
        return
    if FLAGS.paired:
        from cdl_tf.tools.paired_comparison import compare_runs

        pairs = [tuple(final_run(d) for d in item.split(":")) for item in FLAGS.paired]
        if any(len(pair) != 2 or not all(pair) for pair in pairs):
            raise app.UsageError(f"--paired: expected RUN_A:RUN_B items, got {FLAGS.paired}")
        print(paired_markdown(compare_runs(pairs, FLAGS.outdir)))
        return
    sweep = QUICK_SWEEP if FLAGS.quick else Sweep()
    given = {"bits": _parse("bits", int), "lambda_w": _parse("lambda_w", float),
             "lambda_a": _parse("lambda_a", float), "methods": _parse("methods", str), "seeds": _parse("seeds", int)}
    try:
        sweep = dataclasses.replace(sweep, activation_bits=FLAGS.activation_bits,
                                    **{k: v for k, v in given.items() if v})
    except BenchmarkError as e:
        raise app.UsageError(str(e)) from e
    if not FLAGS["config"].present and not os.path.isfile(DEFAULT_CONFIG):
        raise app.UsageError(f"--config: the default {DEFAULT_CONFIG} does not exist; give a config file")
    config = FLAGS.config
    if FLAGS.quick:
        config = quick_config(config, config_flags.get_override_values(FLAGS["config"]))
    print(markdown(run_sweep(config, sweep, FLAGS.outdir)))


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
