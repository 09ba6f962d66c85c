"""The experiment config of a training run: every field's type, default, check and meaning.

`ExperimentConfig` and its sections (`OptimizerConfig`, `CDLOptions`, `DistillConfig`) are the
one schema of the ``ml_collections`` configs of ``configs/*.py`` and of their
``--config.FIELD=...`` overrides:

* `base_config` is the ``ConfigDict`` of the defaults, which every experiment config starts from;
* `ExperimentConfig.from_config` checks a ``ConfigDict`` before anything runs
  (`cdl_tf.training.validate_config`); an error names the field and the bad value;
* `Section.later_fields` gives what a run config written before a field existed means where
  it lacks the field (`cdl_tf.run_config.with_later_fields`);
* `cdl_tf.CDLConfig` is `CDLOptions` with the training mode and seed.

A field is one dataclass field: its annotation is its type, its `setting` holds its default,
the check of its value and, for a field added after runs were first written, its older value.

This module does not import TensorFlow: the command-line tools read configs before they start it.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import json
import os
import typing
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import ml_collections

CDL_MODES = ("cdl", "rcdl", "ste", "epr")  # the modes that train CDL quantizers (`CDLConfig.mode`)
MODES = ("float", *CDL_MODES, "tfmot8")  # every training mode (`config.mode`)
SOFTNESS_PARAMS = ("kappa", "alpha")  # the trained log softness: kappa = alpha q^2, or alpha
WEIGHT_ALPHABETS = ("symmetric", "full")
MAX_BITS = 8
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
AUGMENT = {"auto": None, "on": True, "off": False}  # config.augment -> make_dataset's `augment`

Check = Callable[[Any], Optional[str]]  # what is wrong with a value of the field's type ("must be > 0"), or None
_IN_EVERY_RUN = object()  # the `older` of a field that every run config holds


class ConfigError(ValueError):
    """A config field is missing, unknown, of the wrong type or out of range."""


def setting(default: Any, check: Optional[Check] = None, *, older: Any = _IN_EVERY_RUN) -> Any:
    """A config field: its ``default``, the ``check`` of its value (its type is its annotation)
    and, if run configs written before it existed lack it, the value they mean (``older``)."""
    metadata = {"check": check, "older": older}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(kind: type, *, later: bool = False) -> Any:
    """A field that is a `Section` of the config; a ``later`` section is absent from run
    configs written before it existed, which mean its defaults."""
    return dataclasses.field(default_factory=kind, metadata={"older": kind.defaults() if later else _IN_EVERY_RUN})


def one_of(options: Tuple[Any, ...]) -> Check:
    return lambda v: None if v in options else f"must be one of {tuple(options)}"


def at_least(lo: float) -> Check:
    return lambda v: None if v >= lo else f"must be >= {lo}"


def above(lo: float) -> Check:
    return lambda v: None if v > lo else f"must be > {lo}"


def within(lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> Check:
    """In ``[lo, hi]``; ``open_lo``, ``open_hi``: without that end."""

    def check(v: float) -> Optional[str]:
        inside = (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi)
        return None if inside else f"must be in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"

    return check


def _known(what: str, module: str, name: str) -> Check:
    """One of the names ``module.name``, imported when a value is checked (it imports TensorFlow)."""

    def check(value: str) -> Optional[str]:
        known = sorted(getattr(importlib.import_module(module), name))
        return None if value in known else f"unknown {what}; known: {', '.join(known)}"

    return check


def is_finished_run(workdir: str) -> bool:
    """Whether ``workdir`` holds a finished training run (its ``config.json`` and ``model.keras``)."""
    return all(os.path.isfile(os.path.join(workdir, f)) for f in ("config.json", "model.keras"))


def _holds_model(path: str) -> Optional[str]:
    return None if not path or os.path.isfile(os.path.join(path, "model.keras")) else "holds no model.keras"


def _finished_run(path: str) -> Optional[str]:
    return None if not path or is_finished_run(path) else "is not a finished run (no config.json and model.keras)"


_BITS = within(2, MAX_BITS)


def _edge_bits(bits: int) -> Optional[str]:
    return None if bits == 0 or _BITS(bits) is None else f"must be in [2, {MAX_BITS}], or 0 (as the other layers)"


def _layer_bits(layers: Mapping[str, Tuple[int, int]]) -> Optional[str]:
    bad = [name for name, pair in layers.items() if any(_BITS(b) for b in pair)]
    return f"the bits of layer {bad[0]!r} must be in [2, {MAX_BITS}]" if bad else None


# Field types are annotations built of these, Optional, Tuple and Dict.
_SCALARS = {bool: "True or False", int: "an integer", float: "a number", str: "a string", type(None): "None"}


def _is_a(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_is_a(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_is_a(v, args[0]) for v in value)
        return len(value) == len(args) and all(_is_a(v, a) for v, a in zip(value, args))
    if origin is dict:
        return isinstance(value, Mapping) and all(_is_a(k, args[0]) and _is_a(v, args[1]) for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Union:
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    return _SCALARS.get(hint) or str(hint).replace("typing.", "")


def _normalized(value: Any, hint: Any) -> Any:
    """``value`` (of type ``hint``) with tuples for its sequences and dicts for its mappings."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return _normalized(value, next(arg for arg in args if _is_a(value, arg)))
    if origin is tuple:
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else args
        return tuple(_normalized(v, k) for v, k in zip(value, kinds))
    if origin is dict:
        return {k: _normalized(v, args[1]) for k, v in value.items()}
    return value


