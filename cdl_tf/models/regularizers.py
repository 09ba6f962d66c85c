"""The kernel regularizer shared by the model builders."""
from __future__ import annotations

import tf_keras as keras


def kernel_regularizer(weight_decay: float) -> keras.regularizers.Regularizer | None:
    """``L2(weight_decay)`` (loss ``weight_decay * sum(kernel ** 2)``) if positive, else ``None``."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return keras.regularizers.L2(weight_decay) if weight_decay > 0 else None
