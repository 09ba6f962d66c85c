"""TF-MOT's registration of CDL: the `QuantizeConfig` of a CDL layer and the `QuantizeScheme`.

A `CDLQuantizeConfig` names the weight quantizers of a layer (``{attribute: quantizer}``) and
its output quantizer; `CDLQuantizeScheme` applies them on the model's own layout (no
BatchNorm folding during training) with no default registry: every CDL layer carries an
explicit config, planned by `cdl_tf.quantize_plan`.
"""
from __future__ import annotations

from typing import Dict, Optional

import tf_keras as keras
import tensorflow_model_optimization as tfmot

from cdl_tf.quantizers import CDLActivationQuantizer, CDLWeightQuantizer

_tfq = tfmot.quantization.keras


class CDLQuantizeConfig(_tfq.QuantizeConfig):
    """Weight quantizers (``{attribute: quantizer}``, e.g. kernel and bias) and/or an output quantizer."""

    def __init__(
        self,
        weights: Optional[Dict[str, CDLWeightQuantizer]] = None,
        output_quantizer: Optional[CDLActivationQuantizer] = None,
    ):
        self.weights = dict(weights or {})
        self.output_quantizer = output_quantizer

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, attr), quantizer) for attr, quantizer in self.weights.items()]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        for attr, value in zip(self.weights, quantize_weights):
            setattr(layer, attr, value)

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [] if self.output_quantizer is None else [self.output_quantizer]

    def get_config(self):
        ser = keras.utils.serialize_keras_object
        return {
            "weights": {attr: ser(q) for attr, q in self.weights.items()},
            "output_quantizer": None if self.output_quantizer is None else ser(self.output_quantizer),
        }

    @classmethod
    def from_config(cls, config):
        objects = {"CDLWeightQuantizer": CDLWeightQuantizer, "CDLActivationQuantizer": CDLActivationQuantizer}
        de = lambda c: None if c is None else keras.utils.deserialize_keras_object(c, custom_objects=objects)
        return cls({attr: de(q) for attr, q in config["weights"].items()}, de(config["output_quantizer"]))

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


class _IdentityLayout(_tfq.QuantizeLayoutTransform):
    """CDL trains on the model's own layout; BatchNorm is folded only at export."""

    def apply(self, model, layer_quantize_map):
        return model, layer_quantize_map


class _NoDefaultRegistry(_tfq.QuantizeRegistry):
    """Every CDL layer carries an explicit `CDLQuantizeConfig`; there are no defaults."""

    def get_quantize_config(self, layer):
        raise RuntimeError(f"layer {layer.name!r} has no CDLQuantizeConfig")

    def supports(self, layer):
        return False


class CDLQuantizeScheme(_tfq.QuantizeScheme):
    """`QuantizeScheme` for `tfmot.quantization.keras.quantize_apply`."""

    def get_layout_transformer(self):
        return _IdentityLayout()

    def get_quantize_registry(self):
        return _NoDefaultRegistry()


class QuantizeWrapperV2(_tfq.QuantizeWrapperV2):
    """TF-MOT's `QuantizeWrapperV2`, building the wrapped layer before its quantizers.

    A model restored from ``.keras``/``.h5`` config builds its wrappers around unbuilt
    layers; building the layer first gives its weights the order they were saved in.
    It keeps TF-MOT's class name, under which the wrappers were saved.
    """

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        super().build(input_shape)
