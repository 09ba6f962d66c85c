"""Train a model as an experiment config says, or run a recipe of several phases whole.

cdl-train --config=configs/lenet5_mnist.py --workdir=/tmp/lenet5 --config.mode=rcdl
cdl-train --config=configs/lenet5_mnist.py:recipe --workdir=/tmp/lenet5_recipe   # `tools/pipeline.py`
"""
from absl import flags
from ml_collections import config_flags

from cdl_tf.tools import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]); its fields, "
                                "their defaults and checks: cdl_tf/experiment_config.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (created; an interrupted run there resumes).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from cdl_tf.tools import pipeline

    if pipeline.is_recipe(FLAGS.config):
        print(pipeline.format_summary(pipeline.run_recipe(FLAGS.config, FLAGS.workdir)))
        return
    from cdl_tf.training import train_and_evaluate

    print(summary(train_and_evaluate(FLAGS.config, FLAGS.workdir)))


def summary(metrics: dict) -> str:
    """The run's one-line result; rates a run does not have (float, weights only) are left out."""
    line = f"test accuracy {metrics['test_accuracy']:.4f} (error {100 * metrics['test_error']:.2f}%)"
    for key, unit in (("bits_per_weight", "bits/weight"), ("bits_per_activation", "bits/activation")):
        if metrics.get(key) is not None:
            line += f", {metrics[key]:.3f} {unit}"
    return line


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
