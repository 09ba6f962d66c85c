"""cdl-tf: Coded Deep Learning for tf_keras and TF-MOT.

The names below load their modules (and TensorFlow) when first used, so that the experiment
configs (`cdl_tf.experiment_config`, `cdl_tf.recipes`) import without TensorFlow: the
command-line tools read them before they start it (`tools/cli.py`).
"""
import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ops": None,
    "CDLConfig": "cdl_tf.config",
    "CDLQuantizeConfig": "cdl_tf.quantize",
    "CDLQuantizeScheme": "cdl_tf.quantize",
    "quantize_annotate_layer": "cdl_tf.quantize",
    "quantize_apply": "cdl_tf.quantize",
    "quantize_model": "cdl_tf.quantize",
    "quantize_scope": "cdl_tf.quantize",
    "quantizers": "cdl_tf.quantize",
    "CDLActivationQuantizer": "cdl_tf.quantizers",
    "CDLWeightQuantizer": "cdl_tf.quantizers",
    "hard_quantization": "cdl_tf.batchnorm",
    "reestimate_batchnorm": "cdl_tf.batchnorm",
    "RateSchedule": "cdl_tf.callbacks",
    "SoftnessSchedule": "cdl_tf.callbacks",
    "RateReport": "cdl_tf.report",
    "TensorRate": "cdl_tf.report",
    "hard_indices": "cdl_tf.report",
    "rate_report": "cdl_tf.report",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cdl_tf' has no attribute {name!r}")
    if _EXPORTS[name] is None:
        return importlib.import_module(f"cdl_tf.{name}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


class _Package(types.ModuleType):
    """``cdl_tf.quantizers`` stays the function `cdl_tf.quantize.quantizers` once the submodule of
    that name is imported (the import would bind the module here)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "quantizers":
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
