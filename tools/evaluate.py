"""Re-evaluate the saved model of a finished run: cdl-evaluate --workdir=/tmp/lenet5"""
import json

from absl import flags

from cdl_tf.tools import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory written by cdl-train.")
flags.DEFINE_string("data_dir", "", "Dataset directory (default: the run's, then $CDL_DATA_DIR).")
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    from cdl_tf.training import evaluate_workdir

    metrics = evaluate_workdir(FLAGS.workdir, FLAGS.data_dir or None)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("layers", "cdl")}, indent=2))


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
