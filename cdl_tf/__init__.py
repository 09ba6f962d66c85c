"""cdl-tf: Coded Deep Learning for tf_keras and TF-MOT.

The public names load their modules (and TensorFlow) on first use, so that what needs no
TensorFlow imports without it: the experiment configs (`cdl_tf.experiment_config`,
`cdl_tf.recipes`), which the command-line tools (`cdl_tf.tools.cli`) read before they start it.
"""
import importlib
from typing import Any

__version__ = "0.1.0"
_PUBLIC = {
    "ops": "cdl_tf.ops",
    "hard_quantization": "cdl_tf.batchnorm", "reestimate_batchnorm": "cdl_tf.batchnorm",
    "RateSchedule": "cdl_tf.callbacks", "SoftnessSchedule": "cdl_tf.callbacks",
    "CDLConfig": "cdl_tf.config",
    "model_quantizers": "cdl_tf.quantize", "quantize_annotate_layer": "cdl_tf.quantize",
    "quantize_apply": "cdl_tf.quantize", "quantize_model": "cdl_tf.quantize", "quantize_scope": "cdl_tf.quantize",
    "CDLQuantizeConfig": "cdl_tf.quantize_config", "CDLQuantizeScheme": "cdl_tf.quantize_config",
    "CDLActivationQuantizer": "cdl_tf.quantizers", "CDLWeightQuantizer": "cdl_tf.quantizers",
    "RateReport": "cdl_tf.report", "TensorRate": "cdl_tf.report", "hard_indices": "cdl_tf.report",
    "rate_report": "cdl_tf.report",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'cdl_tf' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if module.__name__ == f"cdl_tf.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
