"""Functional tf_keras models returning logits, and the `get_model` registry."""
from cdl_tf.models.lenet import lenet5, lenet300_100
from cdl_tf.models.registry import MODELS, get_model
from cdl_tf.models.resnet import resnet8, resnet18, resnet20, resnet56

__all__ = ["MODELS", "get_model", "lenet300_100", "lenet5", "resnet8", "resnet18", "resnet20", "resnet56"]
