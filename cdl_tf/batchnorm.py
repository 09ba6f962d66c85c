"""Re-estimate BatchNorm statistics of a CDL model under hard quantization.

Training sees ``Q_p``/``Q_d`` outputs, inference ``Q_u`` outputs, whose statistics
differ; before evaluating with ``Q_u`` the moving mean and variance of every
BatchNormalization layer are replaced by their averages over ``steps`` batches of
the training data, computed with all quantizers hard.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from cdl_tf.quantize import model_quantizers
from cdl_tf.quantizers import flagged


@contextlib.contextmanager
def hard_quantization(model) -> Iterator[None]:
    """Within the context, newly traced training-mode calls quantize with ``Q_u``."""
    with flagged((q for _, q, _ in model_quantizers(model)), "force_hard"):
        yield


def _batchnorms(model):
    return [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]


def reestimate_batchnorm(model, data: Iterable, steps: int = 50) -> int:
    """Set BatchNorm moving statistics to the average batch statistics over ``steps`` batches.

    ``data`` yields input batches or ``(inputs, targets)`` pairs. Returns the batches used.
    """
    bns = _batchnorms(model)
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    sums = [[np.zeros(bn.moving_mean.shape), np.zeros(bn.moving_variance.shape)] for bn in bns]
    used = 0
    try:
        for bn in bns:
            bn.momentum = 0.0
        with hard_quantization(model):
            step = tf.function(lambda x: model(x, training=True))
            for batch in data:
                if used >= steps:
                    break
                step(batch[0] if isinstance(batch, (tuple, list)) else batch)
                for bn, acc in zip(bns, sums):
                    acc[0] += bn.moving_mean.numpy()
                    acc[1] += bn.moving_variance.numpy()
                used += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
    if used:
        for bn, (mean, var) in zip(bns, sums):
            bn.moving_mean.assign(mean / used)
            bn.moving_variance.assign(var / used)
    return used


def batchnorm_affine(bn: keras.layers.BatchNormalization) -> Tuple[np.ndarray, np.ndarray]:
    """Inference map ``y = scale x + shift`` of a BatchNormalization layer, in float64.

    ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale`` (``gamma = 1`` and
    ``beta = 0`` for layers without them).
    """
    mean = bn.moving_mean.numpy().astype(np.float64)
    gamma = bn.gamma.numpy().astype(np.float64) if bn.scale else np.ones_like(mean)
    beta = bn.beta.numpy().astype(np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
    return scale, beta - mean * scale
