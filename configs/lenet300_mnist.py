"""LeNet-300-100 on MNIST with CDL.

cdl-train --config=configs/lenet300_mnist.py --workdir=/tmp/lenet300

Variants (`--config=configs/lenet300_mnist.py:VARIANT`), run in this order:
  float       the float model the others fine-tune (12 epochs).
  small       R-CDL on the weights, `--config.init_from=<float run>` (20 epochs).
  small_hard  its hard phase, `--config.init_from=<small run>` (5 epochs).
"""
from configs import common

VARIANTS = ("", "float", "small", "small_hard")


def get_config(variant: str = ""):
    c = common.base_config()
    c.model = "lenet300_100"
    c.dataset = "mnist"
    c.epochs = 20
    c.batch_size = 128
    c.optimizer.learning_rate = 2e-3
    c.cdl.lambda_w = 0.02
    c.cdl.lambda_a = 0.005
    c.rate_warmup_epochs = 2
    if variant not in VARIANTS:
        raise common.unknown_variant(variant, VARIANTS)
    if variant == "float":
        c.mode = "float"
        c.epochs = 12
    elif variant:
        common.small_weights(c, lambda_w=0.2, weight_init_step_scale=2.0, learning_rate=3e-4, weight_decay=1e-4)
        c.cdl.first_layer_bits = 0  # the first layer holds 88% of the weights
        if variant == "small_hard":
            common.hard_phase(c, lambda_w=0.2, learning_rate=1e-4)
    return c
