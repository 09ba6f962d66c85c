"""ResNet-20 on CIFAR-10 with CDL, a schedule a 2-core CPU can run.

cdl-train --config=configs/resnet20_cifar10.py --workdir=/tmp/resnet20

Variants (`--config=configs/resnet20_cifar10.py:VARIANT`):
  float   the float model the CDL runs fine-tune (30 epochs).
  long    one command for the long schedule: float for 60 epochs, then R-CDL on weights and
          activations (activation counts estimated from 4,096 values per tensor), then a hard
          phase on the `Q_u` forward that is exported (`cdl_tf.recipes.hard_phase`).
"""
from cdl_tf.experiment_config import base_config, check_variant
from cdl_tf.recipes import hard_phase, recipe

VARIANTS = ("", "float", "long")


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
    elif variant == "long":
        return recipe(float=_long_float(c.copy_and_resolve_references()),
                      rcdl=_long_rcdl(c.copy_and_resolve_references()),
                      hard=_long_hard(c.copy_and_resolve_references()))
    return c


def _long_float(c):
    c.mode = "float"
    c.epochs = 60
    return c


def _long_rcdl(c):
    """R-CDL from the float model: a grid twice LSQ's, kappa 4 -> 32, Adam, strong rate terms."""
    c.mode = "rcdl"
    c.epochs = 8
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_epochs = 0
    c.optimizer.weight_decay = 0.0
    c.rate_warmup_epochs = 1
    c.cdl.train_softness = False
    c.cdl.init_kappa = 4.0
    c.final_kappa = 32.0
    c.cdl.weight_init_step_scale = 2.0
    c.cdl.activation_window = 3
    c.cdl.activation_count_sample = 4096
    c.cdl.lambda_w = 1.0
    c.cdl.lambda_a = 2.0
    return c


def _long_hard(c):
    c = _long_rcdl(c)
    hard_phase(c, lambda_w=2.0, learning_rate=2e-4, epochs=6)
    return c
