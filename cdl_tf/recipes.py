"""The configs of the training recipes behind our smallest models, built on an experiment config.

`small_weights` and `hard_phase` turn a config (`cdl_tf.experiment_config.base_config` and the
experiment's changes) into one phase of the recipe, `recipe` joins configs into one config of
several phases (`tools/pipeline.py`), and `small_model_recipe` gives each variant
(`--config=configs/X.py:VARIANT`) of a config file that offers `RECIPE_VARIANTS`.
"""
from typing import Any, Dict

import ml_collections

from cdl_tf.experiment_config import check_variant


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


# What each ablation changes in `recipe_full`: the R-CDL phase as uniform QAT (`ste`, the same
# rate term, from the same float model), or both quantized phases without their rate term.
ABLATIONS = {
    "ablation_ste": {"small": {"mode": "ste"}},
    "ablation_no_rate": {"small": {"cdl.lambda_w": 0.0}, "small_hard": {"cdl.lambda_w": 0.0}},
}

# The competitors run on the same recipe: EPR (`cdl_tf.epr`) in both quantized phases, with the
# same rate weights, steps, schedule and coder.
BASELINES = {
    "baseline_epr": {"small": {"mode": "epr"}, "small_hard": {"mode": "epr"}},
}
_CHANGES = {**ABLATIONS, **BASELINES}

RECIPE_VARIANTS = ("", "float", "small", "small_hard", "recipe", "recipe_full") + tuple(_CHANGES)


def recipe(**phases: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A config of several training phases, run in the order given by one `cdl-train` command
    (`tools/pipeline.py`); each phase continues the one before it. Override a phase's field as
    ``--config.phases.NAME.FIELD=...``."""
    c = ml_collections.ConfigDict()
    c.phase_order = tuple(phases)
    c.phases = ml_collections.ConfigDict(phases)
    return c


def small_model_recipe(c: ml_collections.ConfigDict, variant: str, *, small: Dict[str, Any],
                       hard: Dict[str, Any], cdl: Dict[str, Any],
                       short: Dict[str, int]) -> ml_collections.ConfigDict:
    """The config of one run of the three-run recipe behind our smallest models, or the recipe whole.

    `--config=configs/X.py:VARIANT`, run in this order:
      float       the float model the others fine-tune (12 epochs);
      small       `small_weights(**small)` with the `cdl` fields, `--config.init_from=<float run>`;
      small_hard  `hard_phase(**hard)` of it, `--config.init_from=<small run>`.
    `recipe_full` is the three as one `cdl-train` command (`recipe`); `recipe` the same phases on a
    budget of minutes (``short``: the epochs of each phase); `ablation_ste`, `ablation_no_rate` and
    `baseline_epr` are `recipe_full` with the changes `ABLATIONS` and `BASELINES` name. '' is the
    file's own config.
    """
    check_variant(variant, RECIPE_VARIANTS)
    if variant in ("recipe", "recipe_full") or variant in _CHANGES:
        runs = {name: small_model_recipe(c.copy_and_resolve_references(), name, small=small, hard=hard, cdl=cdl,
                                         short=short) for name in ("float", "small", "small_hard")}
        if variant == "recipe":
            for name, epochs in short.items():
                runs[name].epochs = epochs
        for name, fields in _CHANGES.get(variant, {}).items():
            for field, value in fields.items():
                runs[name].update_from_flattened_dict({field: value})
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
