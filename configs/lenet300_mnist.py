"""LeNet-300-100 on MNIST with CDL.

cdl-train --config=configs/lenet300_mnist.py --workdir=/tmp/lenet300
"""
from configs.common import base_config


def get_config():
    c = base_config()
    c.model = "lenet300_100"
    c.dataset = "mnist"
    c.epochs = 20
    c.batch_size = 128
    c.optimizer.learning_rate = 2e-3
    c.cdl.lambda_w = 0.02
    c.cdl.lambda_a = 0.005
    c.rate_warmup_epochs = 2
    return c
