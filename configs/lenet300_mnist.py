"""LeNet-300-100 on MNIST with CDL.

cdl-train --config=configs/lenet300_mnist.py --workdir=/tmp/lenet300

Variants `float`, `small`, `small_hard` (`--config=configs/lenet300_mnist.py:small`): the
three-run recipe of `cdl_tf.recipes.small_model_recipe`; `recipe_full` runs the three as one
command, `recipe` on a short budget, `ablation_ste`, `ablation_no_rate` and `baseline_epr` are
`recipe_full` with the changes of `cdl_tf.recipes.ABLATIONS` and `BASELINES`.
"""
from cdl_tf.experiment_config import base_config
from cdl_tf.recipes import small_model_recipe


def get_config(variant: str = ""):
    c = base_config()
    c.model = "lenet300_100"
    c.dataset = "mnist"
    c.epochs = 20
    c.batch_size = 128
    c.optimizer.learning_rate = 2e-3
    c.cdl.lambda_w = 0.02
    c.cdl.lambda_a = 0.005
    c.rate_warmup_epochs = 2
    return small_model_recipe(
        c, variant,
        small=dict(lambda_w=0.2, weight_init_step_scale=2.0, learning_rate=3e-4, weight_decay=1e-4),
        hard=dict(lambda_w=0.2, learning_rate=1e-4),
        short=dict(float=4, small=6, small_hard=3),  # epochs of each phase of the `recipe` variant
        cdl=dict(first_layer_bits=0),  # the first layer holds 88% of the weights
    )
