"""What coding the kernels' columns as multisets (`.cdlz` version 4) saves on trained runs.

For each run directory (written by ``cdl-train``; a recipe's phase directory such as
``DIR/3_small_hard``) the model's coded tensors (`cdl_tf.coded_model.coded_tensors`: units in
canonical order) are written twice, as version 3 (``max_version=3``: kernels coded in order) and
as version 4 (the writer's default: columns coded as multisets where smaller), and the version-4
file is decoded and checked to give back the same tensors bit for bit. The metadata (the int8
activation ranges, which the order of channels does not change) comes from the run's existing
``weights.cdlz`` (``RUN/export`` or, for a recipe, ``RUN/../export``), whose size and version are
reported too (``existing_export``: the file as the exporter of its day wrote it; before version 4
that is version 3 with the units live-first); without one the ranges are calibrated as
``cdl-export`` does.

Per reorderable layer: its units ``n``, live units (a non-zero kernel column), the bound
``order_bits = log2(n! / prod_k m_k!)`` over identical units (`cdl_tf.coded_model.unit_order_bits`),
and two parts of it: ``live_dead_split_bits = log2 C(n, n_live)``, which units are live, which
the canonical (live-first) order already saves in version 3 (the live masks become runs), and
``live_order_bits = log2(n_live! / prod_k m_k!)`` over the live kernel columns, what version 4
saves on top (the rest of the bound is the order of the dead units, held by their biases and
readers' rows, which stay stored in order). Then the kind written and the index bytes (payload
and live masks) of the kernel in each version. Per file: both sizes and the sums. Written to
``bench/results/permutation_coding.json``.

Usage: ``python bench/permutation_coding.py --runs=DIR[,DIR...] [--out PATH]``.
"""
from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from cdl_tf import coding
from cdl_tf.coded_model import apply_coded, coded_tensors, unit_order_bits
from cdl_tf.coding.multiset import order_bits
from cdl_tf.io import atomic_write_json
from cdl_tf.training import load_run


def _existing_export(run: str) -> str | None:
    """The ``weights.cdlz`` that ``cdl-export`` (``RUN/export``) or a recipe (``RUN/../export``) wrote."""
    for export in (os.path.join(run, "export"), os.path.join(os.path.dirname(os.path.abspath(run)), "export")):
        path = os.path.join(export, "weights.cdlz")
        if os.path.isfile(path):
            return path
    return None


def _ranges(config, model, tensors) -> list:
    """The int8 activation ranges ``cdl-export`` stores, calibrated on the run's training batches."""
    from tflite_export.export import calibration_data
    from tflite_export.graph import InferenceGraph

    apply_coded(model, tensors)
    graph = InferenceGraph(model)
    graph.calibrate(calibration_data(config))
    return graph.stored_ranges()


def _index_bytes(f: coding.CodedFile, name: str) -> int:
    return f.payload_bytes(name) + f.mask_bytes(name)


def _kind(f: coding.CodedFile, name: str) -> int:
    """The kind a quantized tensor was written as: 0, 3 (live masks), 4 (multiset) or 5 (both)."""
    return {(False, False): 0, (True, False): 3, (False, True): 4, (True, True): 5}[f.mask_bytes(name) > 0, f.unordered(name)]


def measure_run(run: str) -> dict:
    """Both encodings of one run's coded tensors, per reorderable layer and per file."""
    config, model = load_run(run)
    tensors = coded_tensors(model)
    existing = _existing_export(run)
    existing_file = coding.read(existing) if existing else None
    metadata = existing_file.metadata if existing else {"ranges": _ranges(config, model, tensors)}
    v3 = coding.encode_bytes(tensors, metadata=metadata, max_version=3)
    v4 = coding.encode_bytes(tensors, metadata=metadata)
    f3, f4 = coding.decode_bytes(v3), coding.decode_bytes(v4)
    exact = list(f4) == list(tensors) and all(
        np.array_equal(f4[n].indices, t.indices) if isinstance(t, coding.QuantizedTensor) else np.array_equal(f4[n], t)
        for n, t in tensors.items())
    layers = {}
    for layer, bits in unit_order_bits(model, tensors).items():
        name = f"{layer}/kernel"
        kernel = tensors[name].indices
        columns = kernel.reshape(-1, kernel.shape[-1])
        live = columns[:, columns.any(axis=0)]
        layers[layer] = {
            "units": int(columns.shape[1]),
            "live_units": int(live.shape[1]),
            "order_bits": round(bits, 1),
            "live_dead_split_bits": round(math.log2(math.comb(columns.shape[1], live.shape[1])), 1),
            "live_order_bits": round(order_bits(live), 1),
            "kind_v3": _kind(f3, name),
            "kind_v4": _kind(f4, name),
            "index_bytes_v3": _index_bytes(f3, name),
            "index_bytes_v4": _index_bytes(f4, name),
            "saved_bits": 8 * (_index_bytes(f3, name) - _index_bytes(f4, name)),
        }
    return {
        "run": os.path.abspath(run),
        "model": config.model,
        "layers": layers,
        "file": {
            "bytes_v3": len(v3),
            "bytes_v4": len(v4),
            "saved_bytes": len(v3) - len(v4),
            "saved_fraction": round((len(v3) - len(v4)) / len(v3), 4),
            "order_bytes": round(sum(l["order_bits"] for l in layers.values()) / 8, 1),
            "live_dead_split_bytes": round(sum(l["live_dead_split_bits"] for l in layers.values()) / 8, 1),
            "live_order_bytes": round(sum(l["live_order_bits"] for l in layers.values()) / 8, 1),
        },
        "existing_export": {"path": existing, "bytes": existing_file.total_bytes, "version": existing_file.version}
        if existing else None,
        "v4_decodes_to_the_canonical_tensors": bool(exact),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="Comma-separated run directories (cdl-train workdirs).")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "permutation_coding.json"))
    args = parser.parse_args()
    results = [measure_run(run) for run in args.runs.split(",") if run]
    atomic_write_json(args.out, {"runs": results})
    print(json.dumps([{"run": r["run"], **r["file"]} for r in results], indent=1))
    print(f"wrote {args.out}")
    return 0 if all(r["v4_decodes_to_the_canonical_tensors"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
