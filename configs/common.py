"""Defaults shared by every experiment config; each config overrides what it needs."""
from typing import Any, Dict

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Fields of a training run (validated by `cdl_tf.training.validate_config`)."""
    c = ml_collections.ConfigDict()
    c.model = "lenet5"
    c.dataset = "mnist"
    c.data_dir = ""  # '' -> $CDL_DATA_DIR, else TFDS
    c.train_subset = 0  # > 0: train on this many examples only
    c.test_subset = 0
    # Training images held out as the validation split (cdl_tf.data.make_dataset; its default too),
    # on which training reports; 0: none, training then shows no validation metrics.
    c.validation_size = 5000
    c.augment = "auto"  # auto | on | off: training images; auto -> the dataset's default (on for CIFAR)
    c.mode = "cdl"  # float | cdl | rcdl | ste | tfmot8
    c.epochs = 20
    c.batch_size = 128
    c.seed = 0
    c.init_from = ""  # workdir of a finished run whose model weights start this one

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"  # adam | sgd
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9  # sgd only
    c.optimizer.schedule = "cosine"  # cosine | constant
    c.optimizer.warmup_epochs = 0
    c.optimizer.weight_decay = 0.0  # L2 on conv/dense kernels only (never on q, alpha)

    c.cdl = ml_collections.ConfigDict()  # CDLConfig fields but `mode`
    c.cdl.weight_bits = 4
    c.cdl.activation_bits = 4
    c.cdl.first_layer_bits = 8  # 0: same as weight_bits / activation_bits
    c.cdl.last_layer_bits = 8
    c.cdl.weight_window = 5
    c.cdl.activation_window = 5
    c.cdl.activation_count_sample = 0  # > 0: activation rates from this many values drawn per step (fast)
    c.cdl.weight_alphabet = "symmetric"
    c.cdl.quantize_biases = False
    c.cdl.bias_bits = 8
    c.cdl.quantize_activations = True
    c.cdl.init_kappa = 4.0
    c.cdl.weight_init_step_scale = 1.0  # > 1: start the weights on a coarser grid than LSQ's
    c.cdl.softness_param = "kappa"
    c.cdl.train_softness = True
    c.cdl.train_step = True
    c.cdl.step_grad_scale = True
    c.cdl.skip_layers = ()  # names of layers kept in float
    c.cdl.layer_bits = {}  # {layer name: (weight bits, activation bits)}
    c.cdl.lambda_w = 0.0
    c.cdl.lambda_a = 0.0
    c.rate_warmup_epochs = 0  # ramp lambda_w, lambda_a linearly over these epochs
    c.final_kappa = 0.0  # > 0: anneal kappa from cdl.init_kappa to this (needs cdl.train_softness=False)

    c.distill = ml_collections.ConfigDict()  # knowledge distillation (cdl_tf.distillation)
    c.distill.teacher = ""  # workdir of a finished run whose model is the teacher; '' -> no distillation
    c.distill.weight = 0.5  # a: (1 - a) hard-label loss + a soft-label loss
    c.distill.temperature = 4.0

    c.bn_reestimate_steps = 50  # batches used to re-estimate BatchNorm before evaluation
    c.strategy = "default"  # default | mirrored | multiworker | tpu
    c.split_at = ""  # an activation site (layer name): report the coded bits of its activation per example
    c.verbose = 2
    return c


def small_weights(c: ml_collections.ConfigDict, *, lambda_w: float, weight_init_step_scale: float,
                  learning_rate: float, weight_decay: float, epochs: int = 20) -> None:
    """R-CDL on the weights only: the smallest coded file at a given error.

    Fine-tunes a float run (`--config.init_from`). The weights start on a grid
    `weight_init_step_scale` times LSQ's, kappa anneals 4 -> 32 (fixed otherwise), the rate
    weight ramps in over the first epoch; biases are quantized too; activations stay 8-bit
    (calibrated at export, not coded).
    """
    c.mode = "rcdl"
    c.epochs = epochs
    c.optimizer.learning_rate = learning_rate
    c.optimizer.weight_decay = weight_decay
    c.rate_warmup_epochs = 1
    c.cdl.train_softness = False
    c.cdl.init_kappa = 4.0
    c.final_kappa = 32.0
    c.cdl.weight_init_step_scale = weight_init_step_scale
    c.cdl.quantize_biases = True
    c.cdl.quantize_activations = False
    c.cdl.lambda_w = lambda_w
    c.cdl.lambda_a = 0.0


def hard_phase(c: ml_collections.ConfigDict, *, lambda_w: float, learning_rate: float,
               epochs: int = 5) -> None:
    """Continue a CDL run (`--config.init_from`, same quantization plan) on the `Q_u` forward it ships with.

    Mode `ste` with the rate term kept at `lambda_w` and kappa fixed at 4 for its gradient:
    closes the gap between the soft model trained so far and the hard model that is exported.
    """
    c.mode = "ste"
    c.epochs = epochs
    c.optimizer.learning_rate = learning_rate
    c.rate_warmup_epochs = 0
    c.final_kappa = 0.0
    c.cdl.init_kappa = 4.0
    c.cdl.lambda_w = lambda_w


RECIPE_VARIANTS = ("", "float", "small", "small_hard", "recipe", "recipe_full")


def recipe(**phases: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A config of several training phases, run in the order given by one `cdl-train` command
    (`tools/pipeline.py`); each phase continues the one before it. Override a phase's field as
    ``--config.phases.NAME.FIELD=...``."""
    c = ml_collections.ConfigDict()
    c.phase_order = tuple(phases)
    c.phases = ml_collections.ConfigDict(phases)
    return c


def check_variant(variant: str, variants: tuple) -> None:
    """Reject a `--config=file.py:variant` the file does not define."""
    if variant not in variants:
        raise ValueError(f"unknown config variant {variant!r}; this config defines {variants}")


def small_model_recipe(c: ml_collections.ConfigDict, variant: str, *, small: Dict[str, Any],
                       hard: Dict[str, Any], cdl: Dict[str, Any],
                       short: Dict[str, int]) -> ml_collections.ConfigDict:
    """The config of one run of the three-run recipe behind our smallest models, or the recipe whole.

    `--config=configs/X.py:VARIANT`, run in this order:
      float       the float model the others fine-tune (12 epochs);
      small       `small_weights(**small)` with the `cdl` fields, `--config.init_from=<float run>`;
      small_hard  `hard_phase(**hard)` of it, `--config.init_from=<small run>`.
    `recipe_full` is the three as one `cdl-train` command (`recipe`); `recipe` the same phases on a
    budget of minutes (``short``: the epochs of each phase). '' is the file's own config.
    """
    check_variant(variant, RECIPE_VARIANTS)
    if variant in ("recipe", "recipe_full"):
        runs = {name: small_model_recipe(c.copy_and_resolve_references(), name, small=small, hard=hard, cdl=cdl,
                                         short=short) for name in ("float", "small", "small_hard")}
        if variant == "recipe":
            for name, epochs in short.items():
                runs[name].epochs = epochs
        return recipe(**runs)
    if variant == "float":
        c.mode = "float"
        c.epochs = 12
    elif variant:
        small_weights(c, **small)
        c.cdl.update(cdl)
        if variant == "small_hard":
            hard_phase(c, **hard)
    return c
