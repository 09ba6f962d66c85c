"""Output channels reordered so that the live ones come first: the same function, cheaper masks.

Take a Conv2D or Dense layer ``L`` whose output channels have per-channel readers
(`cdl_tf.coded_model.channels`) and a permutation ``P`` of its ``C`` channels. Applied at once to

- ``L``'s kernel columns and every per-channel tensor of ``L`` (its bias) and of the layers
  passed on the way to the readers (a BatchNormalization's scale and shift),
- the input features of every reader ``M`` that read those channels: ``W_M[..., P(c), :]``
  for feature ``c``, and after a Flatten ``W_M[..., p C + P(c), :]`` at every position ``p``,

it leaves every reader's output unchanged, ``sum_c W_M[c] x_c = sum_c W_M[P(c)] x_P(c)``:
exactly in the int8 model's integer accumulators, up to float rounding in float. The
permutation chosen is the stable one that puts the *live* channels (a kernel column with a
non-zero index) first. In a sparse layer the `.cdlz` live masks (kind 3) then become runs:
``L``'s column mask is ones then zeros, and a reader's row mask repeats one such prefix per
position, which the header's deflate stores in a few bytes instead of most of a bit per unit.

A layer keeps its order when a reader is not a plain Conv2D or Dense (grouped or depthwise),
a reader's kernel is not among the tensors, or a tensor of ``L`` or of a passed layer is
neither a scalar nor one value per channel.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional

import numpy as np
import tf_keras as keras

from cdl_tf.coded_model.channels import ChannelReaders, channel_readers
from cdl_tf.coded_model.unread import nonzero
from cdl_tf.coding import QuantizedTensor
from cdl_tf.layer_registry import layer_edges, plain_units


def _take(tensor, order: np.ndarray, axis: int):
    """``tensor`` with ``order`` taken along ``axis`` (per-channel scales follow the last axis)."""
    if not isinstance(tensor, QuantizedTensor):
        return np.take(np.asarray(tensor), order, axis=axis)
    scales = tensor.scales
    if scales is not None and axis in (-1, tensor.indices.ndim - 1):
        scales = scales[order]
    return dataclasses.replace(tensor, indices=np.take(tensor.indices, order, axis=axis), scales=scales)


def _permuted(model: keras.Model, tensors: Mapping[str, object], name: str, found: ChannelReaders,
              order: np.ndarray) -> Optional[Dict[str, object]]:
    """The tensors that change when layer ``name``'s channels take ``order``; ``None`` if they can't."""
    channels = order.size
    kernel_key = f"{name}/kernel"
    updated = {kernel_key: _take(tensors[kernel_key], order, axis=-1)}
    for reader, period in found.readers:
        key = f"{reader}/kernel"
        if not plain_units(model.get_layer(reader)) or key not in tensors:
            return None
        features = tensors[key].shape[-2]
        if features % channels or (period is None and features != channels):
            return None
        updated[key] = _take(tensors[key], np.arange(features).reshape(-1, channels)[:, order].reshape(-1), axis=-2)
    for layer in (name, *found.passed):
        for key, tensor in tensors.items():
            if key.split("/")[0] != layer or key == kernel_key:
                continue
            shape = tuple(tensor.shape)
            if shape == (channels,):
                updated[key] = _take(tensor, order, axis=0)
            elif int(np.prod(shape)) != 1:
                return None
    return updated


def order_units(model: keras.Model, tensors: Mapping[str, object]) -> Dict[str, object]:
    """``tensors`` (named as `cdl_tf.coded_model.coded_tensors` names them) with the output
    channels of every Conv2D and Dense layer that allows it in live-first order."""
    out = dict(tensors)
    order, _, outbound = layer_edges(model)
    for name in order:
        if not plain_units(model.get_layer(name)) or f"{name}/kernel" not in out:
            continue
        found = channel_readers(model, outbound, name)
        if found is None:
            continue
        kernel = nonzero(out[f"{name}/kernel"])
        live = kernel.reshape(-1, kernel.shape[-1]).any(axis=0)
        permutation = np.argsort(~live, kind="stable")
        if np.array_equal(permutation, np.arange(live.size)):
            continue
        updated = _permuted(model, out, name, found, permutation)
        if updated is not None:
            out.update(updated)
    return out
