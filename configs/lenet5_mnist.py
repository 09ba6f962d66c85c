"""LeNet-5 (Caffe variant) on MNIST with CDL.

cdl-train --config=configs/lenet5_mnist.py --workdir=/tmp/lenet5 [--config.mode=rcdl]
"""
from configs.common import base_config


def get_config():
    c = base_config()
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
    return c
