"""Which layers read a layer's output channels, channel by channel.

From the output of a Conv2D or Dense layer ``L`` with ``C`` channels, every path is followed
through layers that keep channels apart (elementwise activations, pooling, Dropout,
channel-axis BatchNormalization, ZeroPadding2D) and Flatten, after which channel ``c`` of an
``(H, W, C)`` map is every feature ``i`` with ``i mod C = c``, up to the first layer with a
kernel (a *reader*). A path into anything else (Add, Concatenate, Reshape, the model output)
mixes or exposes channels; then the channels have no per-channel readers and
`channel_readers` returns ``None``.
"""
from __future__ import annotations

import dataclasses
from typing import List, Mapping, Optional, Tuple

import tf_keras as keras

from cdl_tf.layer_registry import (ELEMENTWISE_ACTIVATIONS, activation_name, inner_layer, keeps_channels_apart,
                                   weight_attribute)


@dataclasses.dataclass(frozen=True)
class ChannelReaders:
    """The readers of a layer's output channels and the layers passed on the way.

    ``readers``: ``(layer, period)`` per reader; ``period`` is ``None`` when the reader's input
    features are the channels themselves, else ``C`` (a Flatten came first: feature ``i`` is
    channel ``i mod C``). ``passed``: the channelwise layers between (Flatten excluded).
    """

    readers: Tuple[Tuple[str, Optional[int]], ...]
    passed: Tuple[str, ...]


def channel_readers(model: keras.Model, outbound: Mapping[str, List[str]], name: str) -> Optional[ChannelReaders]:
    """The readers of layer ``name``'s output channels, or ``None`` if some path mixes or exposes them."""
    if name in model.output_names or activation_name(model.get_layer(name)) not in ELEMENTWISE_ACTIVATIONS:
        return None
    channels = model.get_layer(name).output_shape[-1]
    readers, passed = [], []
    pending = [(c, None) for c in outbound[name]]
    while pending:
        layer_name, period = pending.pop()
        layer = inner_layer(model.get_layer(layer_name))
        if weight_attribute(layer):
            readers.append((layer_name, period))
            continue
        if isinstance(layer, keras.layers.Flatten) and period is None and layer.data_format == "channels_last":
            period = channels
        elif keeps_channels_apart(layer):
            passed.append(layer_name)
        else:
            return None
        if layer_name in model.output_names:
            return None
        pending.extend((c, period) for c in outbound[layer_name])
    return ChannelReaders(tuple(readers), tuple(passed))
