"""Turn a tf_keras model into a CDL model, in the manner of TF-MOT's QAT API.

    qmodel = cdl_tf.quantize_model(model, cdl_tf.CDLConfig(lambda_w=0.05))
    qmodel.compile(...); qmodel.fit(...)

or, selectively,

    annotated = keras.Sequential([cdl_tf.quantize_annotate_layer(Dense(...)), Dense(...)])
    qmodel = cdl_tf.quantize_apply(annotated, config)

Layers are wrapped in TF-MOT's `QuantizeWrapperV2` with a `CDLQuantizeConfig`:
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
import uuid
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot
from tf_keras.src.engine.functional import Functional

from cdl_tf.config import CDLConfig
from cdl_tf.quantizers import CDLActivationQuantizer, CDLQuantizer, CDLWeightQuantizer, flagged

from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate

_tfq = tfmot.quantization.keras

WEIGHTED_LAYERS = {
    keras.layers.Conv2D: "kernel",
    keras.layers.DepthwiseConv2D: "depthwise_kernel",
    keras.layers.Dense: "kernel",
}
_PASS_THROUGH = (
    keras.layers.BatchNormalization, keras.layers.MaxPooling2D, keras.layers.Flatten,
    keras.layers.Dropout, keras.layers.Reshape, keras.layers.ZeroPadding2D,
    keras.layers.InputLayer,
)
_LATER_SITES = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.Add)
_RELU_NAMES = ("relu", "relu6")


class CDLQuantizeConfig(_tfq.QuantizeConfig):
    """Weight quantizers (``{attribute: quantizer}``, e.g. kernel and bias) and/or an output quantizer."""

    def __init__(
        self,
        weights: Optional[Dict[str, CDLWeightQuantizer]] = None,
        output_quantizer: Optional[CDLActivationQuantizer] = None,
    ):
        self.weights = dict(weights or {})
        self.output_quantizer = output_quantizer

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, attr), quantizer) for attr, quantizer in self.weights.items()]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        for attr, value in zip(self.weights, quantize_weights):
            setattr(layer, attr, value)

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [] if self.output_quantizer is None else [self.output_quantizer]

    def get_config(self):
        ser = keras.utils.serialize_keras_object
        return {
            "weights": {attr: ser(q) for attr, q in self.weights.items()},
            "output_quantizer": None if self.output_quantizer is None else ser(self.output_quantizer),
        }

    @classmethod
    def from_config(cls, config):
        objects = _custom_objects()
        de = lambda c: None if c is None else keras.utils.deserialize_keras_object(c, custom_objects=objects)
        return cls({attr: de(q) for attr, q in config["weights"].items()}, de(config["output_quantizer"]))

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


class _IdentityLayout(_tfq.QuantizeLayoutTransform):
    """CDL trains on the model's own layout; BatchNorm is folded only at export."""

    def apply(self, model, layer_quantize_map):
        return model, layer_quantize_map


class _NoDefaultRegistry(_tfq.QuantizeRegistry):
    """Every CDL layer carries an explicit `CDLQuantizeConfig`; there are no defaults."""

    def get_quantize_config(self, layer):
        raise RuntimeError(f"layer {layer.name!r} has no CDLQuantizeConfig")

    def supports(self, layer):
        return False


class CDLQuantizeScheme(_tfq.QuantizeScheme):
    """`QuantizeScheme` for `tfmot.quantization.keras.quantize_apply`."""

    def get_layout_transformer(self):
        return _IdentityLayout()

    def get_quantize_registry(self):
        return _NoDefaultRegistry()


class QuantizeWrapperV2(_tfq.QuantizeWrapperV2):
    """TF-MOT's `QuantizeWrapperV2`, building the wrapped layer before its quantizers.

    A model restored from ``.keras``/``.h5`` config builds its wrappers around unbuilt
    layers; building the layer first gives its weights the order they were saved in.
    It keeps TF-MOT's class name, under which the wrappers were saved.
    """

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        super().build(input_shape)


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
            distributed = tf.distribute.has_strategy()
            found = [q for _, q, v in self._model._quantizers() if distributed and not v["initialized"].numpy()]
            if found:
                first = self._make(force=True)
                setattr(self._model, self._attr, self)  # `make` stored its function there
                with flagged(found, "initializing"):
                    return first(*args)
        return self._steady(*args)


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
        return quantizers(self)


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
    }


