"""Benchmark rows of repeated runs (the same point under other seeds) reduced to mean and spread.

Rows with the same ``group`` are runs of one point that differ only in their seed. For the
``n`` values ``x_i`` of a field over a group:

    mean  m  = (1/n) sum_i x_i
    std   s  = sqrt( sum_i (x_i - m)^2 / (n - 1) )     (sample standard deviation; 0 if n = 1)
    sem      = s / sqrt(n)                              (standard error of the mean)

A row without ``group`` (results written before seeds were grouped) is a group of its own.

Two models scored on the same ``n`` test examples are compared pairwise (`paired_difference`):
with ``n10`` examples only model A gets right and ``n01`` only B, the per-example differences
``D_i in {-1, 0, 1}`` have mean and standard error

    d   = (n10 - n01) / n                                  (accuracy of A minus that of B)
    se  = sqrt( (n10 + n01) / n - d^2 ) / sqrt(n) = sqrt( n10 + n01 - (n10 - n01)^2 / n ) / n,

the test-set sampling error of ``d`` alone: much smaller than that of two independent
accuracies when the models agree on most examples. Pairs from several seeds are pooled as one
set of ``sum n`` examples.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np

FIELDS = ("accuracy", "error", "keras_accuracy", "coded_kb", "bits_per_weight", "bits_per_activation")
_SHARED = ("method", "point", "weight_bits", "activation_bits", "lambda_w", "lambda_a", "first_layer_bits",
           "last_layer_bits", "activation_bits_kind")


def group_of(row: Dict[str, Any]) -> str:
    """The group of a results row: its ``group`` field, else its run directory."""
    return row.get("group") or row["workdir"]


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """``{"mean", "std", "sem"}`` of ``values`` as defined in the module docstring."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "sem": std / math.sqrt(n)}


def summarize(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One entry per group of ``rows``, in the order groups first appear.

    An entry holds the group's shared fields (method, bits, lambdas, ...), ``n``, ``seeds``,
    ``workdirs``, each of `FIELDS` as its mean, and ``<field>_std`` / ``<field>_sem``. A field
    some member lacks (``None``) is ``None`` in the entry.
    """
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_of(r), []).append(r)
    out = []
    for key, members in groups.items():
        entry: Dict[str, Any] = {k: members[0].get(k) for k in _SHARED}
        entry.update(group=key, n=len(members), seeds=[m.get("seed") for m in members],
                     workdirs=[m["workdir"] for m in members])
        for field in FIELDS:
            values = [m.get(field) for m in members]
            stats = mean_std(values) if None not in values else {"mean": None, "std": None, "sem": None}
            entry.update({field: stats["mean"], f"{field}_std": stats["std"], f"{field}_sem": stats["sem"]})
        out.append(entry)
    return out


def paired_difference(a_correct: Sequence[np.ndarray], b_correct: Sequence[np.ndarray]) -> Dict[str, float]:
    """``d`` and its paired standard error (module docstring) for models A and B, given per pair of
    runs the boolean arrays "A right" and "B right" on the same examples; several pairs are pooled."""
    if len(a_correct) != len(b_correct) or not a_correct:
        raise ValueError(f"need as many arrays for A as for B, at least one; got {len(a_correct)} and {len(b_correct)}")
    pairs = [(np.asarray(x, bool).reshape(-1), np.asarray(y, bool).reshape(-1)) for x, y in zip(a_correct, b_correct)]
    if any(x.size != y.size or x.size == 0 for x, y in pairs):
        raise ValueError("A and B must be scored on the same, non-empty examples in every pair; got sizes "
                         f"{[(x.size, y.size) for x, y in pairs]}")
    a, b = np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])
    n, n10, n01 = a.size, int(np.sum(a & ~b)), int(np.sum(~a & b))
    return {"n": n, "accuracy_a": float(a.mean()), "accuracy_b": float(b.mean()), "only_a": n10, "only_b": n01,
            "difference": (n10 - n01) / n, "se": math.sqrt(n10 + n01 - (n10 - n01) ** 2 / n) / n}
