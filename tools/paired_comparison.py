"""Paired comparison of exported runs (``cdl-bench --paired``): their int8 TFLite models scored
on the same test examples, the accuracy difference with its paired standard error
(`cdl_tf.aggregate.paired_difference`)."""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Tuple

from cdl_tf.aggregate import paired_difference
from cdl_tf.io import atomic_write_json
from cdl_tf.results import BenchmarkError
from cdl_tf.run_config import read_run_config
from tflite_export.convert import TFLiteModel
from tflite_export.export import eval_arrays


def compare_runs(pairs: Sequence[Tuple[str, str]], outdir: str) -> Dict[str, Any]:
    """Compare the exported runs of each pair ``(A, B)`` by their int8 TFLite models
    (``export/model.tflite``) on the runs' common test set, per pair and pooled over all pairs.

    Writes ``outdir/paired.json`` and returns its contents.
    """
    if not pairs:
        raise BenchmarkError("no pair of runs given")
    configs = {}
    for workdir in {w for pair in pairs for w in pair}:
        if not os.path.isfile(os.path.join(workdir, "export", "model.tflite")):
            raise BenchmarkError(f"{workdir} has no export/model.tflite; export it first "
                                 f"(cdl-export --workdir={workdir}, or cdl-bench --runs={workdir})")
        configs[workdir] = read_run_config(workdir)
    test_sets = {(c.dataset, c.test_subset) for c in configs.values()}
    if len(test_sets) != 1:
        raise BenchmarkError(f"the runs are scored on different test sets {sorted(test_sets)}; a paired "
                             "comparison needs one")
    x, y = eval_arrays(next(iter(configs.values())))
    correct = {}
    for workdir in configs:
        with open(os.path.join(workdir, "export", "model.tflite"), "rb") as f:
            correct[workdir] = TFLiteModel(f.read()).predict(x, batch_size=500).argmax(1) == y
    results = {
        "pairs": [{"a": os.path.abspath(a), "b": os.path.abspath(b), **paired_difference([correct[a]], [correct[b]])}
                  for a, b in pairs],
        "pooled": paired_difference([correct[a] for a, _ in pairs], [correct[b] for _, b in pairs]),
    }
    os.makedirs(outdir, exist_ok=True)
    atomic_write_json(os.path.join(outdir, "paired.json"), results)
    return results
