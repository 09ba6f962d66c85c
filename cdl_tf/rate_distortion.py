"""The distortion of the rate-distortion objective: weight errors as the model's output sees them.

Gao et al. (ICML 2019) measure a compressed model's distortion at its output, not on its
weights. Around trained weights ``w`` (where the loss gradient is about 0), quantizing them to
``w^ = Q_u(w)`` raises the expected task loss by, to second order,

    Delta L  ~  1/2 (w^ - w)^T H (w^ - w)  ~  1/2 sum_i F_i (w^_i - w_i)^2,

with the Hessian ``H`` replaced by the empirical Fisher ``E_n[g_n g_n^T]`` of the per-example
gradients ``g_n = d loss_n / d w`` (a Gauss-Newton estimate for a model that fits its data) and
only its diagonal ``F_i = E_n[g_{n,i}^2]`` kept. ``F_i`` is the expected squared output
gradient of weight ``i``.

The objective ``J = L_task + lambda_w R_w + lambda_a R_a + mu D_F``, ``D_F`` the sum above,
is R-CDL's or CDL's with this term (`cdl_tf.CDLWeightQuantizer`'s ``distortion_weight`` ``mu``):
their forward runs on ``Q_d`` or ``Q_p`` draws, so the task loss does not see the error of the
``Q_u`` weights that are shipped; ``D_F`` charges it where the output is sensitive, in the task
loss's own units (``mu = 1`` is the second-order estimate itself). ``F`` is estimated once, at
the float model a run starts from (`diagonal_fisher`), and handed to the quantizers
(`set_importance`); it is not saved with the model.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from cdl_tf.layer_registry import inner_layer, weight_quantizers
from cdl_tf.quantizers import CDLWeightQuantizer

Key = Tuple[str, str]  # (layer name, weight attribute: "kernel", "bias", ...)


def _attribute(weight: tf.Variable) -> str:
    return weight.name.split(":")[0].split("/")[-1]


def diagonal_fisher(model: keras.Model, dataset: tf.data.Dataset, examples: int) -> Dict[Key, np.ndarray]:
    """``F_i = mean_n (d loss_n / d w_i)^2`` over the first ``examples`` examples of ``dataset``.

    ``model`` is a float classifier with logit outputs, run in inference mode (BatchNorm on its
    moving statistics); the loss is the sparse categorical cross-entropy. Returns each
    trainable weight's ``F`` by ``(layer name, attribute)``.
    """
    if examples <= 0:
        raise ValueError(f"examples must be > 0, got {examples!r}")
    variables = model.trainable_variables
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(reduce_retracing=True)
    def squared_gradients(x, y):
        def one(example):
            xi, yi = example
            with tf.GradientTape() as tape:
                loss = loss_fn(yi[None], model(xi[None], training=False))
            return [tf.square(g) for g in tape.gradient(loss, variables)]

        per_example = tf.map_fn(one, (x, y), fn_output_signature=[v.dtype for v in variables])
        return [tf.reduce_sum(s, axis=0) for s in per_example]

    totals = [np.zeros(v.shape, np.float64) for v in variables]
    seen = 0
    for x, y in dataset:
        take = min(examples - seen, int(x.shape[0]))
        for total, s in zip(totals, squared_gradients(x[:take], y[:take])):
            total += s.numpy()
        seen += take
        if seen == examples:
            break
    if seen < examples:
        raise ValueError(f"the dataset holds {seen} examples, fewer than the {examples} asked for")
    names = {id(w): (layer.name, _attribute(w)) for layer in model.layers for w in layer.trainable_weights}
    return {names[id(v)]: (t / seen).astype(np.float32) for v, t in zip(variables, totals) if id(v) in names}


def set_importance(model: keras.Model, fisher: Dict[Key, np.ndarray]) -> int:
    """Give each weight quantizer of the quantized ``model`` that has a distortion weight the
    importance ``F`` of its weight (keyed as `diagonal_fisher` keys the float model's);
    returns how many were set."""
    found = 0
    for layer in model.layers:
        for weight, quantizer, _ in weight_quantizers(layer):
            if not isinstance(quantizer, CDLWeightQuantizer) or not quantizer.distortion_weight:
                continue
            key = (inner_layer(layer).name, _attribute(weight))
            if key not in fisher:
                raise KeyError(f"no importance for weight {key[0]}/{key[1]}")
            if tuple(fisher[key].shape) != tuple(weight.shape):
                raise ValueError(f"importance of {key[0]}/{key[1]} has shape {fisher[key].shape}, "
                                 f"the weight {tuple(weight.shape)}")
            quantizer.importance = tf.constant(fisher[key])
            found += 1
    return found