@functools.lru_cache(maxsize=None)
def _hints(kind: type) -> Dict[str, Any]:
    return typing.get_type_hints(kind)


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Section)


@dataclasses.dataclass(frozen=True)
class Section:
    """Fields of a config (or of one of its sections), each checked when it is built.

    Errors name the field relative to the section (``name: must be ...``); `from_config` and
    `cdl_tf.CDLConfig` prefix them with where the section is.
    """

    ELSEWHERE: ClassVar[Mapping[str, str]] = {}  # names that are fields elsewhere -> where

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), _hints(type(self))[f.name]
            if _is_section(hint):
                if not isinstance(value, hint):
                    raise ConfigError(f"{f.name}: must be a {hint.__name__}, got {value!r}")
                continue
            if not _is_a(value, hint):
                raise ConfigError(f"{f.name}: must be {_describe(hint)}, got {value!r}")
            check = f.metadata.get("check")
            problem = check(value) if check and value is not None else None
            if problem:
                raise ConfigError(f"{f.name}: {problem}, got {value!r}")
            object.__setattr__(self, f.name, _normalized(value, hint))
        self._check_together()

    def _check_together(self) -> None:
        """Raise `ConfigError` where fields, each valid on its own, do not go together."""

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """``{field: default}``, a section as the dict of its own."""
        out = {}
        for f in dataclasses.fields(cls):
            kind = _hints(cls)[f.name]
            if _is_section(kind):
                out[f.name] = kind.defaults()
            else:
                out[f.name] = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        return out

    @classmethod
    def later_fields(cls) -> Dict[str, Any]:
        """``{dotted field name: value}`` of the fields that run configs written before they existed
        lack, each at the value such a run means (a later section: its defaults)."""
        out = {}
        for f in dataclasses.fields(cls):
            kind, older = _hints(cls)[f.name], f.metadata.get("older", _IN_EVERY_RUN)
            if older is not _IN_EVERY_RUN:
                out[f.name] = copy.deepcopy(older)
            elif _is_section(kind):
                out.update({f"{f.name}.{name}": value for name, value in kind.later_fields().items()})
        return out

    @classmethod
    def _from_dict(cls, values: Mapping[str, Any]) -> "Section":
        """The section of the mapping ``values``, which gives every field and no other."""
        names = [f.name for f in dataclasses.fields(cls)]
        for name in values:
            if name not in names:
                raise ConfigError(f"{name}: unknown field; {cls.ELSEWHERE.get(name) or 'known: ' + ', '.join(names)}")
        for name in names:
            if name not in values:
                raise ConfigError(f"{name}: missing")
        fields = dict(values)
        for name in names:
            kind = _hints(cls)[name]
            if not _is_section(kind):
                continue
            if not isinstance(values[name], Mapping):
                raise ConfigError(f"{name}: must be a section of fields, got {values[name]!r}")
            try:
                fields[name] = kind._from_dict(values[name])
            except ConfigError as e:
                raise ConfigError(f"{name}.{e}") from None
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Section):
    """``config.optimizer``.

    Attributes:
      name: ``adam`` or ``sgd`` (Nesterov momentum).
      learning_rate: peak learning rate.
      momentum: of ``sgd`` only.
      schedule: ``cosine`` decay to 0 over the run, or ``constant``.
      warmup_epochs: linear warm-up from ``learning_rate / 10`` (``cosine`` only).
      weight_decay: L2 on conv/dense kernels only (never on ``q``, ``alpha``).
    """

    name: str = setting("adam", one_of(OPTIMIZERS))
    learning_rate: float = setting(1e-3, above(0))
    momentum: float = setting(0.9, within(0, 1, open_hi=True))
    schedule: str = setting("cosine", one_of(SCHEDULES))
    warmup_epochs: int = setting(0, at_least(0))
    weight_decay: float = setting(0.0, at_least(0))


