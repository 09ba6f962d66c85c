"""Output channels in a canonical order: the same function, and an order the file need not store.

Take a Conv2D or Dense layer ``L`` whose output channels have per-channel readers
(`cdl_tf.coded_model.channels`) and a permutation ``P`` of its ``C`` channels. Applied at once to

- ``L``'s kernel columns and every per-channel tensor of ``L`` (its bias) and of the layers
  passed on the way to the readers (a BatchNormalization's scale and shift),
- the input features of every reader ``M`` that read those channels: ``W_M[..., P(c), :]``
  for feature ``c``, and after a Flatten ``W_M[..., p C + P(c), :]`` at every position ``p``,

it leaves every reader's output unchanged, ``sum_c W_M[c] x_c = sum_c W_M[P(c)] x_P(c)``:
exactly in the int8 model's integer accumulators, up to float rounding in float. The ``C``
channels (*units*) can so be stored in any order; ``order_units`` chooses the *canonical* one,
which sorts them by their coded content:

1. the kernel column, in the column order of `cdl_tf.coding.multiset.column_order`: the live
   units (a column with a non-zero index) first, lexicographically by their indices, the dead
   ones (all-zero columns) last;
2. then the per-channel tensors moved with them, in the order of the tensors (``L``'s bias,
   then the scale and shift of each layer passed); units equal in all of these keep their order
   (they differ at most in their readers' rows).

Layers are sorted in the model's order, so that a layer's kernel rows have already taken
the order of the layer before when its columns are sorted, and sorting twice changes nothing.
In a sparse layer the `.cdlz` live masks then become runs (``L``'s column mask is ones then
zeros, a reader's row mask one such prefix per position), and since the decoder restores the
canonical order of a kernel's columns by itself, the ``.cdlz`` writer codes them as a multiset
and saves the bits of their order, up to ``log2(n! / prod_k m_k!)`` for ``n`` live columns with
multiplicities ``m_k`` (kinds 4 and 5; `unit_order_bits` gives that bound per layer).

A layer keeps its order when a reader is not a plain Conv2D or Dense (grouped or depthwise),
a reader's kernel is not among the tensors, or a tensor of ``L`` or of a passed layer is
neither a scalar nor one value per channel.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Dict, Iterator, Mapping, Optional, Tuple

import numpy as np
import tf_keras as keras

from cdl_tf.coded_model.channels import channel_readers
from cdl_tf.coding import QuantizedTensor
from cdl_tf.coding.multiset import column_order
from cdl_tf.layer_registry import layer_edges, plain_units


@dataclasses.dataclass(frozen=True)
class _Units:
    """The tensors that move with the output channels of one layer.

    ``kernel``: the layer's kernel (its last axis the channels); ``readers``: per reader kernel,
    the rows (input features) of each channel, ``(C, k)``; ``per_channel``: the tensors of one
    value per channel (of the layer and of the layers passed).
    """

    kernel: str
    readers: Tuple[Tuple[str, np.ndarray], ...]
    per_channel: Tuple[str, ...]


def _values(tensor) -> np.ndarray:
    return tensor.indices if isinstance(tensor, QuantizedTensor) else np.asarray(tensor)


def _take(tensor, order: np.ndarray, axis: int):
    """``tensor`` with ``order`` taken along ``axis`` (per-channel scales follow the last axis)."""
    if not isinstance(tensor, QuantizedTensor):
        return np.take(np.asarray(tensor), order, axis=axis)
    scales = tensor.scales
    if scales is not None and axis in (-1, tensor.indices.ndim - 1):
        scales = scales[order]
    return dataclasses.replace(tensor, indices=np.take(tensor.indices, order, axis=axis), scales=scales)


def _units(model: keras.Model, tensors: Mapping[str, object], name: str, outbound) -> Optional[_Units]:
    """The tensors that move with layer ``name``'s output channels; ``None`` if they cannot move."""
    kernel_key = f"{name}/kernel"
    if not plain_units(model.get_layer(name)) or kernel_key not in tensors:
        return None
    found = channel_readers(model, outbound, name)
    if found is None:
        return None
    channels = tensors[kernel_key].shape[-1]
    readers = []
    for reader, period in found.readers:
        key = f"{reader}/kernel"
        if not plain_units(model.get_layer(reader)) or key not in tensors:
            return None
        features = tensors[key].shape[-2]
        if features % channels or (period is None and features != channels):
            return None
        readers.append((key, np.arange(features).reshape(-1, channels).T))
    per_channel = []
    for layer in (name, *found.passed):
        for key, tensor in tensors.items():
            if key.split("/")[0] != layer or key == kernel_key:
                continue
            shape = tuple(tensor.shape)
            if shape == (channels,):
                per_channel.append(key)
            elif int(np.prod(shape)) != 1:
                return None
    return _Units(kernel_key, tuple(readers), tuple(per_channel))


