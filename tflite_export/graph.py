"""Integer-exact inference graph of a trained CDL model, for the TFLite converter.

The trained model is walked layer by layer and rebuilt as plain TF ops with:

- weights ``W = I q`` from the CDL indices ``I``; a BatchNormalization that alone
  follows a Conv2D is folded into it, ``W_c = I q g_c`` with
  ``g_c = gamma_c / sqrt(var_c + eps)``, which is exact as a per-channel scale
  ``|q g_c|`` (the int8 weights are ``I`` times the sign of ``g_c``);
- weight fake-quant nodes whose ranges make TFLite's int8 step exactly ``q``
  (or ``|q g_c|``): ``[-127 s, 127 s]`` with a narrow range;
- activation fake-quant nodes on CDL's grids: an unsigned grid ``{0..2^b-1} q_a``
  is int8 with scale ``q_a`` and zero point -128, a signed one is symmetric int8;
- a calibrated 8-bit range on every other tensor TFLite materialises (the input,
  residual sums, BatchNorms that could not be folded, pooling means).

With every tensor carrying a fake-quant node, the converter needs no
representative dataset and keeps the ranges given here.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from cdl_tf.batchnorm import batchnorm_affine
from cdl_tf.layer_registry import (activation_name, inner_layer, layer_edges, output_quantizers, quantized_weight,
                                   relu_output, rule, weight_attribute)
from cdl_tf.quantize import model_quantizers


class ExportError(ValueError):
    """The model has a layer or pattern the exporter does not support."""


@dataclasses.dataclass
class WeightInfo:
    """A quantized kernel as exported: indices, step and folded per-channel factors."""

    layer: str
    indices: np.ndarray  # CDL indices in the layer's kernel layout
    q: float
    lo: int
    hi: int
    channel_scale: Optional[np.ndarray]  # g_c of a folded BatchNorm, else None


def _activation_fn(name: Optional[str]) -> Callable:
    table = {None: tf.identity, "linear": tf.identity, "relu": tf.nn.relu, "relu6": tf.nn.relu6,
             "softmax": tf.nn.softmax}
    if name not in table:
        raise ExportError(f"activation {name!r} is not supported by the exporter")
    return table[name]


class InferenceGraph:
    """The exported graph of one model; call `function(mode)` for a TF function.

    Modes: ``"calibrate"`` returns the output and every tensor that needs a range;
    ``"int8"`` inserts all fake-quant nodes (for the int8 converter); ``"float"``
    none (the float TFLite model, with the same ``Q_u`` weights); ``"reference"``
    rounds activations onto their CDL grids in float, reproducing the Keras ``Q_u`` model.
    """

    def __init__(self, model: keras.Model):
        if isinstance(model, keras.Sequential):
            raise ExportError("export needs a Functional model (cdl_tf.quantize_model returns one)")
        self.model = model
        self.order, self.inbound, self.outbound = layer_edges(model)
        self.output_names = list(model.output_names)
        self.input_names = list(model.input_names)
        if len(self.output_names) != 1 or len(self.input_names) != 1:
            raise ExportError("export supports models with one input and one output")
        self._quantizers = {name: (q, v) for name, q, v in model_quantizers(model)}
        self.weights: Dict[str, WeightInfo] = {}
        self.biases: Dict[str, np.ndarray] = {}
        self.folded: Dict[str, str] = {}  # BN layer -> weighted layer it is folded into
        self._fold_batchnorms()
        self._folded_into = {w: bn for bn, w in self.folded.items()}  # weighted layer -> its folded BN
        self._prepare_weights()
        self.range_names: List[str] = [n for n in self.order if self._has_range(n)]
        self.ranges: Dict[str, Tuple[float, float]] = {}

    # -- structure --------------------------------------------------------------------
    def layer(self, name: str):
        return self.model.get_layer(name)

    def _fold_batchnorms(self) -> None:
        for name in self.order:
            layer = self.layer(name)
            if not isinstance(layer, keras.layers.BatchNormalization):
                continue
            src = self.inbound[name]
            if len(src) != 1 or self.outbound[src[0]] != [name]:
                continue
            source = self.layer(src[0])
            if rule(source).folds_batchnorm and activation_name(source) in (None, "linear"):
                if output_quantizers(source):
                    continue
                self.folded[name] = src[0]

    def _quantizer_of(self, layer_name: str, kind: str):
        for name, (q, v) in self._quantizers.items():
            if name.split("/")[0] == layer_name and q.kind == kind:
                return q, v
        return None

    def _hard(self, layer, key: str) -> Tuple[np.ndarray, float, object]:
        """``(indices, q, quantizer)`` of the quantized weight ``key`` (``layer/attribute``)."""
        quantizer, variables = self._quantizers[key]
        value = quantized_weight(layer, quantizer).numpy()
        q = float(quantizer.step_and_softness(variables)[0])
        return np.clip(np.round(value / np.float32(q)), quantizer.lo, quantizer.hi).astype(np.int32), q, quantizer

    def _prepare_weights(self) -> None:
        for name in self.order:
            layer = self.layer(name)
            inner = inner_layer(layer)
            attr = weight_attribute(inner)
            if attr is None:
                continue
            if f"{name}/{attr}" not in self._quantizers:
                raise ExportError(f"layer {name!r} is not CDL-quantized; the int8 export needs every kernel quantized")
            indices, q, quantizer = self._hard(layer, f"{name}/{attr}")
            bias = None
            if f"{name}/bias" in self._quantizers:
                b_idx, b_q, _ = self._hard(layer, f"{name}/bias")
                bias = b_idx.astype(np.float64) * b_q
            elif inner.use_bias:
                bias = inner.bias.numpy().astype(np.float64)
            scale = None
            if name in self._folded_into:
                scale, shift = batchnorm_affine(self.layer(self._folded_into[name]))
                bias = (0.0 if bias is None else bias) * scale + shift
            self.weights[name] = WeightInfo(name, indices, q, quantizer.lo, quantizer.hi, scale)
            if bias is not None:
                self.biases[name] = bias.astype(np.float32)

    def kernel_and_scales(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """Float kernel ``I q g`` and the per-output-channel int8 steps ``|q g|``."""
        w = self.weights[name]
        kernel = w.indices.astype(np.float64) * w.q
        channels = w.indices.shape[-1]
        if w.channel_scale is None:
            return kernel.astype(np.float32), np.full([channels], w.q, np.float32)
        return (kernel * w.channel_scale).astype(np.float32), np.abs(w.q * w.channel_scale).astype(np.float32)

    # -- graph ------------------------------------------------------------------------
    def _needs_range(self, name: str) -> bool:
        """Whether TFLite materialises this layer's output with a range of its own."""
        layer = self.layer(name)
        if output_quantizers(layer):
            return False  # CDL grid
        if name in self.folded or rule(layer).keeps_values:
            return False
        consumers = [inner_layer(self.layer(c)) for c in self._consumers(name)]
        if (rule(layer).fuses_relu and name not in self.output_names and len(consumers) == 1
                and relu_output(consumers[0]) is not None):
            return False  # fused with the following ReLU
        return True

    def _has_range(self, name: str) -> bool:
        """Whether the int8 graph puts a calibrated range on this layer's output (folded BNs: on their conv's)."""
        if name in self.folded:
            return False
        if name in self.input_names:
            return True
        bn = self._folded_into.get(name)
        return self._needs_range(name) and (bn is None or self._needs_range_after_fold(bn))

    def _needs_range_after_fold(self, bn: str) -> bool:
        return bn in self.output_names or not (
            len(self.outbound[bn]) == 1 and isinstance(inner_layer(self.layer(self.outbound[bn][0])), keras.layers.ReLU)
        )

    def _consumers(self, name: str) -> List[str]:
        """Consumers of a layer's output, looking through BatchNorms folded into it."""
        out = []
        for c in self.outbound[name]:
            out.extend(self.outbound[c] if c in self.folded else [c])
        return out

    def function(self, mode: str) -> Callable:
        """The graph as a function of the input batch in ``mode``; it runs over the layers in Python,
        so it is traced without autograph."""
        if mode not in ("calibrate", "int8", "float", "reference"):
            raise ValueError(f"mode must be calibrate, int8, float or reference, got {mode!r}")
        if mode == "int8" and not self.ranges:
            raise ExportError("calibrate the graph (InferenceGraph.calibrate) before building the int8 function")
        ranged = set(self.range_names)

        def fn(x):
            values: Dict[str, tf.Tensor] = {}
            probes: Dict[str, tf.Tensor] = {}
            for name in self.order:
                if name in self.input_names:
                    out = x
                else:
                    ins = [values[s] for s in self.inbound[name]]
                    out = self._apply(name, ins, mode)
                if name in self.folded:
                    values[name] = out
                    continue
                if name in ranged:
                    if mode == "calibrate":
                        probes[name] = out
                    elif mode == "int8":
                        lo, hi = self.ranges[name]
                        out = tf.quantization.fake_quant_with_min_max_vars(out, lo, hi, num_bits=8, name=f"{name}_fq")
                values[name] = out
            result = values[self.output_names[0]]
            return (result, probes) if mode == "calibrate" else result

        return fn

    def _apply(self, name: str, ins: List[tf.Tensor], mode: str) -> tf.Tensor:
        layer = self.layer(name)
        inner = inner_layer(layer)
        x = ins[0]
        if name in self.weights:
            out = self._weighted(name, inner, x, mode)
        elif isinstance(inner, keras.layers.BatchNormalization):
            if name in self.folded:
                out = x  # already inside the weighted layer
            else:
                scale, shift = batchnorm_affine(inner)
                out = x * tf.constant(scale, tf.float32) + tf.constant(shift, tf.float32)
        elif isinstance(inner, keras.layers.ReLU):
            out = tf.nn.relu(x) if inner.max_value is None else tf.clip_by_value(x, 0.0, float(inner.max_value))
        elif isinstance(inner, keras.layers.Activation):
            out = _activation_fn(activation_name(inner))(x)
        elif isinstance(inner, keras.layers.Add):
            out = ins[0]
            for other in ins[1:]:
                out = tf.add(out, other)
        elif isinstance(inner, keras.layers.MaxPooling2D):
            out = tf.nn.max_pool2d(x, inner.pool_size, inner.strides, inner.padding.upper())
        elif isinstance(inner, keras.layers.AveragePooling2D):
            out = tf.nn.avg_pool2d(x, inner.pool_size, inner.strides, inner.padding.upper())
        elif isinstance(inner, keras.layers.GlobalAveragePooling2D):
            out = tf.reduce_mean(x, axis=[1, 2], keepdims=inner.keepdims)
        elif isinstance(inner, (keras.layers.Flatten, keras.layers.Reshape)):
            out = tf.reshape(x, [-1, int(np.prod(inner.output_shape[1:]))] if isinstance(inner, keras.layers.Flatten)
                             else [-1, *inner.target_shape])
        elif isinstance(inner, keras.layers.Dropout):
            out = x
        elif isinstance(inner, keras.layers.ZeroPadding2D):
            (t, b), (l, r) = inner.padding
            out = tf.pad(x, [[0, 0], [t, b], [l, r], [0, 0]])
        else:
            raise ExportError(f"layer {name!r} of type {type(inner).__name__} is not supported by the exporter")
        return self._output_grid(name, out, mode)

    def _weighted(self, name: str, inner, x: tf.Tensor, mode: str) -> tf.Tensor:
        kernel, steps = self.kernel_and_scales(name)
        w = tf.constant(kernel, name=f"{name}_kernel")
        if mode == "int8":
            if not isinstance(inner, keras.layers.Conv2D):  # one step: TFLite transposes FC kernels
                s = float(steps[0])
                w = tf.quantization.fake_quant_with_min_max_vars(w, -127 * s, 127 * s, num_bits=8, narrow_range=True,
                                                                name=f"{name}_kernel_fq")
            else:
                w = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                    w, -127 * steps, 127 * steps, num_bits=8, narrow_range=True, name=f"{name}_kernel_fq")
        if isinstance(inner, keras.layers.Dense):
            out = tf.matmul(x, w)
        elif isinstance(inner, keras.layers.DepthwiseConv2D):
            out = tf.nn.depthwise_conv2d(x, w, [1, *inner.strides, 1], inner.padding.upper(),
                                         dilations=inner.dilation_rate)
        else:
            out = tf.nn.conv2d(x, w, inner.strides, inner.padding.upper(), dilations=inner.dilation_rate)
        if name in self.biases:
            out = tf.nn.bias_add(out, tf.constant(self.biases[name]))
        return _activation_fn(activation_name(inner))(out)

    def _output_grid(self, name: str, out: tf.Tensor, mode: str) -> tf.Tensor:
        """Clip to the CDL activation grid and, for int8, fake-quantize onto it."""
        found = self._quantizer_of(name, "activation")
        if found is None:
            return out
        quantizer, variables = found
        with tf.init_scope():  # the step's value, a constant of the graph
            q = float(quantizer.step_and_softness(variables)[0])
        if mode != "int8":
            out = tf.clip_by_value(out, quantizer.lo * q, quantizer.hi * q)
            return q * tf.round(out / q) if mode == "reference" else out
        # Unsigned grid {0..2^b-1} q: int8 scale q, zero point -128; signed: symmetric int8.
        # A b < 8 bit grid is an int8 clip after the fake-quant, so the clip runs in int8 too.
        unsigned = quantizer.lo == 0
        lo, hi = (0.0, 255 * q) if unsigned else (-127 * q, 127 * q)
        fq = lambda t, tag: tf.quantization.fake_quant_with_min_max_vars(
            t, lo, hi, num_bits=8, narrow_range=not unsigned, name=f"{name}_{tag}")
        out = fq(out, "fq")
        if quantizer.hi < (255 if unsigned else 127):
            out = fq(tf.minimum(out, quantizer.hi * q) if unsigned else tf.clip_by_value(out, quantizer.lo * q, quantizer.hi * q), "clip_fq")
        return out

    def activation_steps(self) -> Dict[str, float]:
        return {n.split("/")[0]: float(q.step_and_softness(v)[0])
                for n, (q, v) in self._quantizers.items() if q.kind == "activation"}

    # -- calibration --------------------------------------------------------------------
    def calibrate(self, batches) -> Dict[str, Tuple[float, float]]:
        """Min/max of every tensor that needs a range, over the given input batches."""
        fn = tf.function(self.function("calibrate"), autograph=False)
        lows: Dict[str, float] = {}
        highs: Dict[str, float] = {}
        for x in batches:
            _, probes = fn(tf.convert_to_tensor(x, tf.float32))
            for name, t in probes.items():
                lows[name] = min(lows.get(name, 0.0), float(tf.reduce_min(t)))
                highs[name] = max(highs.get(name, 0.0), float(tf.reduce_max(t)))
        if not lows:
            raise ExportError("no calibration batch was given")
        self.ranges = {n: (_round_out(lows[n], floor=True), _round_out(max(highs[n], lows[n] + 1e-6), floor=False))
                       for n in self.range_names}
        return self.ranges

    def stored_ranges(self) -> List[List[float]]:
        """The calibrated ranges as ``[[lo, hi], ...]`` in `range_names` order, for the ``.cdlz`` metadata.

        The names are left out: the decoder's graph lists the same names in the same order.
        """
        if not self.ranges:
            raise ExportError("calibrate the graph (InferenceGraph.calibrate) before storing its ranges")
        return [[_json_number(v) for v in self.ranges[n]] for n in self.range_names]

    def load_ranges(self, stored) -> None:
        """Set the ranges from `stored_ranges` output, checking that it fits this graph."""
        if not isinstance(stored, list) or len(stored) != len(self.range_names):
            got = f"{len(stored)} ranges" if isinstance(stored, list) else type(stored).__name__
            raise ExportError(f"stored ranges: expected a list of {len(self.range_names)} [lo, hi] pairs "
                              f"(for {self.range_names}), got {got}")
        ranges = {}
        for name, pair in zip(self.range_names, stored):
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
                    or not (pair[0] <= 0 <= pair[1] and pair[0] < pair[1])):
                raise ExportError(f"stored range of {name!r}: expected [lo, hi] with lo <= 0 <= hi, lo < hi, got {pair!r}")
            ranges[name] = (float(pair[0]), float(pair[1]))
        self.ranges = ranges