@dataclasses.dataclass(frozen=True)
class CDLOptions(Section):
    """``config.cdl``: how the model is quantized and rate-constrained (`cdl_tf.CDLConfig` but
    its ``mode`` and ``seed``, which are ``config.mode`` and ``config.seed``).

    Attributes:
      weight_bits, activation_bits: alphabet sizes (``b`` bits) of weights and activations.
        ``b`` only bounds the alphabet; the cost that training minimises is the entropy.
      first_layer_bits, last_layer_bits: weight and activation bits of the first and last
        quantized layers (``0`` or ``None``: same as the others; read as ``None``).
      weight_window, activation_window: evaluate the CPMF on this many nearest levels
        (``None``: the whole alphabet).
      activation_count_sample: ``n > 0`` estimates each activation tensor's soft index counts
        (so its rate) from ``n`` of its values drawn at random each step, scaled to the tensor;
        its rate gradient still reaches every value (`cdl_tf.ops.quantize_with_counts`).
        ``0``: exact counts over the whole tensor.
      weight_alphabet: ``symmetric`` ``{-(2^(b-1)-1) .. 2^(b-1)-1}`` or ``full``
        ``{-2^(b-1) .. 2^(b-1)-1}``.
      quantize_biases: also quantize (and rate-constrain) the biases of quantized layers,
        with ``bias_bits`` bits, as weights.
      quantize_activations: also quantize activations (after ReLU/ReLU6: unsigned alphabet;
        other outputs that reach no further quantization site: signed).
      init_kappa: initial hardness ``kappa = alpha q^2`` of every quantizer.
      weight_init_step_scale: multiplies the weights' initial step ``q_0`` (LSQ's
        ``2 mean|theta| / sqrt(2^(b-1))``); above 1 starts on a coarser grid, at a lower rate.
      softness_param: train ``log kappa`` or ``log alpha``.
      train_softness, train_step: whether ``alpha``/``kappa`` and ``q`` are trained.
      step_grad_scale: scale the gradient of ``log q`` by ``1/sqrt(N (2^(b-1)))`` (LSQ).
      skip_layers: names of layers left in float.
      layer_bits: per-layer overrides ``{layer name: (weight bits, activation bits)}``.
      lambda_w: loss units per bit per quantized weight (model average).
      lambda_a: loss units per bit per activation value (model average).
      distortion_weight: ``mu`` of the rate-distortion objective's distortion term
        ``mu/2 sum_i F_i (Q_u(theta_i) - theta_i)^2`` on the quantized weights, ``F`` their
        diagonal Fisher at the float model ``init_from`` (`cdl_tf.rate_distortion`); ``0``: off.
      fisher_examples: training examples whose per-example gradients estimate ``F``.
    """

    ELSEWHERE: ClassVar[Mapping[str, str]] = {"mode": "the training mode is config.mode",
                                               "seed": "the seed is config.seed"}

    weight_bits: int = setting(4, _BITS)
    activation_bits: int = setting(4, _BITS)
    first_layer_bits: Optional[int] = setting(8, _edge_bits)
    last_layer_bits: Optional[int] = setting(8, _edge_bits)
    weight_window: Optional[int] = setting(5, at_least(1))
    activation_window: Optional[int] = setting(5, at_least(1))
    activation_count_sample: int = setting(0, at_least(0), older=0)  # older runs: exact counts
    weight_alphabet: str = setting("symmetric", one_of(WEIGHT_ALPHABETS))
    quantize_biases: bool = setting(False, older=False)
    bias_bits: int = setting(8, _BITS, older=8)
    quantize_activations: bool = setting(True)
    init_kappa: float = setting(4.0, above(0))
    weight_init_step_scale: float = setting(1.0, above(0), older=1.0)
    softness_param: str = setting("kappa", one_of(SOFTNESS_PARAMS))
    train_softness: bool = setting(True)
    train_step: bool = setting(True)
    step_grad_scale: bool = setting(True)
    skip_layers: Tuple[str, ...] = setting((), older=())
    layer_bits: Dict[str, Tuple[int, int]] = setting({}, _layer_bits, older={})
    lambda_w: float = setting(0.0, at_least(0))
    lambda_a: float = setting(0.0, at_least(0))
    distortion_weight: float = setting(0.0, at_least(0), older=0.0)
    fisher_examples: int = setting(256, above(0), older=256)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("first_layer_bits", "last_layer_bits"):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, None)


