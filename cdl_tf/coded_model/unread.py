"""Units nothing reads, given the cheapest values before coding.

Output channel ``c`` of a Conv2D or Dense layer ``L`` is *unread* when every reader of ``L``'s
output channels (`cdl_tf.coded_model.channels`) has a zero kernel at every weight that reads ``c``:

    unread(c)  <=>  for every reader M:  W_M[..., i, :] = 0  for every input feature i of c.

A layer whose channels some path mixes or exposes (Add, Concatenate, the model output, ...)
has every channel read.

The readers multiply an unread channel by exact zeros, so for finite activations the
values of ``L``'s kernel column and bias at ``c`` change no output, and they are set to
what costs the fewest bits (sparse CDL layers keep biases and incoming weights of units
whose outgoing weights all went to zero): the kernel column to index 0, which is also what
lets live masks drop it, and a quantized bias to the index most frequent among the read
channels' biases, ``k* = argmax_k #{c' read : b_c' = k}``. Of all values the unread
entries could take, this gives the lowest empirical entropy of the bias tensor: its counts
(those of the read entries plus all unread ones at ``k*``) majorise every other choice's,
and entropy is Schur-concave; zeros can raise it. A cleared column may leave input
channels of ``L`` unread in turn, so the pass repeats until nothing changes.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional

import numpy as np
import tf_keras as keras

from cdl_tf.coded_model.channels import channel_readers
from cdl_tf.coding import QuantizedTensor
from cdl_tf.layer_registry import inner_layer, layer_edges, rule, weight_attribute


def nonzero(tensor) -> np.ndarray:
    """Where a coded tensor (quantized: its indices) is non-zero."""
    return (tensor.indices if isinstance(tensor, QuantizedTensor) else np.asarray(tensor)) != 0


def _features_read(inner, tensor) -> Optional[np.ndarray]:
    """Per input feature of a reader layer, whether some weight reads it; ``None``: all are read."""
    if tensor is None or (isinstance(inner, keras.layers.Conv2D) and getattr(inner, "groups", 1) != 1):
        return None
    mask = nonzero(tensor)
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1]).any(axis=(0, 2))


def _unread(model: keras.Model, outbound: Mapping[str, list], tensors: Mapping[str, object], name: str) -> np.ndarray:
    """Per output channel of layer ``name``, whether nothing reads it (see the module docstring)."""
    channels = model.get_layer(name).output_shape[-1]
    everything_read = np.zeros(channels, dtype=bool)
    found = channel_readers(model, outbound, name)
    if found is None:
        return everything_read
    read = np.zeros(channels, dtype=bool)
    for layer_name, period in found.readers:
        inner = inner_layer(model.get_layer(layer_name))
        features = _features_read(inner, tensors.get(f"{layer_name}/{weight_attribute(inner)}"))
        if features is None or (period is None and features.size != channels):
            return everything_read
        read |= features if period is None else features.reshape(-1, period).any(axis=0)
    return ~read


def _clear_columns(tensor, unread: np.ndarray):
    """``tensor`` with the output channels ``unread`` (last axis) set to 0 (quantized: if 0 is in
    its alphabet)."""
    if isinstance(tensor, QuantizedTensor):
        if not tensor.lo <= 0 <= tensor.hi:
            return tensor
        indices = tensor.indices.copy()
        indices[..., unread] = 0
        return dataclasses.replace(tensor, indices=indices)
    values = np.array(tensor, dtype=np.float32)
    values[..., unread] = 0
    return values


def _fill_bias(bias, unread: np.ndarray):
    """``bias`` with the entries ``unread`` set to the most frequent index of the others (float: 0)."""
    if not isinstance(bias, QuantizedTensor):
        return _clear_columns(bias, unread)
    indices = bias.indices.copy()
    read = indices[~unread]
    if read.size:
        symbols, counts = np.unique(read, return_counts=True)
        indices[unread] = symbols[np.argmax(counts)]
    elif bias.lo <= 0 <= bias.hi:
        indices[unread] = 0
    return dataclasses.replace(bias, indices=indices)


def _same(a, b) -> bool:
    return np.array_equal(a.indices, b.indices) if isinstance(a, QuantizedTensor) else np.array_equal(a, b)


def fill_unread(model: keras.Model, tensors: Mapping[str, object]) -> Dict[str, object]:
    """``tensors`` (named as `cdl_tf.coded_model.coded_tensors` names them) with the kernel column
    and bias of every unread output channel of a Conv2D or Dense layer set to their cheapest values."""
    out = dict(tensors)
    _, _, outbound = layer_edges(model)
    writers = [l.name for l in model.layers if rule(l).units and f"{l.name}/kernel" in out]
    changed = True
    while changed:
        changed = False
        for name in writers:
            unread = _unread(model, outbound, out, name)
            if not unread.any():
                continue
            for key, fill in ((f"{name}/kernel", _clear_columns), (f"{name}/bias", _fill_bias)):
                if key in out:
                    filled = fill(out[key], unread)
                    changed |= not _same(filled, out[key])
                    out[key] = filled
    return out