def _permuted(tensors: Mapping[str, object], units: _Units, order: np.ndarray) -> Dict[str, object]:
    """The tensors of ``units`` with the channels in ``order``."""
    updated = {units.kernel: _take(tensors[units.kernel], order, axis=-1)}
    for key, rows in units.readers:
        updated[key] = _take(tensors[key], rows[order].T.reshape(-1), axis=-2)
    for key in units.per_channel:
        updated[key] = _take(tensors[key], order, axis=0)
    return updated


def _canonical_order(tensors: Mapping[str, object], units: _Units) -> np.ndarray:
    """The stable permutation that sorts the channels by kernel column, then by per-channel tensors."""
    kernel = _values(tensors[units.kernel])
    columns = kernel.reshape(-1, kernel.shape[-1])
    by_column = column_order(columns)
    ordered = columns[:, by_column]
    new = np.concatenate([[True], (ordered[:, 1:] != ordered[:, :-1]).any(axis=0)])
    rank = np.empty(by_column.size, dtype=np.int64)
    rank[by_column] = np.cumsum(new) - 1  # equal columns share a rank
    keys = [_values(tensors[key]) for key in reversed(units.per_channel)]
    return np.lexsort((*keys, rank))


def _permutable(model: keras.Model, tensors: Mapping[str, object]) -> Iterator[Tuple[str, _Units]]:
    """``(layer, units)`` for the layers whose output channels can be reordered, in model order;
    ``tensors`` are read as they are when each layer's turn comes."""
    order, _, outbound = layer_edges(model)
    for name in order:
        units = _units(model, tensors, name, outbound)
        if units is not None:
            yield name, units


def order_units(model: keras.Model, tensors: Mapping[str, object]) -> Dict[str, object]:
    """``tensors`` (named as `cdl_tf.coded_model.coded_tensors` names them) with the output
    channels of every Conv2D and Dense layer that allows it in canonical order."""
    out = dict(tensors)
    for _, units in _permutable(model, out):
        permutation = _canonical_order(out, units)
        if not np.array_equal(permutation, np.arange(permutation.size)):
            out.update(_permuted(out, units, permutation))
    return out


def unit_order_bits(model: keras.Model, tensors: Mapping[str, object]) -> Dict[str, float]:
    """Per layer whose output channels can be reordered, ``log2(n! / prod_k m_k!)``: the bits in
    the order of its ``n`` units, ``m_k`` the multiplicities of identical units (equal kernel
    column, per-channel values and readers' rows)."""
    bits = {}
    for name, units in _permutable(model, tensors):
        kernel = _values(tensors[units.kernel])
        parts = [kernel.reshape(-1, kernel.shape[-1]).T]
        parts += [_values(tensors[key]).reshape(-1, 1) for key in units.per_channel]
        for key, rows in units.readers:
            reader = _values(tensors[key])
            parts.append(reader.reshape(-1, *reader.shape[-2:])[:, rows].transpose(1, 0, 2, 3).reshape(rows.shape[0], -1))
        content = [b"".join(np.ascontiguousarray(p[c]).tobytes() for p in parts) for c in range(kernel.shape[-1])]
        multiplicities = collections.Counter(content).values()
        log_ways = math.lgamma(len(content) + 1) - sum(math.lgamma(m + 1) for m in multiplicities)
        bits[name] = max(log_ways, 0.0) / math.log(2)
    return bits
