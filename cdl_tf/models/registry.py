"""`get_model`: build a model by name."""
from __future__ import annotations

from typing import Callable

import tf_keras as keras

from cdl_tf.models.lenet import lenet5, lenet300_100
from cdl_tf.models.resnet import resnet8, resnet18, resnet20, resnet56

MODELS: dict[str, Callable[..., keras.Model]] = {
    "lenet300_100": lenet300_100,
    "lenet5": lenet5,
    "resnet8": resnet8,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet18": resnet18,
}


def get_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, weight_decay: float = 0.0
) -> keras.Model:
    """Model ``name`` (logits output); ``weight_decay > 0`` adds L2 on every Conv/Dense kernel."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), num_classes, weight_decay=weight_decay)
