"""`CDLConfig`: how a model is quantized and rate-constrained."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from cdl_tf.quantizers import MODES, SOFTNESS_PARAMS

WEIGHT_ALPHABETS = ("symmetric", "full")
MAX_BITS = 8


def _check_bits(field: str, bits: Optional[int]) -> None:
    if bits is None:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= MAX_BITS:
        raise ValueError(f"CDLConfig.{field} must be an integer in [2, {MAX_BITS}], got {bits!r}")


@dataclasses.dataclass(frozen=True)
class CDLConfig:
    """Quantization and rate settings of a CDL model.

    Attributes:
      weight_bits, activation_bits: alphabet sizes (``b`` bits) of weights and activations.
        ``b`` only bounds the alphabet; the cost that training minimises is the entropy.
      first_layer_bits, last_layer_bits: weight and activation bits of the first and last
        quantized layers (``None``: same as the others).
      layer_bits: per-layer overrides ``{layer name: (weight bits, activation bits)}``.
      skip_layers: names of layers left in float.
      mode: ``cdl`` (forward on ``Q_p`` draws), ``rcdl`` (forward on ``Q_d``) or ``ste``
        (forward on ``Q_u``, gradient of ``Q_d``: uniform QAT without sampling).
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
      lambda_w: loss units per bit per quantized weight (model average).
      lambda_a: loss units per bit per activation value (model average).
      seed: base seed of the ``Q_p`` draws.
    """

    weight_bits: int = 4
    activation_bits: int = 4
    first_layer_bits: Optional[int] = 8
    last_layer_bits: Optional[int] = 8
    layer_bits: Mapping[str, Tuple[int, int]] = dataclasses.field(default_factory=dict)
    skip_layers: Tuple[str, ...] = ()
    mode: str = "cdl"
    weight_window: Optional[int] = 5
    activation_window: Optional[int] = 5
    activation_count_sample: int = 0
    weight_alphabet: str = "symmetric"
    quantize_biases: bool = False
    bias_bits: int = 8
    quantize_activations: bool = True
    init_kappa: float = 4.0
    weight_init_step_scale: float = 1.0
    softness_param: str = "kappa"
    train_softness: bool = True
    train_step: bool = True
    step_grad_scale: bool = True
    lambda_w: float = 0.0
    lambda_a: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for field in ("weight_bits", "activation_bits", "first_layer_bits", "last_layer_bits", "bias_bits"):
            _check_bits(field, getattr(self, field))
        if self.weight_bits is None or self.activation_bits is None:
            raise ValueError("CDLConfig.weight_bits and activation_bits must be set")
        for name, pair in dict(self.layer_bits).items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"CDLConfig.layer_bits[{name!r}] must be (weight_bits, activation_bits), got {pair!r}")
            _check_bits(f"layer_bits[{name!r}][0]", pair[0])
            _check_bits(f"layer_bits[{name!r}][1]", pair[1])
        object.__setattr__(self, "layer_bits", {k: tuple(v) for k, v in dict(self.layer_bits).items()})
        object.__setattr__(self, "skip_layers", tuple(self.skip_layers))
        if self.mode not in MODES:
            raise ValueError(f"CDLConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.softness_param not in SOFTNESS_PARAMS:
            raise ValueError(f"CDLConfig.softness_param must be one of {SOFTNESS_PARAMS}, got {self.softness_param!r}")
        if self.weight_alphabet not in WEIGHT_ALPHABETS:
            raise ValueError(f"CDLConfig.weight_alphabet must be one of {WEIGHT_ALPHABETS}, got {self.weight_alphabet!r}")
        for field in ("weight_window", "activation_window"):
            w = getattr(self, field)
            if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
                raise ValueError(f"CDLConfig.{field} must be a positive integer or None, got {w!r}")
        n = self.activation_count_sample
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"CDLConfig.activation_count_sample must be an integer >= 0, got {n!r}")
        for field in ("init_kappa", "weight_init_step_scale"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"CDLConfig.{field} must be a number > 0, got {v!r}")
        for field in ("lambda_w", "lambda_a"):
            v = getattr(self, field)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"CDLConfig.{field} must be a number >= 0, got {v!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CDLConfig":
        """Build from a mapping (e.g. an ``ml_collections.ConfigDict``), rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown CDLConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def weight_range(self, bits: int) -> Tuple[int, int]:
        """Integer alphabet of weights with ``bits`` bits."""
        half = 2 ** (bits - 1)
        return (-(half - 1), half - 1) if self.weight_alphabet == "symmetric" else (-half, half - 1)

    @staticmethod
    def activation_range(bits: int, unsigned: bool) -> Tuple[int, int]:
        """Integer alphabet of activations: ``{0..2^b-1}`` after a ReLU, else symmetric."""
        return (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
