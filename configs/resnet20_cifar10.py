"""ResNet-20 on CIFAR-10 with CDL, a schedule a 2-core CPU can run.

cdl-train --config=configs/resnet20_cifar10.py --workdir=/tmp/resnet20

Variants (`--config=configs/resnet20_cifar10.py:VARIANT`):
  float  the float model the CDL runs fine-tune (30 epochs).
"""
from cdl_tf.experiment_config import base_config, check_variant

VARIANTS = ("", "float")


def get_config(variant: str = ""):
    c = base_config()
    c.model = "resnet20"
    c.dataset = "cifar10"
    c.epochs = 20
    c.batch_size = 128
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.warmup_epochs = 1
    c.optimizer.weight_decay = 1e-4
    c.cdl.weight_bits = 4
    c.cdl.activation_bits = 4
    c.cdl.lambda_w = 0.01
    c.cdl.lambda_a = 0.002
    c.rate_warmup_epochs = 3
    check_variant(variant, VARIANTS)
    if variant == "float":
        c.mode = "float"
        c.epochs = 30
    return c
