"""cdl-tf: Coded Deep Learning for tf_keras and TF-MOT."""
from cdl_tf import ops
from cdl_tf.config import CDLConfig
from cdl_tf.quantize import (
    CDLQuantizeConfig,
    CDLQuantizeScheme,
    quantize_annotate_layer,
    quantize_apply,
    quantize_model,
    quantize_scope,
    quantizers,
)
from cdl_tf.quantizers import CDLActivationQuantizer, CDLWeightQuantizer

__version__ = "0.1.0"
from cdl_tf.batchnorm import hard_quantization, reestimate_batchnorm
from cdl_tf.callbacks import RateSchedule, SoftnessSchedule
from cdl_tf.report import RateReport, TensorRate, hard_indices, rate_report
