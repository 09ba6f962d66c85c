"""Which quantizer each layer of a model gets: bits, alphabets, activation sites, rate normalisers.

`QuantizePlanner` reads a `CDLConfig` and the model's graph (rules of `cdl_tf.layer_registry`):

- bits: ``CDLConfig.layer_bits`` for a named layer, else ``first_layer_bits`` /
  ``last_layer_bits`` for the first and last weighted layers, else ``weight_bits`` and
  ``activation_bits``; biases (``quantize_biases``) get ``bias_bits``;
- activation sites: ReLU outputs (unsigned alphabet), and linear outputs of layers whose
  consumers do not quantize them later (signed); an activation site takes the activation bits
  of the nearest weighted layer upstream;
- rate normalisers: a tensor of ``N_l`` values and empirical entropy ``H_l`` adds
  ``lambda (N_l / N) H_l`` to the loss, with ``N`` the model's number of quantized weights
  (weights) or of quantized activation values per example (activations), so that the
  rate terms sum to ``lambda_w`` times the bits per weight and ``lambda_a`` times the bits
  per activation.
"""
from __future__ import annotations

import uuid
from typing import List, Optional, Tuple

from cdl_tf.config import CDLConfig
from cdl_tf.layer_registry import (RELU_ACTIVATIONS, activation_name, inner_layer, layer_edges, quantizes_input,
                                   relu_output, weight_attribute)
from cdl_tf.epr import EPRWeightQuantizer
from cdl_tf.quantize_config import CDLQuantizeConfig
from cdl_tf.quantizers import CDLActivationQuantizer, CDLWeightQuantizer


class QuantizePlanner:
    """Chooses bits, alphabets and rate normalisers for the layers of one model."""

    def __init__(self, model, config: CDLConfig, selected: List):
        self.config = config
        self.selected = {id(inner_layer(l)) for l in selected}
        weighted = [inner_layer(l) for l in model.layers if id(inner_layer(l)) in self.selected and weight_attribute(l)]
        if not weighted and not config.quantize_activations:
            raise ValueError("nothing to quantize: no Conv2D/DepthwiseConv2D/Dense layer selected")
        self.first = weighted[0].name if weighted else None
        self.last = weighted[-1].name if weighted else None
        self.output_names = {inner_layer(l).name for l in model.layers if l.name in set(model.output_names)}
        self.by_name = {l.name: l for l in model.layers}
        _, self.inbound, self.outbound = layer_edges(model)
        self.group = f"cdl-{uuid.uuid4().hex[:12]}"
        self.plans = {}
        for outer in model.layers:
            if id(inner_layer(outer)) in self.selected:
                self.plans[inner_layer(outer).name] = self._plan(outer)
        self.n_weights = sum(p["n_weights"] for p in self.plans.values())
        self.n_acts = sum(p["n_acts"] for p in self.plans.values())

    def bits(self, layer) -> Tuple[int, int]:
        c = self.config
        if layer.name in c.layer_bits:
            return c.layer_bits[layer.name]
        if layer.name == self.first and c.first_layer_bits is not None:
            return c.first_layer_bits, c.first_layer_bits
        if layer.name == self.last and c.last_layer_bits is not None:
            return c.last_layer_bits, c.last_layer_bits
        return c.weight_bits, c.activation_bits

    def _site(self, outer) -> Optional[bool]:
        """Whether the layer's output is an activation site, and if so whether it is unsigned."""
        layer = inner_layer(outer)
        unsigned = relu_output(layer)
        if unsigned is not None:
            return unsigned
        act = activation_name(layer)
        if act in RELU_ACTIVATIONS:
            return True
        if act not in (None, "linear"):
            return None
        consumers = self.outbound.get(outer.name, [])
        if consumers and layer.name not in self.output_names and all(quantizes_input(self.by_name[n]) for n in consumers):
            return None
        return False

    def _activation_bits(self, outer) -> int:
        """Activation bits of the nearest weighted layer upstream on a single-input path."""
        source = outer
        while source is not None and not weight_attribute(source):
            sources = self.inbound.get(source.name, [])
            source = self.by_name.get(sources[0]) if len(sources) == 1 else None
        if source is None or id(inner_layer(source)) not in self.selected:
            return self.config.activation_bits
        return self.bits(inner_layer(source))[1]

    def _plan(self, outer) -> dict:
        c = self.config
        layer = inner_layer(outer)
        attr = weight_attribute(layer)
        plan = {"weight_attrs": [], "weight_bits": None, "n_weights": 0, "site": None, "n_acts": 0}
        if attr:
            plan["weight_attrs"] = [attr] + (["bias"] if c.quantize_biases and layer.use_bias else [])
            plan["weight_bits"] = self.bits(layer)[0]
            plan["n_weights"] = sum(int(getattr(layer, a).shape.num_elements()) for a in plan["weight_attrs"])
        if c.quantize_activations:
            plan["site"] = self._site(outer)
            if plan["site"] is not None:
                plan["act_bits"] = self._activation_bits(outer)
                plan["n_acts"] = CDLActivationQuantizer._value_count(outer.output_shape)
        return plan

    def _quantizer_args(self) -> dict:
        c = self.config
        return dict(
            mode=c.mode, init_kappa=c.init_kappa, softness_param=c.softness_param,
            train_softness=c.train_softness, train_step=c.train_step,
            step_grad_scale=c.step_grad_scale, seed=c.seed, group=self.group,
        )

    def quantize_config(self, layer) -> Optional[CDLQuantizeConfig]:
        plan = self.plans[layer.name]
        c = self.config
        weights, oq = {}, None
        for attr in plan["weight_attrs"]:
            bits = c.bias_bits if attr == "bias" else plan["weight_bits"]
            lo, hi = c.weight_range(bits)
            weights[attr] = (EPRWeightQuantizer if c.mode == "epr" else CDLWeightQuantizer)(
                bits, lo, hi, window=c.weight_window, init_step_scale=c.weight_init_step_scale,
                rate_weight=c.lambda_w, distortion_weight=c.distortion_weight,
                rate_normalizer=self.n_weights, **self._quantizer_args(),
            )
        if plan["site"] is not None:
            lo, hi = c.activation_range(plan["act_bits"], unsigned=plan["site"])
            oq = CDLActivationQuantizer(
                plan["act_bits"], lo, hi, window=c.activation_window, rate_weight=c.lambda_a,
                count_sample=c.activation_count_sample, rate_normalizer=max(self.n_acts, 1),
                **self._quantizer_args(),
            )
        if not weights and oq is None:
            return None
        return CDLQuantizeConfig(weights, oq)
