"""LeNet-300-100 and the Caffe LeNet-5: the MNIST models of the pruning/quantization literature."""
from __future__ import annotations

import tf_keras as keras

from cdl_tf.models.regularizers import kernel_regularizer

layers = keras.layers


def lenet300_100(
    input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10, *, weight_decay: float = 0.0
) -> keras.Model:
    """Flatten, Dense 300 ReLU, Dense 100 ReLU, Dense ``num_classes`` logits."""
    reg = kernel_regularizer(weight_decay)
    inputs = keras.Input(input_shape, name="input")
    x = layers.Flatten(name="flatten")(inputs)
    x = layers.Dense(300, activation="relu", kernel_regularizer=reg, name="fc1")(x)
    x = layers.Dense(100, activation="relu", kernel_regularizer=reg, name="fc2")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet300_100")


def lenet5(
    input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10, *, weight_decay: float = 0.0
) -> keras.Model:
    """Caffe LeNet-5: Conv 20@5x5, MaxPool 2, Conv 50@5x5, MaxPool 2, Dense 500 ReLU, Dense logits.

    Convolutions are ``valid`` with bias and ReLU (no BatchNorm).
    """
    reg = kernel_regularizer(weight_decay)
    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv2D(20, 5, activation="relu", kernel_regularizer=reg, name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(50, 5, activation="relu", kernel_regularizer=reg, name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(500, activation="relu", kernel_regularizer=reg, name="fc1")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet5")