RANGE_DIGITS = 3


def _round_out(v: float, floor: bool) -> float:
    """``v`` rounded away from the range's inside to ``RANGE_DIGITS`` significant digits.

    Ranges are stored as JSON numbers in the ``.cdlz`` metadata, where every digit costs
    bytes: ``[-0.421, 2.83]`` instead of ``[-0.4200211, 2.8255963]``. Rounding outward keeps
    every calibrated value inside its range and widens it by less than ``10**(1 - RANGE_DIGITS)``
    of its magnitude (the int8 step grows by as much). The result is the shortest decimal of
    a float32, so it is the same after a JSON round trip and in the float32 graph.
    """
    if v == 0:
        return 0.0
    exponent = math.floor(math.log10(abs(v))) - RANGE_DIGITS + 1
    mantissa = v / 10.0 ** exponent
    mantissa = math.floor(mantissa) if floor else math.ceil(mantissa)
    rounded = np.float32(f"{mantissa}e{exponent}")
    if (rounded > np.float32(v)) if floor else (rounded < np.float32(v)):  # float32 rounding crossed v
        rounded = np.float32(f"{mantissa - 1 if floor else mantissa + 1}e{exponent}")
    return float(str(rounded))


def _json_number(v: float) -> float | int:
    """``v`` as the shorter JSON number: ``0`` rather than ``0.0``."""
    return int(v) if float(v).is_integer() else v
