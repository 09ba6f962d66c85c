"""Train a model as an experiment config says.

cdl-train --config=configs/lenet5_mnist.py --workdir=/tmp/lenet5 --config.mode=rcdl
"""
from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (created; an interrupted run there resumes).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from cdl_tf.training import train_and_evaluate

    metrics = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    line = f"test accuracy {metrics['test_accuracy']:.4f} (error {100 * metrics['test_error']:.2f}%)"
    if "bits_per_weight" in metrics:
        line += (f", {metrics['bits_per_weight']:.3f} bits/weight, "
                 f"{metrics['bits_per_activation']:.3f} bits/activation")
    print(line)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
