"""ResNets with basic blocks (He et al. 2016): CIFAR ResNet-8/20/56 and ImageNet ResNet-18.

Every convolution is followed by BatchNormalization (so it has no bias) and, except
before an addition, a separate ReLU layer. A shortcut whose shape changes is a
1x1 convolution + BatchNormalization projection. Strided convolutions pad
symmetrically (explicit ZeroPadding2D), as in the reference implementations.
"""
from __future__ import annotations

from typing import Any

import tf_keras as keras

from cdl_tf.models.regularizers import kernel_regularizer

layers = keras.layers
Tensor = Any  # a symbolic tensor of the tf_keras Functional API
Regularizer = keras.regularizers.Regularizer | None
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def resnet8(
    input_shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10, *, weight_decay: float = 0.0
) -> keras.Model:
    """CIFAR ResNet-8: 3 stages of 1 basic block (16/32/64 filters), both shortcut kinds."""
    return cifar_resnet(8, input_shape, num_classes, weight_decay=weight_decay)


def resnet20(
    input_shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10, *, weight_decay: float = 0.0
) -> keras.Model:
    """CIFAR ResNet-20: 3 stages of 3 basic blocks (16/32/64 filters)."""
    return cifar_resnet(20, input_shape, num_classes, weight_decay=weight_decay)


def resnet56(
    input_shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10, *, weight_decay: float = 0.0
) -> keras.Model:
    """CIFAR ResNet-56: 3 stages of 9 basic blocks (16/32/64 filters)."""
    return cifar_resnet(56, input_shape, num_classes, weight_decay=weight_decay)


def cifar_resnet(
    depth: int, input_shape: tuple[int, ...], num_classes: int, *, weight_decay: float = 0.0
) -> keras.Model:
    """CIFAR ResNet of ``depth = 6n + 2``: 3x3 conv 16, 3 stages of ``n`` blocks, GAP, Dense."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    reg = kernel_regularizer(weight_decay)
    inputs = keras.Input(input_shape, name="input")
    x = _conv_bn(inputs, 16, 3, 1, reg, "stem")
    x = layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, (depth - 2) // 6 + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, stride, reg, f"stage{stage}_block{block}")
    return _head(inputs, x, num_classes, reg, f"resnet{depth}")


def resnet18(
    input_shape: tuple[int, ...] = (224, 224, 3), num_classes: int = 1000, *, weight_decay: float = 0.0
) -> keras.Model:
    """ImageNet ResNet-18: 7x7/2 conv 64, 3x3/2 max pool, 4 stages of 2 blocks (64..512), GAP, Dense.

    Downsamples by 32 (224 -> 7); inputs down to 32x32 still give a 1x1 final map.
    """
    reg = kernel_regularizer(weight_decay)
    inputs = keras.Input(input_shape, name="input")
    x = _conv_bn(inputs, 64, 7, 2, reg, "stem")
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in (1, 2):
            stride = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, stride, reg, f"stage{stage}_block{block}")
    return _head(inputs, x, num_classes, reg, "resnet18")


def _conv_bn(
    x: Tensor, filters: int, kernel_size: int, stride: int, reg: Regularizer, name: str, index: str = ""
) -> Tensor:
    """``{name}_conv{index}`` (no bias), then ``{name}_bn{index}``; ``{name}_pad{index}`` before
    a strided convolution with kernel > 1."""
    padding = "same"
    if stride > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad{index}")(x)
        padding = "valid"
    x = layers.Conv2D(
        filters, kernel_size, strides=stride, padding=padding, use_bias=False,
        kernel_initializer="he_normal", kernel_regularizer=reg, name=f"{name}_conv{index}",
    )(x)
    bn = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn{index}")
    return bn(x)


def _basic_block(x: Tensor, filters: int, stride: int, reg: Regularizer, name: str) -> Tensor:
    """conv1-bn1-relu1-conv2-bn2, plus the identity or a 1x1 projection shortcut, then relu2."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, reg, f"{name}_shortcut")
    x = _conv_bn(x, filters, 3, stride, reg, name, "1")
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv_bn(x, filters, 3, 1, reg, name, "2")
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_relu2")(x)


def _head(inputs: Tensor, x: Tensor, num_classes: int, reg: Regularizer, name: str) -> keras.Model:
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
