"""CDL weight and activation quantizers for TF-MOT's `QuantizeWrapper`.

Each quantizer owns, per quantized tensor, a trainable step ``q`` and softness
(``kappa = alpha q^2`` or ``alpha``, both stored as logs so they stay positive),
and adds the tensor's rate term to the wrapping layer's losses:

    weights:     lambda_w * N_l H_l / N_w       (bits per quantized weight of the model)
    activations: lambda_a * n_s H_s / n_a       (bits per activation value of the model)

``H`` is the entropy of the marginal index PMF (the soft one while training);
``N_l`` the tensor's size, ``N_w`` the model's quantized weight count, ``n_s`` and
``n_a`` the activation values per example at this site and in the model. The
weights ``lambda`` live in a non-trainable variable so a schedule can change them.

Modes (``training=True``): ``cdl`` forwards a ``Q_p`` draw, ``rcdl`` forwards
``Q_d``, ``ste`` forwards ``Q_u``; all three back-propagate through ``Q_d``.
With ``training=False`` the output is always ``Q_u``.
"""
from __future__ import annotations

import contextlib
import math
import weakref
import zlib
from typing import Any, Dict, Iterable, Iterator, Optional

import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot

from tf_keras.src.engine import base_layer_utils

from cdl_tf import ops
from cdl_tf.experiment_config import CDL_MODES as MODES, SOFTNESS_PARAMS

_MODE_VALUE = {"cdl": "sample", "rcdl": "soft", "ste": "nearest", "epr": "nearest"}  # epr: `cdl_tf.epr`

_Quantizer = tfmot.quantization.keras.quantizers.Quantizer


class RateMetrics:
    """The model-wide ``bits_per_weight`` / ``bits_per_activation`` metrics of one model.

    Every quantizer of a model updates the same two `Mean` metrics, weighted by
    its value count, so the progress bar shows the model averages. Training steps
    report the soft (optimised) entropies, evaluation steps those of the hard indices.
    """

    _groups: "weakref.WeakValueDictionary[str, RateMetrics]" = weakref.WeakValueDictionary()

    def __init__(self):
        self.weights = keras.metrics.Mean(name="bits_per_weight")
        self.activations = keras.metrics.Mean(name="bits_per_activation")
        self.owners: Dict[str, Any] = {}

    def update(self, kind: str, layer, bits: tf.Tensor, count: int) -> None:
        """Add ``bits`` (weighted by ``count``); the first layer to report a kind shows it."""
        metric = self.weights if kind == "weight" else self.activations
        result = metric(bits, sample_weight=count)
        if self.owners.setdefault(kind, layer) is layer and _in_layer_call():
            layer.add_metric(result)

    @classmethod
    def for_group(cls, group: str) -> "RateMetrics":
        metrics = cls._groups.get(group)
        if metrics is None:
            metrics = cls()
            cls._groups[group] = metrics
        return metrics


def _in_layer_call() -> bool:
    """Whether a Keras layer is being called (losses and metrics can be added)."""
    return base_layer_utils.call_context().in_call


def _log(x: float) -> float:
    return math.log(float(x))


