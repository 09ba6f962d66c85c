"""Benchmark rows of repeated runs (the same point under other seeds) reduced to mean and spread.

Rows with the same ``group`` are runs of one point that differ only in their seed. For the
``n`` values ``x_i`` of a field over a group:

    mean  m  = (1/n) sum_i x_i
    std   s  = sqrt( sum_i (x_i - m)^2 / (n - 1) )     (sample standard deviation; 0 if n = 1)
    sem      = s / sqrt(n)                              (standard error of the mean)

A row without ``group`` (results written before seeds were grouped) is a group of its own.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

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
