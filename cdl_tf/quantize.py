"""Turn a tf_keras model into a CDL model, in the manner of TF-MOT's QAT API.

    qmodel = cdl_tf.quantize_model(model, cdl_tf.CDLConfig(lambda_w=0.05))
    qmodel.compile(...); qmodel.fit(...)

or, selectively,

    annotated = keras.Sequential([cdl_tf.quantize_annotate_layer(Dense(...)), Dense(...)])
    qmodel = cdl_tf.quantize_apply(annotated, config)

Layers are wrapped in TF-MOT's `QuantizeWrapperV2` with a `CDLQuantizeConfig`
(`cdl_tf.quantize_config`, planned by `cdl_tf.quantize_plan` from the rules of `cdl_tf.layer_registry`):
Conv2D / DepthwiseConv2D / Dense kernels get a `CDLWeightQuantizer`; activation
sites get a `CDLActivationQuantizer` on the wrapper output. Activation sites are
ReLU/ReLU6 outputs (unsigned alphabet), whether the ReLU is the layer's own
activation or a separate `ReLU`/`Activation` layer, and linear outputs of weighted
layers that feed no layer which quantizes later (BatchNormalization, ReLU, Add),
such as logits (signed alphabet). BatchNormalization stays a float layer during
training; export folds it into per-channel scales.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Tuple

import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate
from tf_keras.src.engine.functional import Functional

from cdl_tf.config import CDLConfig
from cdl_tf.layer_registry import output_quantizers, relu_output, rule, weight_attribute, weight_quantizers
from cdl_tf.quantize_config import CDLQuantizeConfig, CDLQuantizeScheme, QuantizeWrapperV2
from cdl_tf.quantize_plan import QuantizePlanner
from cdl_tf.epr import EPRWeightQuantizer
from cdl_tf.quantizers import CDLActivationQuantizer, CDLQuantizer, CDLWeightQuantizer, flagged

_tfq = tfmot.quantization.keras


class _FirstStepInitializes:
    """A Keras step function (``model.train_function`` etc.) that initialises quantizers in its first call.

    ``make(force=True)`` is Keras' maker of the step function stored in ``model.<attr>``. If,
    at the first call, a `tf.distribute` strategy is active and some quantizer of the model
    is not initialised, that call runs a function made for it, traced with the quantizers'
    ``initializing`` set; every other call runs the function made first, traced without it.
    """

    def __init__(self, model: "InitializesQuantizers", attr: str, make: Callable):
        self._model, self._attr, self._make = model, attr, make
        self._steady = make(force=True)
        self._pending = True

    def __call__(self, *args):
        if self._pending:
            self._pending = False
            _create_step_variables(self._model, args[0], train=self._attr == "train_function")
            distributed = tf.distribute.has_strategy()
            found = [q for _, q, v in self._model._quantizers() if distributed and not v["initialized"].numpy()]
            if found:
                first = self._make(force=True)
                setattr(self._model, self._attr, self)  # `make` stored its function there
                with flagged(found, "initializing"):
                    return first(*args)
        return self._steady(*args)


def _create_step_variables(model: keras.Model, iterator, train: bool) -> None:
    """Create the variables Keras would create inside the first trace of a step function: the
    optimizer's slots (train) and the compiled metrics, built from the output and the
    iterator's label spec. A `tf.function` whose first trace creates variables is traced
    twice, which doubles the time to a CDL model's first step. Metrics whose labels are not
    plain tensor specs (e.g. per-replica) are left to Keras, which builds them in the trace."""
    if train and isinstance(model.optimizer, keras.optimizers.Optimizer):
        model.optimizer.build(model.trainable_variables)
    metrics = getattr(model, "compiled_metrics", None)
    outputs = getattr(model, "_nested_outputs", None)
    spec = getattr(iterator, "element_spec", None)
    if metrics is None or metrics.built or outputs is None or not isinstance(spec, tuple) or len(spec) < 2:
        return
    labels = spec[1]
    if all(isinstance(s, tf.TensorSpec) for s in tf.nest.flatten(labels)):
        metrics.build(outputs, labels)


class InitializesQuantizers:
    """Model mixin: ``fit``, ``evaluate`` and ``predict`` initialise the quantizers under `tf.distribute` too.

    On one device (or in cross-replica context) a quantizer sets its step ``q`` from the
    first tensor it sees. In a strategy's replica step it cannot do so conditionally, so
    the first step of each of these loops is traced apart (see `_FirstStepInitializes`):
    it initialises ``q`` from the weights and the global batch's activations, the same
    values and the same update as on one device, and the later steps carry no
    initialisation. ``_quantizers`` says which quantizers to watch.
    """

    def make_train_function(self, force=False):
        return self._initializing_step("train_function", super().make_train_function, force)

    def make_test_function(self, force=False):
        return self._initializing_step("test_function", super().make_test_function, force)

    def make_predict_function(self, force=False):
        return self._initializing_step("predict_function", super().make_predict_function, force)

    def _initializing_step(self, attr: str, make: Callable, force: bool):
        if getattr(self, attr) is None or force:
            setattr(self, attr, _FirstStepInitializes(self, attr, make))
        return getattr(self, attr)

    def _quantizers(self) -> List[Tuple[str, CDLQuantizer, dict]]:
        return model_quantizers(self)


class QuantizedModel(InitializesQuantizers, Functional):
    """The Functional model `quantize_apply` returns (TF-MOT's, with `InitializesQuantizers`)."""


class QuantizedSequential(InitializesQuantizers, keras.Sequential):
    """The Sequential model `quantize_apply` returns for a Sequential model."""


def _custom_objects() -> Dict[str, type]:
    return {
        "QuantizedModel": QuantizedModel,
        "QuantizedSequential": QuantizedSequential,
        "QuantizeWrapperV2": QuantizeWrapperV2,
        "CDLQuantizeConfig": CDLQuantizeConfig,
        "CDLWeightQuantizer": CDLWeightQuantizer,
        "CDLActivationQuantizer": CDLActivationQuantizer,
        "EPRWeightQuantizer": EPRWeightQuantizer,
    }


@contextlib.contextmanager
def quantize_scope(*args: Dict[str, type]) -> Iterator[None]:
    """`tfmot.quantization.keras.quantize_scope` with the CDL classes, for loading models."""
    with _tfq.quantize_scope(*args), keras.utils.custom_object_scope(_custom_objects()):
        yield


quantize_annotate_layer = _tfq.quantize_annotate_layer


# -- model checks ----------------------------------------------------------------------
def _unsupported(layer) -> bool:
    """A layer with weights that CDL neither quantizes nor trains as float."""
    found = rule(layer)
    return bool(layer.weights) and not (found.weight or found.float_weights or relu_output(layer) is not None)


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        module = type(model).__module__
        if module.startswith("keras") or "keras.src" in module:
            raise TypeError(
                "cdl_tf needs a Keras 2 (tf_keras) model, got a Keras 3 model "
                f"({type(model).__name__}). Build it with `import tf_keras as keras` "
                "(pip install tf-keras) instead of `tf.keras` / `keras`."
            )
        raise TypeError(f"expected a tf_keras Model, got {type(model).__name__}")
    if not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network", False):
        raise TypeError(
            f"{type(model).__name__} is a subclassed model; cdl_tf quantizes Sequential and "
            "Functional models. Rebuild it with the Functional API (keras.Input + layer calls)."
        )
    if not model.built:
        raise ValueError("the model is not built; give it an input shape or call model.build(...)")


# -- public API --------------------------------------------------------------------------
def quantize_apply(model, config: CDLConfig = CDLConfig()) -> keras.Model:
    """Quantize the layers of ``model`` annotated with `quantize_annotate_layer`.

    Annotations that carry their own `QuantizeConfig` keep it; the others get a
    `CDLQuantizeConfig` planned from ``config``. Returns a new model (weights copied), a
    `QuantizedModel` or `QuantizedSequential`.
    """
    _check_model(model)
    if not isinstance(config, CDLConfig):
        raise TypeError(f"config must be a CDLConfig, got {type(config).__name__}")
    annotated = [l for l in model.layers if isinstance(l, QuantizeAnnotate) and l.quantize_config is None]
    if not any(isinstance(l, QuantizeAnnotate) for l in model.layers):
        raise ValueError("no layer is annotated; use cdl_tf.quantize_model or quantize_annotate_layer")
    planner = QuantizePlanner(model, config, annotated)

    def annotate(layer):
        if not isinstance(layer, QuantizeAnnotate) or layer.quantize_config is not None:
            return layer
        qc = planner.quantize_config(layer.layer)
        return layer.layer if qc is None else QuantizeAnnotate(layer.layer, quantize_config=qc)

    with quantize_scope():
        planned = keras.models.clone_model(model, clone_function=annotate)
        if not any(isinstance(l, QuantizeAnnotate) for l in planned.layers):
            raise ValueError("no annotated layer has anything to quantize under this CDLConfig")
        qmodel = _tfq.quantize_apply(planned, scheme=CDLQuantizeScheme())
    # TF-MOT builds the model; it becomes an instance of the subclass, which adds methods, no state.
    qmodel.__class__ = QuantizedSequential if isinstance(qmodel, keras.Sequential) else QuantizedModel
    return qmodel


def quantize_model(model, config: CDLConfig = CDLConfig()) -> keras.Model:
    """Quantize every supported layer of ``model`` (but ``config.skip_layers``) for CDL training.

    Mirrors `tfmot.quantization.keras.quantize_model`: returns a new model whose
    rate terms are model losses, so ``compile()`` + ``fit()`` train CDL.
    """
    _check_model(model)
    if not isinstance(config, CDLConfig):
        raise TypeError(f"config must be a CDLConfig, got {type(config).__name__}")
    names = {l.name for l in model.layers}
    missing = sorted(set(config.skip_layers) - names)
    if missing:
        raise ValueError(f"CDLConfig.skip_layers names unknown layers {missing}")
    missing = sorted(set(config.layer_bits) - names)
    if missing:
        raise ValueError(f"CDLConfig.layer_bits names unknown layers {missing}")
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise TypeError(f"nested model {layer.name!r} is not supported; flatten it into one Functional model")
        if layer.name not in config.skip_layers and _unsupported(layer):
            raise TypeError(
                f"layer {layer.name!r} ({type(layer).__name__}) has weights but no CDL quantizer; "
                f"add it to CDLConfig.skip_layers to keep it float, or annotate it yourself with "
                f"quantize_annotate_layer(layer, quantize_config=...)"
            )

    def annotate(layer):
        supported = weight_attribute(layer) or relu_output(layer) is not None
        if supported and layer.name not in config.skip_layers:
            return QuantizeAnnotate(layer)
        return layer

    annotated = keras.models.clone_model(model, clone_function=annotate)
    return quantize_apply(annotated, config)


def model_quantizers(model) -> List[Tuple[str, CDLQuantizer, dict]]:
    """``(tensor name, quantizer, its variables)`` for every CDL quantizer of ``model``."""
    found = []
    for layer in model.layers:
        for weight, quantizer, variables in weight_quantizers(layer):
            if isinstance(quantizer, CDLQuantizer):
                found.append((f"{layer.name}/{weight.name.split('/')[-1].split(':')[0]}", quantizer, variables))
        for quantizer, variables in output_quantizers(layer):
            if isinstance(quantizer, CDLQuantizer):
                found.append((f"{layer.name}/output", quantizer, variables))
    return found
