"""cdl-tf: Coded Deep Learning for tf_keras and TF-MOT."""
from cdl_tf import ops
from cdl_tf.batchnorm import hard_quantization, reestimate_batchnorm
from cdl_tf.callbacks import RateSchedule, SoftnessSchedule
from cdl_tf.config import CDLConfig
from cdl_tf.quantize import model_quantizers, quantize_annotate_layer, quantize_apply, quantize_model, quantize_scope
from cdl_tf.quantize_config import CDLQuantizeConfig, CDLQuantizeScheme
from cdl_tf.quantizers import CDLActivationQuantizer, CDLWeightQuantizer
from cdl_tf.report import RateReport, TensorRate, hard_indices, rate_report

__version__ = "0.1.0"
__all__ = [
    "CDLActivationQuantizer", "CDLConfig", "CDLQuantizeConfig", "CDLQuantizeScheme", "CDLWeightQuantizer",
    "RateReport", "RateSchedule", "SoftnessSchedule", "TensorRate", "hard_indices", "hard_quantization",
    "model_quantizers", "ops", "quantize_annotate_layer", "quantize_apply", "quantize_model", "quantize_scope",
    "rate_report", "reestimate_batchnorm",
]
