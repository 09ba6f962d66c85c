"""What CDL does with each Keras layer type, and how to read a quantized model's graph.

One table, `LAYERS`, holds every rule that quantization (`cdl_tf.quantize`), the coded
tensors (`cdl_tf.coded_model`), communication accounting and the TFLite export read:

- ``weight``: the attribute CDL quantizes (``kernel``, ``depthwise_kernel``); matched on the
  exact type, so a subclass with other semantics (``Conv2DTranspose``) is not taken for its base;
- ``float_weights``: the layer trains with float weights of its own (BatchNormalization);
- ``units``: the kernel's last axis are output units that can be cleared or reordered
  together with the readers' input rows (Conv2D, Dense);
- ``folds_batchnorm``: a BatchNormalization that alone follows it folds into per-channel
  kernel scales at export;
- ``channelwise``: output channel ``c`` depends on input channel ``c`` alone (channels-last;
  for Activation and BatchNormalization see `keeps_channels_apart`);
- ``keeps_values``: every output value is an input value (or padding 0), so the int8 graph
  gives the output its input's range;
- ``quantizes_input``: a linear output that only feeds such layers is quantized there, not
  at its own output;
- ``fuses_relu``: TFLite fuses a following ReLU into the layer.

Other layer types follow the rule of their nearest base class in the table (``SpatialDropout2D``
that of ``Dropout``), or have none. The accessors at the end are the one place that reads the
internals of TF-MOT's wrappers.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate

_layers = keras.layers


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How CDL treats one layer type (fields: see the module docstring)."""

    weight: Optional[str] = None
    float_weights: bool = False
    units: bool = False
    folds_batchnorm: bool = False
    channelwise: bool = False
    keeps_values: bool = False
    quantizes_input: bool = False
    fuses_relu: bool = False


LAYERS: Dict[type, LayerRule] = {
    _layers.Conv2D: LayerRule(weight="kernel", units=True, folds_batchnorm=True, fuses_relu=True),
    _layers.DepthwiseConv2D: LayerRule(weight="depthwise_kernel", fuses_relu=True),
    _layers.Dense: LayerRule(weight="kernel", units=True, fuses_relu=True),
    _layers.BatchNormalization: LayerRule(float_weights=True, channelwise=True, quantizes_input=True, fuses_relu=True),
    _layers.ReLU: LayerRule(channelwise=True, quantizes_input=True),
    _layers.Activation: LayerRule(channelwise=True),
    _layers.Add: LayerRule(quantizes_input=True, fuses_relu=True),
    _layers.MaxPooling2D: LayerRule(channelwise=True, keeps_values=True),
    _layers.AveragePooling2D: LayerRule(channelwise=True),
    _layers.GlobalAveragePooling2D: LayerRule(channelwise=True),
    _layers.Dropout: LayerRule(channelwise=True, keeps_values=True),
    _layers.ZeroPadding2D: LayerRule(channelwise=True, keeps_values=True),
    _layers.Flatten: LayerRule(keeps_values=True),
    _layers.Reshape: LayerRule(keeps_values=True),
    _layers.InputLayer: LayerRule(),
}
RELU_ACTIVATIONS = ("relu", "relu6")
ELEMENTWISE_ACTIVATIONS = (None, "linear", "relu", "relu6")
_NO_RULE = LayerRule()


