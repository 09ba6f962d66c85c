"""Inference straight from a ``.cdlz`` file, one layer at a time (``cdl-decode --layerwise``).

`LayerwiseModel` runs a batch through a model's layers in graph order (`Architecture`, which
holds the layers' configurations and no weights). Just before a layer runs, its tensors are
decoded from the file, read with ``lazy=True``; right after, they are released, and so is
every activation no later layer reads. The decoded weights held at any time are one layer's,
where the full decoder (`tflite_export.decode.decode_model`) holds every decoded tensor and
the whole Keras model's variables.

Each layer computes what it computes in the decoded Keras model with ``training=False``:

- Conv2D, DepthwiseConv2D, Dense: ``y = act(x * W + b)`` with ``W = I q`` from the stored
  indices ``I`` and step ``q`` (a quantized bias alike);
- BatchNormalization: ``y = x scale + shift``, its stored affine form (``gamma``, ``beta``,
  mean and variance as stored where it has no affine form);
- every other layer: the Keras layer itself, which has no weights;

then, where the layer has an output quantizer with alphabet ``[lo, hi]`` and stored
``log q_a``, ``Q_u(y) = q_a clip(round(y / q_a), lo, hi)``, ``q_a = exp(log q_a)``. The
outputs are the Keras model's up to float32 rounding: Keras' quantizers compute their
steps through LSQ's gradient scale (`CDLQuantizer.step_and_softness`), which can move
``exp(log q)`` by an ulp, as the BatchNorm formula can move ``x scale + shift``; a value
that lands on a rounding boundary then takes the neighbouring grid point.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Set, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from cdl_tf import ops
from cdl_tf.coded_model import check_names, checked_value, coded_tensors
from cdl_tf.coding import QuantizedTensor
from cdl_tf.layer_registry import inner_layer, layer_edges, output_quantizers

_layers = keras.layers


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """What the file must hold under a name: its shape and, for quantized indices, their alphabet."""

    shape: Tuple[int, ...]
    alphabet: Optional[Tuple[int, int]]  # (lo, hi); None for a float tensor


@dataclasses.dataclass(frozen=True)
class LayerStep:
    """One layer: an unbuilt copy of it (its configuration, no weights), what it reads, what it stores.

    ``tensors`` maps the layer's variable names (``kernel``, ``bias``, ``scale``, ...) to the
    stored tensor ``f"{name}/{variable}"``; ``output_step`` names the variable holding the
    output quantizer's ``log q_a`` (alphabet ``output_alphabet``); ``releases`` the
    activations no later step reads.
    """

    name: str
    layer: keras.layers.Layer
    inbound: Tuple[str, ...]
    tensors: Dict[str, StoredTensor]
    output_step: Optional[str]
    output_alphabet: Optional[Tuple[int, int]]
    releases: Tuple[str, ...]


def _dense(layer: _layers.Dense, x: tf.Tensor, w: Mapping[str, np.ndarray]) -> tf.Tensor:
    rank = x.shape.rank
    return tf.matmul(x, w["kernel"]) if rank == 2 else tf.tensordot(x, w["kernel"], [[rank - 1], [0]])


def _conv2d(layer: _layers.Conv2D, x: tf.Tensor, w: Mapping[str, np.ndarray]) -> tf.Tensor:
    return tf.nn.convolution(x, w["kernel"], strides=list(layer.strides), padding=layer.padding.upper(),
                             dilations=list(layer.dilation_rate))


def _depthwise(layer: _layers.DepthwiseConv2D, x: tf.Tensor, w: Mapping[str, np.ndarray]) -> tf.Tensor:
    return tf.nn.depthwise_conv2d(x, w["depthwise_kernel"], (1, *layer.strides, 1), layer.padding.upper(),
                                  dilations=layer.dilation_rate)


_WEIGHTED: Dict[type, Callable] = {_layers.Dense: _dense, _layers.Conv2D: _conv2d, _layers.DepthwiseConv2D: _depthwise}


def _batchnorm(layer: _layers.BatchNormalization, x: tf.Tensor, w: Mapping[str, np.ndarray]) -> tf.Tensor:
    if "scale" in w:
        return x * w["scale"] + w["shift"]
    return tf.nn.batch_normalization(x, w["moving_mean"], w["moving_variance"], w.get("beta"), w.get("gamma"),
                                     layer.epsilon)


def _run_layer(layer: keras.layers.Layer, ins: list, w: Mapping[str, np.ndarray]) -> tf.Tensor:
    """The layer's output before its output quantizer (``w``: its decoded variables)."""
    compute = _WEIGHTED.get(type(layer))
    if compute is not None:
        out = compute(layer, ins[0], w)
        if layer.use_bias:
            out = tf.nn.bias_add(out, w["bias"])
        return layer.activation(out)
    if isinstance(layer, _layers.BatchNormalization):
        return _batchnorm(layer, ins[0], w)
    return layer(ins if len(ins) > 1 else ins[0], training=False)


