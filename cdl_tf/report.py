"""Rate report: bits per value of every quantized tensor of a CDL model.

For a tensor of ``N`` values the description length is ``N * H`` bits, where ``H``
is the entropy of its index PMF. Two entropies are reported:

- ``hard_bits``: empirical entropy of the nearest indices ``clip(round(theta / q))``,
  what an entropy coder of the exported model reaches (up to the header);
- ``soft_bits``: entropy of the marginal PMF ``P(i) = (1/N) sum_n P(i | theta_n)``,
  the quantity training minimises.

Activation entropies are measured on a given batch (marginal over all its values).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import tensorflow as tf

from cdl_tf import ops
from cdl_tf.layer_registry import quantized_weight
from cdl_tf.quantize import model_quantizers


@dataclasses.dataclass(frozen=True)
class TensorRate:
    """Rate of one quantized tensor (weights: whole tensor; activations: per example)."""

    name: str
    kind: str
    bits: int
    lo: int
    hi: int
    q: float
    alpha: float
    kappa: float
    count: int
    hard_bits: Optional[float]
    soft_bits: Optional[float]


@dataclasses.dataclass(frozen=True)
class RateReport:
    tensors: List[TensorRate]

    def _average(self, kind: str, field: str) -> Optional[float]:
        rows = [t for t in self.tensors if t.kind == kind and getattr(t, field) is not None]
        total = sum(t.count for t in rows)
        return sum(t.count * getattr(t, field) for t in rows) / total if total else None

    @property
    def totals(self) -> Dict[str, Optional[float]]:
        weights = [t for t in self.tensors if t.kind == "weight"]
        n_w = sum(t.count for t in weights)
        hard = self._average("weight", "hard_bits")
        return {
            "quantized_weights": n_w,
            "bits_per_weight": hard,
            "bits_per_weight_soft": self._average("weight", "soft_bits"),
            "weight_bits_total": None if hard is None else hard * n_w,
            "activation_values_per_example": sum(t.count for t in self.tensors if t.kind == "activation"),
            "bits_per_activation": self._average("activation", "hard_bits"),
            "bits_per_activation_soft": self._average("activation", "soft_bits"),
        }

    def to_dict(self) -> dict:
        return {"tensors": [dataclasses.asdict(t) for t in self.tensors], "totals": self.totals}

    def format_table(self) -> str:
        lines = [f"{'tensor':40s} {'kind':10s} {'b':>2s} {'count':>9s} {'hard':>6s} {'soft':>6s} {'q':>9s} {'kappa':>8s}"]
        fmt = lambda v: "   -  " if v is None else f"{v:6.3f}"
        for t in self.tensors:
            lines.append(
                f"{t.name:40s} {t.kind:10s} {t.bits:2d} {t.count:9d} {fmt(t.hard_bits)} {fmt(t.soft_bits)} "
                f"{t.q:9.3g} {t.kappa:8.3g}"
            )
        tot = self.totals
        lines.append(f"bits/weight {fmt(tot['bits_per_weight'])} (soft {fmt(tot['bits_per_weight_soft'])}), "
                     f"bits/activation {fmt(tot['bits_per_activation'])} (soft {fmt(tot['bits_per_activation_soft'])})")
        return "\n".join(lines)


@contextlib.contextmanager
def _recording(model) -> Iterator[dict]:
    found = {name: q for name, q, _ in model_quantizers(model) if q.kind == "activation"}
    for q in found.values():
        q.recorder = []
    try:
        yield found
    finally:
        for q in found.values():
            q.recorder = None


@functools.lru_cache(maxsize=None)
def _soft_counts(lo: int, hi: int, window: Optional[int]) -> Callable:
    """`ops.index_counts` of flat tensors of any length, traced once per alphabet and window.

    Called eagerly on each tensor, the XLA-compiled quantizer kernel would be traced again for
    every tensor shape (and warn of frequent retracing).
    """
    scalar = tf.TensorSpec([], tf.float32)
    return tf.function(lambda x, q, alpha: ops.index_counts(x, q, alpha, lo, hi, window),
                       input_signature=[tf.TensorSpec([None], tf.float32), scalar, scalar], autograph=False)


def _entropies(x: tf.Tensor, q, alpha, quantizer) -> tuple:
    x = tf.reshape(tf.cast(x, tf.float32), [-1])
    hard = ops.hard_index_counts(x, q, quantizer.lo, quantizer.hi)
    soft = _soft_counts(quantizer.lo, quantizer.hi, quantizer.window)(x, q, alpha)
    return tuple(float(ops.pmf_entropy_bits(c / tf.reduce_sum(c))) for c in (hard, soft))


def rate_report(model, x=None, batch_size: int = 256) -> RateReport:
    """Per-tensor and total rates of a CDL model; activations measured on ``x`` if given."""
    inputs: Dict[str, List[tf.Tensor]] = {}
    if x is not None:
        with _recording(model) as found:
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size], training=False)
            inputs = {name: q.recorder for name, q in found.items()}
    rows = []
    for name, quantizer, variables in model_quantizers(model):
        q, alpha = (float(v) for v in quantizer.step_and_softness(variables))
        if quantizer.kind == "weight":
            weight = quantized_weight(model.get_layer(name.split("/")[0]), quantizer)
            hard, soft = _entropies(weight, q, alpha, quantizer)
        elif name in inputs and inputs[name]:
            hard, soft = _entropies(tf.concat([tf.reshape(t, [-1]) for t in inputs[name]], 0), q, alpha, quantizer)
        else:
            hard = soft = None
        rows.append(TensorRate(
            name=name, kind=quantizer.kind, bits=quantizer.bits, lo=quantizer.lo, hi=quantizer.hi,
            q=q, alpha=alpha, kappa=alpha * q * q, count=quantizer.value_count,
            hard_bits=hard, soft_bits=soft,
        ))
    return RateReport(rows)


def hard_indices(model) -> Dict[str, np.ndarray]:
    """Integer indices ``clip(round(w / q))`` of every quantized weight tensor."""
    out = {}
    for name, quantizer, variables in model_quantizers(model):
        if quantizer.kind != "weight":
            continue
        q = float(quantizer.step_and_softness(variables)[0])
        weight = quantized_weight(model.get_layer(name.split("/")[0]), quantizer)
        out[name] = np.clip(np.round(weight.numpy() / q), quantizer.lo, quantizer.hi).astype(np.int32)
    return out