# -- rules -------------------------------------------------------------------------------
def inner_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The layer a TF-MOT wrapper or annotation wraps (the layer itself if unwrapped)."""
    while isinstance(layer, (tfmot.quantization.keras.QuantizeWrapper, QuantizeAnnotate)):
        layer = layer.layer
    return layer


def rule(layer: keras.layers.Layer) -> LayerRule:
    """The `LayerRule` of a layer (wrappers looked through); every field false if it has none."""
    cls = type(inner_layer(layer))
    for base in cls.__mro__:
        found = LAYERS.get(base)
        if found is not None:
            return found if base is cls or found.weight is None else _NO_RULE
    return _NO_RULE


def weight_attribute(layer: keras.layers.Layer) -> Optional[str]:
    """The attribute CDL quantizes in this layer (``None``: no quantized weight)."""
    return rule(layer).weight


def activation_name(layer: keras.layers.Layer) -> Optional[str]:
    """Name of the activation function a layer applies (``None`` if it has none)."""
    act = getattr(inner_layer(layer), "activation", None)
    return None if act is None else getattr(act, "__name__", str(act))


def relu_output(layer: keras.layers.Layer) -> Optional[bool]:
    """For a ReLU-type layer (ReLU, or Activation relu/relu6): whether its output is
    non-negative (``False`` for a leaky ReLU); ``None`` for any other layer."""
    inner = inner_layer(layer)
    if isinstance(inner, _layers.ReLU):
        return not inner.negative_slope
    if isinstance(inner, _layers.Activation) and activation_name(inner) in RELU_ACTIVATIONS:
        return True
    return None


def quantizes_input(layer: keras.layers.Layer) -> bool:
    """Whether the layer quantizes (or is followed by a quantization of) what it reads."""
    return rule(layer).quantizes_input or relu_output(layer) is not None


def keeps_channels_apart(layer: keras.layers.Layer) -> bool:
    """Whether channel ``c`` of the layer's output depends on channel ``c`` of its input alone."""
    inner = inner_layer(layer)
    if not rule(inner).channelwise or getattr(inner, "data_format", "channels_last") != "channels_last":
        return False
    if isinstance(inner, _layers.BatchNormalization):
        return list(inner.axis) in ([-1], [len(inner.input_shape) - 1])
    return activation_name(inner) in ELEMENTWISE_ACTIVATIONS


def plain_units(layer: keras.layers.Layer) -> bool:
    """A layer whose kernel columns are its output units, one input row per feature (ungrouped)."""
    return rule(layer).units and getattr(inner_layer(layer), "groups", 1) == 1


# -- graph -------------------------------------------------------------------------------
def layer_edges(model: keras.Model) -> Tuple[List[str], Dict[str, List[str]], Dict[str, List[str]]]:
    """``(layer names in order, inbound layers, outbound layers)`` of a Functional or Sequential model."""
    if isinstance(model, keras.Sequential):
        order = [layer.name for layer in model.layers]
        inbound = {name: order[i - 1:i] for i, name in enumerate(order)}
    else:
        entries = model.get_config()["layers"]
        order = [entry["name"] for entry in entries]
        inbound = {e["name"]: [ref[0] for node in e["inbound_nodes"] for ref in (node if isinstance(node, list) else [])]
                   for e in entries}
    outbound: Dict[str, List[str]] = {n: [] for n in order}
    for name, sources in inbound.items():
        for source in sources:
            outbound[source].append(name)
    return order, inbound, outbound


# -- TF-MOT wrapper internals ---------------------------------------------------------------
def weight_quantizers(layer: keras.layers.Layer) -> List[Tuple[tf.Variable, object, dict]]:
    """``(weight, quantizer, quantizer variables)`` of a `QuantizeWrapperV2` (``[]`` for other layers)."""
    return list(getattr(layer, "_weight_vars", []))


def output_quantizers(layer: keras.layers.Layer) -> List[Tuple[object, dict]]:
    """``(quantizer, quantizer variables)`` of a wrapper's output quantizers (``[]`` for other layers)."""
    return [(q, layer._output_quantizer_vars) for q in getattr(layer, "_output_quantizers", [])]


def quantized_weight(layer: keras.layers.Layer, quantizer) -> tf.Variable:
    """The weight variable of ``layer`` that ``quantizer`` quantizes."""
    for weight, found, _ in weight_quantizers(layer):
        if found is quantizer:
            return weight
    raise ValueError(f"layer {layer.name!r} has no weight quantized by {quantizer!r}")