def _check_layer(name: str, layer: keras.layers.Layer) -> None:
    """Refuse a layer whose weights, or layout, the steps above do not compute as Keras does."""
    if not layer.weights:
        return
    channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
    if isinstance(layer, _layers.BatchNormalization):
        channels_last = list(layer.axis) in ([-1], [len(layer.input_shape) - 1])
    elif type(layer) not in _WEIGHTED:
        raise ValueError(f"layer {name!r} of type {type(layer).__name__} has weights the layer-wise decoder "
                         "does not compute (it computes Conv2D, DepthwiseConv2D, Dense and BatchNormalization)")
    if not channels_last:
        raise ValueError(f"layer {name!r}: the layer-wise decoder computes channels-last layers only")


def _short(variable: tf.Variable) -> str:
    """A variable's name inside its layer (``conv1/kernel:0`` -> ``kernel``), as the coded tensors name it."""
    return variable.name.split("/")[-1].split(":")[0]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A model's layers as `LayerStep`s in graph order, with one input and one output; no weights."""

    steps: Tuple[LayerStep, ...]
    input: str
    output: str

    @classmethod
    def from_model(cls, model: keras.Model) -> "Architecture":
        """The architecture of a (CDL) Functional model; the stored tensors are those `coded_tensors`
        gives for it. The model itself may be discarded afterwards."""
        if isinstance(model, keras.Sequential) or len(model.input_names) != 1 or len(model.output_names) != 1:
            raise ValueError("the layer-wise decoder needs a Functional model with one input and one output")
        order, inbound, _ = layer_edges(model)
        stored: Dict[str, Dict[str, StoredTensor]] = {name: {} for name in order}
        for full, t in coded_tensors(model).items():
            layer, variable = full.rsplit("/", 1)
            alphabet = (t.lo, t.hi) if isinstance(t, QuantizedTensor) else None
            stored[layer][variable] = StoredTensor(tuple(t.shape), alphabet)
        input_name, output_name = model.input_names[0], model.output_names[0]
        last_reader = {source: i for i, name in enumerate(order) for source in inbound[name]}
        steps = []
        for i, name in enumerate(order):
            if name == input_name:
                continue
            wrapper = model.get_layer(name)
            inner = inner_layer(wrapper)
            _check_layer(name, inner)
            found = output_quantizers(wrapper)
            quantizer, variables = found[0] if found else (None, None)
            releases = tuple(s for s in dict.fromkeys(inbound[name]) if last_reader[s] == i and s != output_name)
            steps.append(LayerStep(
                name=name, layer=type(inner).from_config(inner.get_config()), inbound=tuple(inbound[name]),
                tensors=stored[name], output_step=None if quantizer is None else _short(variables["log_q"]),
                output_alphabet=None if quantizer is None else (quantizer.lo, quantizer.hi), releases=releases))
        return cls(tuple(steps), input_name, output_name)

    def stored_names(self) -> Set[str]:
        """Every name the coded file must hold."""
        return {f"{step.name}/{variable}" for step in self.steps for variable in step.tensors}


class LayerwiseModel:
    """Runs `Architecture` on batches, each layer's weights decoded from ``coded`` only while it runs.

    ``coded`` is a `cdl_tf.coding.CodedFile`, best read with ``lazy=True`` (then nothing but
    the file's bytes stays between layers); its names must be exactly the architecture's.
    """

    def __init__(self, architecture: Architecture, coded: Mapping[str, object]):
        check_names(architecture.stored_names(), coded)
        self.architecture = architecture
        self._coded = coded

    def _weights(self, step: LayerStep) -> Dict[str, np.ndarray]:
        """The step's variables, decoded now."""
        names = {variable: f"{step.name}/{variable}" for variable in step.tensors}
        return {v: checked_value(n, self._coded[n], step.tensors[v].shape, step.tensors[v].alphabet)
                for v, n in names.items()}

    def __call__(self, x) -> tf.Tensor:
        """The model's output on the batch ``x`` (its Keras ``Q_u`` inference)."""
        values: Dict[str, tf.Tensor] = {self.architecture.input: tf.convert_to_tensor(x, tf.float32)}
        for step in self.architecture.steps:
            weights = self._weights(step)
            out = _run_layer(step.layer, [values[s] for s in step.inbound], weights)
            if step.output_step is not None:
                lo, hi = step.output_alphabet
                out = ops.q_u(out, tf.exp(tf.constant(weights[step.output_step])), lo, hi)
            del weights
            for source in step.releases:
                del values[source]
            values[step.name] = out
        return values[self.architecture.output]
