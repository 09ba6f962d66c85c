"""A CDL model's inference weights as ``.cdlz`` tensors, and back.

Quantized kernels are stored as their integer indices with step ``q``
(`QuantizedTensor`); every other variable inference reads (biases, activation steps
``log q``, weights of float layers) is stored as float. A BatchNormalization layer
with ``gamma`` and ``beta`` is stored as its inference affine map, two floats per
channel instead of four:

    scale = gamma / sqrt(var + eps),    shift = beta - mean * scale,

and decoded as ``gamma = scale``, ``beta = shift``, ``mean = 0`` and a variance
with ``var + eps == 1`` in float32. Training-only state (softness, draw counters,
rate weights) is not stored; a decoded model has its quantizers marked initialised.
Units whose outputs nothing reads are stored with zero weights and the most common
bias (`cdl_tf.coded_model.unread`), and the output channels of a layer are stored in canonical
order, live ones first, where its readers allow (`cdl_tf.coded_model.unit_order`), which lets the
``.cdlz`` writer code its kernel's columns as a multiset. `apply_coded(model, coded_tensors(model))`
puts a model in that decoded form, which infers as before up to float32 rounding.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from cdl_tf.batchnorm import batchnorm_affine
from cdl_tf.coded_model.unit_order import order_units
from cdl_tf.coded_model.unread import fill_unread
from cdl_tf.coding import QuantizedTensor, index_entropy_bits
from cdl_tf.layer_registry import quantized_weight, weight_quantizers
from cdl_tf.quantize import model_quantizers

_TRAINING_ONLY = ("_log_kappa", "_log_alpha", "_step", "_rate_weight", "_initialized", "optimizer_step",
                  "_density")  # _density: the probability model of an EPR run (`cdl_tf.epr`)


def _named_variables(model):
    """``(layer/variable, variable)`` for every variable, named by the layer that owns it.

    Variable names alone are not unique (a model loaded from ``.keras`` has no scopes).
    """
    seen = set()
    for layer in model.layers:
        for v in layer.weights:
            if id(v) not in seen:
                seen.add(id(v))
                yield f"{layer.name}/{v.name.split('/')[-1].split(':')[0]}", v


def _classify(model) -> Tuple[Dict[int, tuple], Dict[int, object], list]:
    """``(kernels by id -> (quantizer, vars), weight log_q by id -> kernel, initialised flags)``."""
    kernels, log_qs, flags = {}, {}, []
    for _, quantizer, variables in model_quantizers(model):
        flags.append(variables["initialized"])
        if quantizer.kind != "weight":
            continue
        wrapper = next(l for l in model.layers if any(qz is quantizer for _, qz, _ in weight_quantizers(l)))
        kernel = quantized_weight(wrapper, quantizer)
        kernels[id(kernel)] = (quantizer, variables)
        log_qs[id(variables["log_q"])] = kernel
    return kernels, log_qs, flags


def _stored(name: str, v, log_qs) -> bool:
    return id(v) not in log_qs and not name.endswith(_TRAINING_ONLY)


def _affine_batchnorms(model) -> list:
    """The BatchNormalization layers stored as ``scale``/``shift`` (those with gamma and beta)."""
    return [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization) and l.scale and l.center]


def _unit_variance(epsilon: float) -> np.float32:
    """A float32 ``v`` with ``v + epsilon == 1`` in float32 (so ``1/sqrt(v + eps)`` is exactly 1)."""
    v, eps = np.float32(1.0 - epsilon), np.float32(epsilon)
    while np.float32(v + eps) > 1:
        v = np.nextafter(v, np.float32(0))
    while np.float32(v + eps) < 1:
        v = np.nextafter(v, np.float32(2))
    return v


def _stored_variables(model, log_qs) -> Dict[str, object]:
    """Name -> variable stored as is (BatchNorm layers in affine form are left out)."""
    affine = {id(v) for l in _affine_batchnorms(model) for v in l.weights}
    return {name: v for name, v in _named_variables(model) if _stored(name, v, log_qs) and id(v) not in affine}


def coded_tensors(model) -> Dict[str, object]:
    """Name -> `QuantizedTensor` (kernels) or float32 array (everything else inference needs),
    with the kernel columns and biases of units nothing reads set to their cheapest values
    (`cdl_tf.coded_model.unread`) and output channels in canonical order (`cdl_tf.coded_model.unit_order`)."""
    kernels, log_qs, _ = _classify(model)
    out: Dict[str, object] = {}
    for bn in _affine_batchnorms(model):
        scale, shift = batchnorm_affine(bn)
        out[f"{bn.name}/scale"], out[f"{bn.name}/shift"] = scale.astype(np.float32), shift.astype(np.float32)
    for name, v in _stored_variables(model, log_qs).items():
        if id(v) in kernels:
            quantizer, variables = kernels[id(v)]
            q = np.float32(quantizer.step_and_softness(variables)[0].numpy())
            idx = np.clip(np.round(v.numpy() / q), quantizer.lo, quantizer.hi).astype(np.int32)
            out[name] = QuantizedTensor(idx, quantizer.lo, quantizer.hi, float(q))
        else:
            out[name] = v.numpy().astype(np.float32)
    return order_units(model, fill_unread(model, out))


def _log_of(q: np.float32) -> np.float32:
    """A float32 ``l`` with ``exp(l) == q`` in float32 where one exists (else the nearest)."""
    base = np.float32(math.log(float(q)))
    candidates = [base]
    up = down = base
    for _ in range(4):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        candidates += [up, down]
    values = tf.exp(tf.constant(candidates, tf.float32)).numpy()
    return candidates[int(np.argmin(np.abs(values.astype(np.float64) - float(q))))]


def check_names(expected: Iterable[str], tensors: Mapping[str, object]) -> None:
    """Raise `ValueError` unless the decoded ``tensors`` are named exactly ``expected``."""
    expected = set(expected)
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise ValueError(f"coded weights do not fit this model: missing {missing[:5]}, unexpected {extra[:5]}")


def checked_value(name: str, tensor, shape: Tuple[int, ...], alphabet: Optional[Tuple[int, int]]) -> np.ndarray:
    """The float32 value of decoded tensor ``name`` (``I q`` for quantized indices), after checking that
    it has ``shape`` and is quantized on ``alphabet = (lo, hi)`` (``None``: a float tensor)."""
    shape = tuple(shape)
    if alphabet is None:
        if isinstance(tensor, QuantizedTensor):
            raise ValueError(f"{name}: expected a float tensor, got quantized indices")
        value = np.asarray(tensor, dtype=np.float32)
        if value.shape != shape:
            raise ValueError(f"{name}: shape {value.shape} does not fit {shape}")
        return value
    if not isinstance(tensor, QuantizedTensor):
        raise ValueError(f"{name}: expected quantized indices, got a float tensor")
    if (tensor.lo, tensor.hi) != tuple(alphabet) or tuple(tensor.shape) != shape:
        raise ValueError(f"{name}: alphabet [{tensor.lo}, {tensor.hi}] shape {tuple(tensor.shape)} does not fit "
                         f"[{alphabet[0]}, {alphabet[1]}] {shape}")
    return tensor.indices.astype(np.float32) * np.float32(tensor.q)


def apply_coded(model, tensors: Mapping[str, object]) -> None:
    """Set ``model``'s inference weights from decoded tensors (same architecture as at export)."""
    kernels, log_qs, flags = _classify(model)
    expected = _stored_variables(model, log_qs)
    for bn in _affine_batchnorms(model):
        expected[f"{bn.name}/scale"], expected[f"{bn.name}/shift"] = bn.gamma, bn.beta
    check_names(expected, tensors)
    for name, v in expected.items():
        quantizer, variables = kernels.get(id(v), (None, None))
        alphabet = None if quantizer is None else (quantizer.lo, quantizer.hi)
        v.assign(checked_value(name, tensors[name], v.shape, alphabet))
        if quantizer is not None:
            variables["log_q"].assign(_log_of(np.float32(tensors[name].q)))
    for bn in _affine_batchnorms(model):
        bn.moving_mean.assign(tf.zeros_like(bn.moving_mean))
        bn.moving_variance.assign(tf.fill(tf.shape(bn.moving_variance), _unit_variance(bn.epsilon)))
    for flag in flags:
        flag.assign(True)


def entropy_bound_bits(tensors: Mapping[str, object]) -> float:
    """``sum N H`` over the quantized tensors: what an ideal coder reaches that treats every index of
    a tensor alike (the rate CDL trains). Live masks (`.cdlz` kind 3) go below it on tensors whose
    non-zero indices sit in a few rows and columns, and coding a kernel's columns as a multiset
    (kinds 4 and 5) by the bits of their order."""
    return float(sum(t.indices.size * index_entropy_bits(t.indices)
                     for t in tensors.values() if isinstance(t, QuantizedTensor)))