@contextlib.contextmanager
def quantize_scope(*args: Dict[str, type]) -> Iterator[None]:
    """`tfmot.quantization.keras.quantize_scope` with the CDL classes, for loading models."""
    with _tfq.quantize_scope(*args), keras.utils.custom_object_scope(_custom_objects()):
        yield


quantize_annotate_layer = _tfq.quantize_annotate_layer


# -- model checks ----------------------------------------------------------------------
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


# -- planning ----------------------------------------------------------------------------
def _inner(layer):
    return layer.layer if isinstance(layer, QuantizeAnnotate) else layer


def _activation_name(layer) -> Optional[str]:
    act = getattr(layer, "activation", None)
    return None if act is None else getattr(act, "__name__", str(act))


def _is_relu_layer(layer) -> Tuple[bool, bool]:
    """``(is a ReLU-type layer, output is non-negative)``."""
    if isinstance(layer, keras.layers.ReLU):
        return True, not layer.negative_slope
    if isinstance(layer, keras.layers.Activation):
        return _activation_name(layer) in _RELU_NAMES, True
    return False, False


def _inbound(model) -> Dict[str, List[str]]:
    """Names of the layers feeding each layer of ``model`` (from its own config)."""
    if isinstance(model, keras.Sequential):
        names = [l.name for l in model.layers]
        return {n: names[i - 1 : i] for i, n in enumerate(names)}
    inbound = {}
    for entry in model.get_config()["layers"]:
        inbound[entry["name"]] = [
            ref[0] for node in entry["inbound_nodes"] for ref in (node if isinstance(node, list) else [])
        ]
    return inbound


def _weight_attr(layer) -> Optional[str]:
    for cls, attr in WEIGHTED_LAYERS.items():
        if type(layer) is cls:
            return attr
    return None


def _unsupported(layer) -> bool:
    return _weight_attr(layer) is None and not _is_relu_layer(layer)[0] and bool(layer.weights) and not isinstance(
        layer, _PASS_THROUGH
    )


