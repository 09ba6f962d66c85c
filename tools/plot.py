"""Redraw the benchmark plots from results.json: cdl-plot --results=/tmp/bench/results.json"""
import json
import os

from absl import flags

from cdl_tf.tools import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("results", None, "results.json written by cdl-bench.")
flags.DEFINE_string("outdir", "", "Directory of the plots (default: that of --results).")
flags.mark_flag_as_required("results")


def main(argv):
    del argv
    from cdl_tf.plots import plot_results

    with open(FLAGS.results) as f:
        results = json.load(f)
    outdir = FLAGS.outdir or os.path.dirname(os.path.abspath(FLAGS.results))
    for name in plot_results(results, outdir):
        print(os.path.join(outdir, name))


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
