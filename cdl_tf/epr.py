"""Entropy penalized reparameterization (EPR; Oktay et al., arXiv 1906.06624) as a weight quantizer.

EPR stores each weight tensor as integer latents ``y = round(theta / q)`` decoded by the affine
map ``w = q y`` (the paper's scalar decoder for dense and conv kernels), with a learned
probability model ``P`` of the latents, and trains

    J = L_task(q round(theta / q)) + lambda_w sum_i -log2 P(theta_i / q + u_i) / N,
    u_i ~ U(-1/2, 1/2):

the task loss on the rounded latents (forward ``Q_u``, straight-through gradient), the rate on
latents relaxed by additive uniform noise, which makes ``-log2 P`` a differentiable proxy of the
bits that an arithmetic coder of ``round(theta / q)`` under ``P`` spends. ``N`` is the model's
number of quantized weights, so the penalty is ``lambda_w`` per bit per weight, as CDL's.

The probability model of a tensor is a categorical ``p = softmax(s v)`` over its alphabet
``{lo .. hi}`` (what the coder codes), read at a noisy latent ``t`` by linear interpolation,
``P(t) = (1 - f) p_floor(t) + f p_ceil(t)``, ``f = t - floor(t)``; ``v`` starts at the log
histogram of the first latents and is trained by the rate's gradient (``s = 30`` lets Adam move
it at the weights' learning rate). The straight-through gradient is that of ``Q_d`` (mode
``ste``'s: `cdl_tf.ops.q_ste`). The differences from CDL
are the rate model (a learned ``P`` under additive noise, not the soft counts of ``Q_p``'s CPMF)
and its gradient; files are coded by the same coder from the empirical counts, so sizes compare.
"""
from __future__ import annotations

from typing import Dict

import tensorflow as tf

from cdl_tf import ops
from cdl_tf.quantizers import CDLWeightQuantizer

LOGIT_SCALE = 30.0  # s: logits = s v


def interpolated_bits(t: tf.Tensor, pmf: tf.Tensor, lo: int) -> tf.Tensor:
    """``-log2 P(t)`` per value: ``pmf`` over ``{lo .. lo + K - 1}`` linearly interpolated at ``t``
    (clipped to the alphabet)."""
    k = int(pmf.shape[0])
    position = tf.clip_by_value(t - float(lo), 0.0, float(k - 1))
    below = tf.minimum(tf.floor(position), float(k - 2))
    frac = position - below
    i = tf.cast(below, tf.int32)
    p = (1.0 - frac) * tf.gather(pmf, i) + frac * tf.gather(pmf, i + 1)
    return -tf.math.log(tf.maximum(p, 1e-12)) / tf.math.log(tf.constant(2.0, t.dtype))


class EPRWeightQuantizer(CDLWeightQuantizer):
    """A weight quantizer trained as EPR: rounded forward, rate ``-log2 P(theta / q + u)``."""

    def build(self, tensor_shape, name: str, layer) -> Dict[str, tf.Variable]:
        weights = super().build(tensor_shape, name, layer)
        weights["density"] = layer.add_weight(
            f"{name}_density", shape=(self.hi - self.lo + 1,), initializer="zeros", trainable=True,
            aggregation=tf.VariableAggregation.MEAN,
        )
        return weights

    def _initial_values(self, x: tf.Tensor) -> Dict[str, tf.Tensor]:
        values = super()._initial_values(x)
        counts = ops.hard_index_counts(tf.cast(x, tf.float32), tf.exp(values["log_q"]), self.lo, self.hi)
        values["density"] = tf.math.log(counts + 1.0) / LOGIT_SCALE
        return values

    def pmf(self, weights) -> tf.Tensor:
        """The probability model ``p`` over the alphabet."""
        return tf.nn.softmax(LOGIT_SCALE * weights["density"])

    def _training_values_and_rate(self, x: tf.Tensor, q: tf.Tensor, alpha: tf.Tensor, weights):
        """The rounded latents (straight-through) and the rate ``mean_i -log2 P(x_i / q + u_i)``."""
        values = ops.q_ste(x, q, alpha, self.lo, self.hi, window=self.window)
        self._record(ops.hard_index_counts(x, q, self.lo, self.hi), training=True)  # the coded rate, logged
        noise = tf.random.stateless_uniform(tf.shape(x), self._seed(weights), -0.5, 0.5, dtype=x.dtype)
        return values, tf.reduce_mean(interpolated_bits(x / q + noise, tf.cast(self.pmf(weights), x.dtype), self.lo))
