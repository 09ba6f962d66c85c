"""Keras callbacks for CDL training."""
from __future__ import annotations

from typing import Callable

import tf_keras as keras

from cdl_tf.quantize import quantizers


class RateSchedule(keras.callbacks.Callback):
    """Scale every rate weight (``lambda_w``, ``lambda_a``) by ``multiplier(epoch)``.

    ``RateSchedule.warmup(5)`` ramps the rate terms linearly from 0 to their
    configured weight over the first 5 epochs.
    """

    def __init__(self, multiplier: Callable[[int], float]):
        super().__init__()
        self.multiplier = multiplier

    @classmethod
    def warmup(cls, epochs: int) -> "RateSchedule":
        if epochs < 0:
            raise ValueError(f"warm-up epochs must be >= 0, got {epochs}")
        return cls(lambda epoch: min(1.0, (epoch + 1) / (epochs + 1)))

    def on_epoch_begin(self, epoch, logs=None):
        m = float(self.multiplier(epoch))
        for _, quantizer, variables in quantizers(self.model):
            variables["rate_weight"].assign(quantizer.rate_weight * m)