class _Planner:
    """Chooses bits, alphabets and rate normalisers for the layers of one model."""

    def __init__(self, model, config: CDLConfig, selected: List):
        self.config = config
        self.selected = {id(_inner(l)) for l in selected}
        weighted = [_inner(l) for l in model.layers if id(_inner(l)) in self.selected and _weight_attr(_inner(l))]
        if not weighted and not config.quantize_activations:
            raise ValueError("nothing to quantize: no Conv2D/DepthwiseConv2D/Dense layer selected")
        self.first = weighted[0].name if weighted else None
        self.last = weighted[-1].name if weighted else None
        self.output_names = {_inner(l).name for l in model.layers if l.name in set(model.output_names)}
        self.by_name = {l.name: l for l in model.layers}
        self.inbound = _inbound(model)
        self.outbound = {n: [] for n in self.inbound}
        for name, sources in self.inbound.items():
            for source in sources:
                self.outbound.setdefault(source, []).append(name)
        self.group = f"cdl-{uuid.uuid4().hex[:12]}"
        self.plans = {}
        for outer in model.layers:
            if id(_inner(outer)) in self.selected:
                self.plans[_inner(outer).name] = self._plan(outer)
        self.n_weights = sum(p["n_weights"] for p in self.plans.values())
        self.n_acts = sum(p["n_acts"] for p in self.plans.values())

    def bits(self, layer) -> Tuple[int, int]:
        c = self.config
        if layer.name in c.layer_bits:
            return c.layer_bits[layer.name]
        if layer.name == self.first and c.first_layer_bits is not None:
            return c.first_layer_bits, c.first_layer_bits
        if layer.name == self.last and c.last_layer_bits is not None:
            return c.last_layer_bits, c.last_layer_bits
        return c.weight_bits, c.activation_bits

    def _site(self, outer) -> Optional[bool]:
        """Whether the layer's output is an activation site, and if so whether it is unsigned."""
        layer = _inner(outer)
        is_relu, unsigned = _is_relu_layer(layer)
        if is_relu:
            return unsigned
        act = _activation_name(layer)
        if act in _RELU_NAMES:
            return True
        if act not in (None, "linear"):
            return None
        consumers = [_inner(self.by_name[n]) for n in self.outbound.get(outer.name, [])]
        if consumers and layer.name not in self.output_names and all(
            isinstance(c, _LATER_SITES) or _is_relu_layer(c)[0] for c in consumers
        ):
            return None
        return False

    def _activation_bits(self, outer) -> int:
        """Activation bits of the nearest weighted layer upstream on a single-input path."""
        source = outer
        while source is not None and not _weight_attr(_inner(source)):
            sources = self.inbound.get(source.name, [])
            source = self.by_name.get(sources[0]) if len(sources) == 1 else None
        if source is None or id(_inner(source)) not in self.selected:
            return self.config.activation_bits
        return self.bits(_inner(source))[1]

    def _plan(self, outer) -> dict:
        c = self.config
        layer = _inner(outer)
        attr = _weight_attr(layer)
        plan = {"weight_attrs": [], "weight_bits": None, "n_weights": 0, "site": None, "n_acts": 0}
        if attr:
            plan["weight_attrs"] = [attr] + (["bias"] if c.quantize_biases and layer.use_bias else [])
            plan["weight_bits"] = self.bits(layer)[0]
            plan["n_weights"] = sum(int(getattr(layer, a).shape.num_elements()) for a in plan["weight_attrs"])
        if c.quantize_activations:
            plan["site"] = self._site(outer)
            if plan["site"] is not None:
                plan["act_bits"] = self._activation_bits(outer)
                plan["n_acts"] = CDLActivationQuantizer._value_count(outer.output_shape)
        return plan

    def _quantizer_args(self) -> dict:
        c = self.config
        return dict(
            mode=c.mode, init_kappa=c.init_kappa, softness_param=c.softness_param,
            train_softness=c.train_softness, train_step=c.train_step,
            step_grad_scale=c.step_grad_scale, seed=c.seed, group=self.group,
        )

    def quantize_config(self, layer) -> Optional[CDLQuantizeConfig]:
        plan = self.plans[layer.name]
        c = self.config
        weights, oq = {}, None
        for attr in plan["weight_attrs"]:
            bits = c.bias_bits if attr == "bias" else plan["weight_bits"]
            lo, hi = c.weight_range(bits)
            weights[attr] = CDLWeightQuantizer(
                bits, lo, hi, window=c.weight_window, init_step_scale=c.weight_init_step_scale,
                rate_weight=c.lambda_w,
                rate_normalizer=self.n_weights, **self._quantizer_args(),
            )
        if plan["site"] is not None:
            lo, hi = c.activation_range(plan["act_bits"], unsigned=plan["site"])
            oq = CDLActivationQuantizer(
                plan["act_bits"], lo, hi, window=c.activation_window, rate_weight=c.lambda_a,
                count_sample=c.activation_count_sample, rate_normalizer=max(self.n_acts, 1),
                **self._quantizer_args(),
            )
        if not weights and oq is None:
            return None
        return CDLQuantizeConfig(weights, oq)


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
    planner = _Planner(model, config, annotated)

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
        supported = _weight_attr(layer) or _is_relu_layer(layer)[0]
        if supported and layer.name not in config.skip_layers:
            return QuantizeAnnotate(layer)
        return layer

    annotated = keras.models.clone_model(model, clone_function=annotate)
    return quantize_apply(annotated, config)


def quantizers(model) -> List[Tuple[str, CDLQuantizer, dict]]:
    """``(tensor name, quantizer, its variables)`` for every CDL quantizer of ``model``."""
    found = []
    for layer in model.layers:
        if not isinstance(layer, _tfq.QuantizeWrapperV2):
            continue
        for weight, quantizer, variables in getattr(layer, "_weight_vars", []):
            if isinstance(quantizer, CDLQuantizer):
                found.append((f"{layer.name}/{weight.name.split('/')[-1].split(':')[0]}", quantizer, variables))
        for quantizer in getattr(layer, "_output_quantizers", []):
            if isinstance(quantizer, CDLQuantizer):
                found.append((f"{layer.name}/output", quantizer, layer._output_quantizer_vars))
    return found