@dataclasses.dataclass(frozen=True)
class DistillConfig(Section):
    """``config.distill``: knowledge distillation (`cdl_tf.distillation`).

    Attributes:
      teacher: workdir of a finished run (of the same dataset) whose model is the teacher;
        ``''``: no distillation.
      weight: ``a`` of the loss ``(1 - a)`` hard-label loss ``+ a`` soft-label loss.
      temperature: of the soft labels.
    """

    teacher: str = setting("", _finished_run)
    weight: float = setting(0.5, within(0, 1, open_lo=True))
    temperature: float = setting(4.0, above(0))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(Section):
    """A training run (`cdl_tf.training.train_and_evaluate`), as `from_config` reads it.

    Attributes:
      model, dataset: names in `cdl_tf.models.MODELS` and `cdl_tf.data.info.DATASETS`.
      data_dir: ``''``: ``$CDL_DATA_DIR``, else TFDS.
      train_subset, test_subset: ``> 0``: use this many examples only.
      validation_size: training images held out as the validation split
        (`cdl_tf.data.make_dataset`, whose default is the same), on which training reports;
        ``0``: none, training then shows no validation metrics (as runs made before the field).
      augment: training images: ``on``, ``off`` or ``auto`` (the dataset's default: on for CIFAR).
      mode: one of `MODES`: ``float``, the CDL modes `CDL_MODES` (``cdl``, ``rcdl``, ``ste``,
        ``epr``: `CDLConfig.mode`) or ``tfmot8`` (TF-MOT 8-bit QAT).
      seed: of the weights' initialisation, the data order and the ``Q_p`` draws.
      init_from: workdir of a finished run whose model weights start this one.
      rate_warmup_epochs: ramp ``lambda_w``, ``lambda_a`` linearly over these epochs.
      final_kappa: ``> 0``: anneal kappa from ``cdl.init_kappa`` to this (needs
        ``cdl.train_softness=False``).
      bn_reestimate_steps: batches used to re-estimate BatchNorm before evaluation.
      strategy: the `tf.distribute` strategy (`cdl_tf.distribute.STRATEGIES`).
      split_at: an activation site (layer name): report the coded bits of its activation per example.
      verbose: of Keras ``fit``.
    """

    model: str = setting("lenet5", _known("model", "cdl_tf.models", "MODELS"))
    dataset: str = setting("mnist", _known("dataset", "cdl_tf.data.info", "DATASETS"))
    data_dir: str = setting("")
    train_subset: int = setting(0, at_least(0))
    test_subset: int = setting(0, at_least(0))
    validation_size: int = setting(5000, at_least(0), older=0)  # older runs trained on every training image
    augment: str = setting("auto", one_of(tuple(AUGMENT)), older="auto")
    mode: str = setting("cdl", one_of(MODES))
    epochs: int = setting(20, above(0))
    batch_size: int = setting(128, above(0))
    seed: int = setting(0, at_least(0))
    init_from: str = setting("", _holds_model)
    optimizer: OptimizerConfig = section(OptimizerConfig)
    cdl: CDLOptions = section(CDLOptions)
    rate_warmup_epochs: int = setting(0, at_least(0))
    final_kappa: float = setting(0.0, at_least(0), older=0.0)
    distill: DistillConfig = section(DistillConfig, later=True)
    bn_reestimate_steps: int = setting(50, at_least(0))
    strategy: str = setting("default", _known("strategy", "cdl_tf.distribute", "STRATEGIES"))
    split_at: str = setting("", older="")
    verbose: int = setting(2, one_of((0, 1, 2)))

    @classmethod
    def from_config(cls, config: Any) -> "ExperimentConfig":
        """The checked config of ``config`` (an ``ml_collections.ConfigDict`` or a mapping);
        `ConfigError` names the first missing, unknown or bad field (``config.a.b: ...``)."""
        values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
        if not isinstance(values, Mapping):
            raise ConfigError(f"config: must be a ConfigDict or a mapping, got {config!r}")
        try:
            return cls._from_dict(values)
        except ConfigError as e:
            raise ConfigError(f"config.{e}") from None

    def _check_together(self) -> None:
        from cdl_tf.data.info import dataset_info  # TensorFlow: only once a config is checked

        num_train = dataset_info(self.dataset).num_train
        v = self.validation_size
        _require(v < num_train, "validation_size",
                 f"must be in [0, {num_train}) ({self.dataset} has {num_train} training images), got {v!r}")
        _require(self.train_subset <= num_train - v, "train_subset",
                 f"must be <= {num_train - v}, the training images left by validation_size={v}, got {self.train_subset}")
        _require(self.optimizer.warmup_epochs < self.epochs, "optimizer.warmup_epochs",
                 f"must be an integer in [0, epochs={self.epochs}), got {self.optimizer.warmup_epochs!r}")
        _require(not self.final_kappa or (not self.cdl.train_softness and self.cdl.softness_param == "kappa"),
                 "final_kappa", "annealing kappa needs cdl.train_softness=False and cdl.softness_param='kappa'")
        _require(self.mode != "epr" or not self.cdl.quantize_activations, "cdl.quantize_activations",
                 "mode 'epr' codes weights only; set cdl.quantize_activations=False")
        _require(not self.split_at or (self.mode in CDL_MODES and self.cdl.quantize_activations), "split_at",
                 f"needs a CDL mode ({', '.join(CDL_MODES)}) with quantized activations")
        if self.distill.teacher:
            with open(os.path.join(self.distill.teacher, "config.json")) as f:
                teacher = json.load(f)["dataset"]
            _require(teacher == self.dataset, "distill.teacher",
                     f"the teacher was trained on {teacher!r}, this run on {self.dataset!r}")


def _require(cond: bool, field: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"{field}: {problem}")


def base_config() -> ml_collections.ConfigDict:
    """The ``ConfigDict`` of `ExperimentConfig`'s defaults, which every experiment config changes."""
    return ml_collections.ConfigDict(ExperimentConfig.defaults())


def check_variant(variant: str, variants: Tuple[str, ...]) -> None:
    """Reject a ``--config=file.py:variant`` the file does not define."""
    if variant not in variants:
        raise ValueError(f"unknown config variant {variant!r}; this config defines {variants}")
