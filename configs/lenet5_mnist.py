"""LeNet-5 (Caffe variant) on MNIST with CDL.

cdl-train --config=configs/lenet5_mnist.py --workdir=/tmp/lenet5 [--config.mode=rcdl]

Variants (`--config=configs/lenet5_mnist.py:VARIANT`), run in this order:
  float       the float model the others fine-tune (12 epochs).
  small       R-CDL on the weights, `--config.init_from=<float run>` (20 epochs).
  small_hard  its hard phase, `--config.init_from=<small run>` (5 epochs).
"""
from configs import common

VARIANTS = ("", "float", "small", "small_hard")


def get_config(variant: str = ""):
    c = common.base_config()
    c.model = "lenet5"
    c.dataset = "mnist"
    c.epochs = 15
    c.batch_size = 128
    c.optimizer.learning_rate = 2e-3
    c.cdl.weight_bits = 4
    c.cdl.activation_bits = 4
    c.cdl.lambda_w = 0.02
    c.cdl.lambda_a = 0.005
    c.rate_warmup_epochs = 2
    if variant not in VARIANTS:
        raise common.unknown_variant(variant, VARIANTS)
    if variant == "float":
        c.mode = "float"
        c.epochs = 12
    elif variant:
        common.small_weights(c, lambda_w=0.5, weight_init_step_scale=3.0, learning_rate=3e-4, weight_decay=1e-4)
        c.cdl.last_layer_bits = 0  # the 500 x 10 classifier at 4 bits too
        if variant == "small_hard":
            common.hard_phase(c, lambda_w=1.5, learning_rate=3e-4)
    return c
