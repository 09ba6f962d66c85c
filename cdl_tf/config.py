"""`CDLConfig`: how a model is quantized and rate-constrained."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

from cdl_tf.experiment_config import CDL_MODES, CDLOptions, ConfigError, ExperimentConfig, one_of, setting


@dataclasses.dataclass(frozen=True)
class CDLConfig(CDLOptions):
    """Quantization and rate settings of a CDL model: the fields of `CDLOptions` (the ``cdl``
    section of an experiment config, where their types, defaults and checks are declared) and

    Attributes:
      mode: ``cdl`` (forward on ``Q_p`` draws), ``rcdl`` (forward on ``Q_d``) or ``ste``
        (forward on ``Q_u``, gradient of ``Q_d``: uniform QAT without sampling), or ``epr`` (as
        ``ste``, with EPR's learned probability model under additive noise as the weights' rate:
        `cdl_tf.epr`; weights only).
      seed: base seed of the ``Q_p`` draws.

    A bad field raises `ConfigError` (a `ValueError`) naming it: ``CDLConfig.weight_bits: ...``.
    """

    mode: str = setting("cdl", one_of(CDL_MODES))
    seed: int = setting(0)

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ConfigError as e:
            raise ConfigError(f"CDLConfig.{e}") from None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CDLConfig":
        """Build from a mapping (e.g. an ``ml_collections.ConfigDict``), rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown CDLConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def from_experiment(cls, config: ExperimentConfig) -> "CDLConfig":
        """The quantizers of a training run: its ``cdl`` section, its mode (``cdl`` where the
        mode is ``float`` or ``tfmot8``, which build no CDL quantizers) and its seed."""
        mode = config.mode if config.mode in CDL_MODES else "cdl"
        return cls(**dataclasses.asdict(config.cdl), mode=mode, seed=config.seed)

    def weight_range(self, bits: int) -> Tuple[int, int]:
        """Integer alphabet of weights with ``bits`` bits."""
        half = 2 ** (bits - 1)
        return (-(half - 1), half - 1) if self.weight_alphabet == "symmetric" else (-half, half - 1)

    @staticmethod
    def activation_range(bits: int, unsigned: bool) -> Tuple[int, int]:
        """Integer alphabet of activations: ``{0..2^b-1}`` after a ReLU, else symmetric."""
        return (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