class CDLQuantizer(_Quantizer):
    """Shared machinery of the weight and activation quantizers."""

    kind = "base"

    def __init__(
        self,
        bits: int,
        lo: int,
        hi: int,
        mode: str = "cdl",
        window: Optional[int] = None,
        count_sample: int = 0,
        init_kappa: float = 4.0,
        softness_param: str = "kappa",
        train_softness: bool = True,
        train_step: bool = True,
        step_grad_scale: bool = True,
        init_step_scale: float = 1.0,
        rate_weight: float = 0.0,
        rate_normalizer: float = 1.0,
        seed: int = 0,
        group: str = "",
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if softness_param not in SOFTNESS_PARAMS:
            raise ValueError(f"softness_param must be one of {SOFTNESS_PARAMS}, got {softness_param!r}")
        if not lo <= 0 <= hi or lo == hi:
            raise ValueError(f"alphabet [{lo}, {hi}] must contain 0 and one other level")
        if int(count_sample) != count_sample or count_sample < 0:
            raise ValueError(f"count_sample must be an integer >= 0, got {count_sample!r}")
        if init_kappa <= 0 or init_step_scale <= 0 or rate_weight < 0 or rate_normalizer <= 0:
            raise ValueError(
                f"need init_kappa > 0, init_step_scale > 0, rate_weight >= 0, rate_normalizer > 0; got "
                f"{init_kappa}, {init_step_scale}, {rate_weight}, {rate_normalizer}"
            )
        self.bits, self.lo, self.hi = int(bits), int(lo), int(hi)
        self.mode = mode
        self.window = None if window is None else int(window)
        self.count_sample = int(count_sample)
        self.init_kappa = float(init_kappa)
        self.softness_param = softness_param
        self.train_softness = bool(train_softness)
        self.train_step = bool(train_step)
        self.step_grad_scale = bool(step_grad_scale)
        self.init_step_scale = float(init_step_scale)
        self.rate_weight = float(rate_weight)
        self.rate_normalizer = float(rate_normalizer)
        self.seed = int(seed)
        self.group = group
        self.force_hard = False
        self.initializing = False
        self.recorder: Optional[list] = None

    # ``force_hard`` (read when a call is traced) makes training-mode calls use ``Q_u``
    # without rate terms, e.g. to re-estimate BatchNorm statistics; ``initializing`` (also
    # read when traced) lets a replica step initialise ``q`` (see `_maybe_initialize`);
    # ``recorder``, when a list, collects the quantizer's inputs of eager calls for rate reports.

    # -- TF-MOT Quantizer interface ------------------------------------------------
    def build(self, tensor_shape, name: str, layer) -> Dict[str, tf.Variable]:
        self._layer = layer
        self._name = f"{layer.name}/{name}"
        self._count = self._value_count(tensor_shape)
        self._metrics = RateMetrics.for_group(self.group) if self.group else None
        return {
            "log_q": layer.add_weight(
                f"{name}_log_q", shape=(), initializer="zeros", trainable=self.train_step,
                aggregation=tf.VariableAggregation.MEAN,
            ),
            "log_softness": layer.add_weight(
                f"{name}_log_{self.softness_param}", shape=(),
                initializer=keras.initializers.Constant(_log(self.init_kappa)),
                trainable=self.train_softness, aggregation=tf.VariableAggregation.MEAN,
            ),
            "initialized": layer.add_weight(
                f"{name}_initialized", shape=(), dtype=tf.bool, initializer="zeros",
                trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            ),
            "step": layer.add_weight(
                f"{name}_step", shape=(), dtype=tf.int64, initializer="zeros",
                trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            ),
            "rate_weight": layer.add_weight(
                f"{name}_rate_weight", shape=(),
                initializer=keras.initializers.Constant(self.rate_weight), trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            ),
        }

    @tf.autograph.experimental.do_not_convert
    def __call__(self, inputs, training, weights, **kwargs):
        x = tf.convert_to_tensor(inputs)
        if self.recorder is not None and tf.executing_eagerly():
            self.recorder.append(x)
        self._maybe_initialize(x, weights)
        q, alpha = self.step_and_softness(weights, grad_scale=True)
        q, alpha = tf.cast(q, x.dtype), tf.cast(alpha, x.dtype)
        if not training or self.force_hard:
            counts = ops.hard_index_counts(x, q, self.lo, self.hi)
            self._record(self._global_counts(counts), training=False)
            return ops.q_u(x, q, self.lo, self.hi)
        values, bits = self._training_values_and_rate(x, q, alpha, weights)
        if _in_layer_call():
            self._layer.add_loss(
                tf.cast(weights["rate_weight"], x.dtype) * (self._count / self.rate_normalizer) * bits
            )
        return values

    def _training_values_and_rate(self, x: tf.Tensor, q: tf.Tensor, alpha: tf.Tensor, weights):
        """A training call's quantized values and the rate (bits per value) its loss penalises:
        the mode's forward and the entropy of the soft counts (`cdl_tf.ops.quantize_with_counts`)."""
        seed = self._seed(weights) if self.mode == "cdl" or self.count_sample else None
        values, counts = ops.quantize_with_counts(
            x, q, alpha, self.lo, self.hi, value=_MODE_VALUE[self.mode], seed=seed, window=self.window,
            count_sample=self.count_sample or None,
        )
        return values, self._record(self._global_counts(counts), training=True)

    def get_config(self) -> Dict[str, Any]:
        return {
            "bits": self.bits, "lo": self.lo, "hi": self.hi, "mode": self.mode,
            "window": self.window, "count_sample": self.count_sample, "init_kappa": self.init_kappa,
            "softness_param": self.softness_param, "train_softness": self.train_softness,
            "train_step": self.train_step, "step_grad_scale": self.step_grad_scale,
            "init_step_scale": self.init_step_scale,
            "rate_weight": self.rate_weight, "rate_normalizer": self.rate_normalizer,
            "seed": self.seed, "group": self.group,
        }

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other

    # -- parameters -------------------------------------------------------------------
    @property
    def value_count(self) -> int:
        """Values per tensor (weights) or per example (activations)."""
        return self._count

    def step_and_softness(self, weights, grad_scale: bool = False):
        """``(q, alpha)`` from the log-variables; optionally with LSQ gradient scaling of ``q``.

        The scaled gradient leaves the value alone: ``log q + (s log q - sg(s log q))`` is
        ``log q`` bit for bit (the bracket is exactly 0), so training, export and decoding
        all see the same ``q = exp(log q)``.
        """
        log_q = weights["log_q"]
        if grad_scale and self.step_grad_scale:
            s = 1.0 / math.sqrt(self._count * self.hi)
            scaled = log_q * s
            log_q = tf.stop_gradient(log_q) + (scaled - tf.stop_gradient(scaled))
        q = tf.exp(log_q)
        soft = tf.exp(weights["log_softness"])
        alpha = ops.alpha_from_kappa(soft, q) if self.softness_param == "kappa" else soft
        return q, alpha

    def initial_step(self, x: tf.Tensor) -> tf.Tensor:
        """``q_0 = s 2 mean|x| / sqrt(2^(b-1))`` (LSQ's initialisation times ``init_step_scale``).

        0.01 for an all-zero tensor.
        """
        q0 = self.init_step_scale * 2.0 * self._mean_abs(tf.cast(x, tf.float32)) / math.sqrt(2.0 ** (self.bits - 1))
        return tf.where(q0 > 1e-8, q0, 0.01)

    def _mean_abs(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.abs(x))

    def _initial_values(self, x: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The initial ``log_q`` (and ``log_softness`` when it is ``alpha = kappa / q^2``) from ``x``."""
        q0 = self.initial_step(x)
        values = {"log_q": tf.math.log(q0)}
        if self.softness_param == "alpha":
            values["log_softness"] = tf.math.log(self.init_kappa / tf.square(q0))
        return values

    def _maybe_initialize(self, x: tf.Tensor, weights) -> None:
        """Set ``q`` from the first tensor seen (weights, or the first batch of activations).

        In a replica context of a `tf.distribute` strategy a variable assignment is a
        cross-replica synchronisation, which `tf.cond` cannot hold. There the quantizer is
        initialised by a step traced with ``initializing`` set (the first step of the
        model's ``fit``/``evaluate``/``predict``, see `cdl_tf.quantize.InitializesQuantizers`),
        which assigns without a condition and takes activation statistics over the global
        batch; a step traced without it, before the quantizer is initialised, is refused.
        """
        if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
            def init():
                assigned = [weights[k].assign(v) for k, v in self._initial_values(x).items()]
                with tf.control_dependencies(assigned):
                    return weights["initialized"].assign(True)

            tf.cond(weights["initialized"], lambda: tf.constant(True), init)
        elif self.initializing:
            done = tf.convert_to_tensor(weights["initialized"])
            for k, v in self._initial_values(x).items():
                weights[k].assign(tf.where(done, weights[k], v))
            weights["initialized"].assign(True)
        else:
            with tf.init_scope():  # the flag's value now, while the step is traced
                ready = bool(weights["initialized"].numpy())
            if not ready:
                raise RuntimeError(
                    f"{self._name}: quantizer used in a tf.distribute replica step before its step size was set; "
                    "train with model.fit/evaluate/predict, or first call "
                    "cdl_tf.distribute.initialize_quantizers(model, strategy, first_global_batch)"
                )

    # -- rates --------------------------------------------------------------------------
    def _global_counts(self, counts: tf.Tensor) -> tf.Tensor:
        return counts

    def _seed(self, weights) -> tf.Tensor:
        """Stateless seed: differs per quantizer, per step and per replica."""
        ctx = tf.distribute.get_replica_context()
        replica = 0 if ctx is None else ctx.replica_id_in_sync_group
        replicas = 1 if ctx is None else ctx.num_replicas_in_sync
        step = weights["step"].assign_add(1)
        base = (self.seed * 1_000_003 + zlib.crc32(self._name.encode())) % (2**62)
        return tf.stack([tf.constant(base, tf.int64), step * replicas + tf.cast(replica, tf.int64)])

    def _record(self, counts: tf.Tensor, training: bool) -> tf.Tensor:
        total = tf.reduce_sum(counts)
        bits = ops.pmf_entropy_bits(counts / tf.maximum(total, tf.constant(1e-30, counts.dtype)))
        if self._metrics is not None:
            self._metrics.update(self.kind, self._layer, tf.stop_gradient(tf.cast(bits, tf.float32)), self._count)
        return bits


@contextlib.contextmanager
def flagged(quantizers: Iterable[CDLQuantizer], flag: str) -> Iterator[None]:
    """Within the context, the quantizers' ``flag`` (``force_hard`` or ``initializing``) is set."""
    quantizers = list(quantizers)
    for q in quantizers:
        setattr(q, flag, True)
    try:
        yield
    finally:
        for q in quantizers:
            setattr(q, flag, False)


class CDLWeightQuantizer(CDLQuantizer):
    """Quantizer of a layer's kernel; ``rate_normalizer`` is the model's quantized weight count.

    ``distortion_weight`` ``mu > 0`` adds the rate-distortion objective's distortion
    ``mu/2 sum_i F_i (Q_u(theta_i) - theta_i)^2`` to the training loss, with ``F`` the weights'
    ``importance`` (their diagonal Fisher, `cdl_tf.rate_distortion.set_importance`), which must be
    set before a training call is traced.
    """

    kind = "weight"

    def __init__(self, *args, distortion_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if distortion_weight < 0:
            raise ValueError(f"distortion_weight must be >= 0, got {distortion_weight!r}")
        self.distortion_weight = float(distortion_weight)
        self.importance: Optional[tf.Tensor] = None

    @tf.autograph.experimental.do_not_convert
    def __call__(self, inputs, training, weights, **kwargs):
        values = super().__call__(inputs, training, weights, **kwargs)
        if training and not self.force_hard:
            self._add_distortion(tf.convert_to_tensor(inputs), weights)
        return values

    def _add_distortion(self, x: tf.Tensor, weights) -> None:
        """Add ``mu/2 sum_i F_i (Q_u(x_i) - x_i)^2`` to the layer's losses (in a training call)."""
        if not self.distortion_weight or not _in_layer_call():
            return
        if self.importance is None:
            raise ValueError(f"{self._name}: distortion_weight > 0 needs the weights' importance; set it with "
                             "cdl_tf.rate_distortion.set_importance before training")
        q, _ = self.step_and_softness(weights, grad_scale=True)
        self._layer.add_loss(self.distortion_weight * ops.weighted_distortion(
            x, tf.cast(q, x.dtype), self.lo, self.hi, self.importance))

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "distortion_weight": self.distortion_weight}

    @staticmethod
    def _value_count(tensor_shape) -> int:
        return int(tf.TensorShape(tensor_shape).num_elements())


class CDLActivationQuantizer(CDLQuantizer):
    """Quantizer of a layer's output; ``rate_normalizer`` is activation values per example.

    The marginal PMF is that of the global batch: under ``tf.distribute`` the
    per-replica soft counts are summed across replicas before the entropy, and so are
    the sums of ``|x|`` that give the initial step.
    """

    kind = "activation"

    @staticmethod
    def _value_count(tensor_shape) -> int:
        shape = tf.TensorShape(tensor_shape)[1:]
        if not shape.is_fully_defined():
            raise ValueError(f"activation shape {tf.TensorShape(tensor_shape)} must be known but for the batch")
        return int(shape.num_elements())

    def _global_counts(self, counts: tf.Tensor) -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return counts
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, counts)

    def _mean_abs(self, x: tf.Tensor) -> tf.Tensor:
        """mean|x| over the global batch (summed across replicas in a replica context)."""
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return super()._mean_abs(x)
        total, size = ctx.all_reduce(
            tf.distribute.ReduceOp.SUM, [tf.reduce_sum(tf.abs(x)), tf.cast(tf.size(x), x.dtype)]
        )
        return total / size
