"""Units nothing reads, given the cheapest values before coding.

Output channel ``c`` of a Conv2D or Dense layer ``L`` is *unread* when every path from
``L``'s output ends in a Conv2D, DepthwiseConv2D or Dense layer whose kernel is zero at
every weight that reads ``c``:

    unread(c)  <=>  for every reader M:  W_M[..., i, :] = 0  for every input feature i of c,

passing on the way only through layers that keep channels apart (activations, pooling,
Dropout, BatchNormalization, ZeroPadding2D) and Flatten, after which channel ``c`` of an
``(H, W, C)`` map is every feature ``i`` with ``i mod C = c``. A path into anything else
(Add, Concatenate, Reshape, grouped convolutions, the model output) reads every channel.

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

from cdl_tf.coding import QuantizedTensor
from tflite_export.graph import KERNEL_ATTRIBUTE, activation_name, inner_layer, layer_edges

_CHANNELWISE = (keras.layers.ReLU, keras.layers.Activation, keras.layers.MaxPooling2D,
                keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D, keras.layers.Dropout,
                keras.layers.BatchNormalization, keras.layers.ZeroPadding2D)
_ELEMENTWISE_ACTIVATIONS = (None, "linear", "relu", "relu6")


def _nonzero(tensor) -> np.ndarray:
    return (tensor.indices if isinstance(tensor, QuantizedTensor) else np.asarray(tensor)) != 0


def _keeps_channels_apart(inner) -> bool:
    """Whether channel ``c`` of the layer's output depends on channel ``c`` of its input alone."""
    if not isinstance(inner, _CHANNELWISE) or getattr(inner, "data_format", "channels_last") != "channels_last":
        return False
    if isinstance(inner, keras.layers.BatchNormalization):
        return list(inner.axis) in ([-1], [len(inner.input_shape) - 1])
    return activation_name(inner) in _ELEMENTWISE_ACTIVATIONS


def _features_read(inner, tensor) -> Optional[np.ndarray]:
    """Per input feature of a reader layer, whether some weight reads it; ``None``: all are read."""
    if tensor is None or (isinstance(inner, keras.layers.Conv2D) and getattr(inner, "groups", 1) != 1):
        return None
    nonzero = _nonzero(tensor)
    return nonzero.reshape(-1, nonzero.shape[-2], nonzero.shape[-1]).any(axis=(0, 2))


def _unread(model: keras.Model, outbound: Mapping[str, list], tensors: Mapping[str, object], name: str) -> np.ndarray:
    """Per output channel of layer ``name``, whether nothing reads it (see the module docstring)."""
    channels = model.get_layer(name).output_shape[-1]
    everything_read = np.zeros(channels, dtype=bool)
    if name in model.output_names or activation_name(inner_layer(model.get_layer(name))) not in _ELEMENTWISE_ACTIVATIONS:
        return everything_read
    read = np.zeros(channels, dtype=bool)
    pending = [(c, None) for c in outbound[name]]  # (layer, period): after Flatten, feature i is channel i mod period
    while pending:
        layer_name, period = pending.pop()
        inner = inner_layer(model.get_layer(layer_name))
        if type(inner) in KERNEL_ATTRIBUTE:
            features = _features_read(inner, tensors.get(f"{layer_name}/{KERNEL_ATTRIBUTE[type(inner)]}"))
            if features is None or (period is None and features.size != channels):
                return everything_read
            read |= features if period is None else features.reshape(-1, period).any(axis=0)
            continue
        if isinstance(inner, keras.layers.Flatten) and period is None and inner.data_format == "channels_last":
            period = channels
        elif not _keeps_channels_apart(inner):
            return everything_read
        if layer_name in model.output_names:
            return everything_read
        pending.extend((c, period) for c in outbound[layer_name])
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
    """``tensors`` (named as `tflite_export.coded.coded_tensors` names them) with the kernel column
    and bias of every unread output channel of a Conv2D or Dense layer set to their cheapest values."""
    out = dict(tensors)
    _, _, outbound = layer_edges(model)
    writers = [l.name for l in model.layers
               if type(inner_layer(l)) in (keras.layers.Conv2D, keras.layers.Dense) and f"{l.name}/kernel" in out]
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
