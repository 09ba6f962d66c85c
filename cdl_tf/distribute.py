"""`tf.distribute` strategies for CDL training.

    strategy = make_strategy("mirrored")
    with strategy.scope():
        model = quantize_model(...); model.compile(...)
    model.fit(global_batches)

Keras splits every global batch of a `tf.data` pipeline across the replicas. The
first step of ``fit`` (``evaluate``, ``predict``) initialises the quantizers' steps
``q`` as one device does, from the weights and from mean|x| of the global batch's
activations (`cdl_tf.quantize.InitializesQuantizers`). The rate terms stay those of
the global batch: activation quantizers sum their soft index counts across replicas
before the entropy, ``H(sum_r c_r)``, Keras scales each replica's loss by ``1/R``,
and the replicas' gradients are summed, so loss, rates and gradients equal one
device's (up to float rounding). BatchNormalization still normalises with
per-replica batch statistics.

A custom loop that steps the model in ``strategy.run`` initialises the quantizers
first with `initialize_quantizers` (a replica step that finds one uninitialised
raises an error saying so).

On TPU the whole step is XLA-compiled: ``Q_p`` draws are stateless (seeded by a
step counter) and index counts are segment sums of static size (`cdl_tf.ops`).
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from cdl_tf.quantize import model_quantizers

STRATEGIES = ("default", "mirrored", "multiworker", "tpu")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called ``name``.

    * ``default``: the current (single-device) strategy;
    * ``mirrored``: `MirroredStrategy` over every local GPU, else the CPU;
    * ``multiworker``: `MultiWorkerMirroredStrategy`, cluster from ``TF_CONFIG``; create it
      before any other TensorFlow op runs;
    * ``tpu``: `TPUStrategy` on the TPU named by ``$TPU_NAME`` (``''``: the local TPU VM).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def initialize_quantizers(model, strategy: tf.distribute.Strategy, x: np.ndarray) -> None:
    """Set every uninitialised quantizer's ``q`` from ``x`` (a global batch), in cross-replica context.

    ``fit``, ``evaluate`` and ``predict`` initialise the quantizers in their first step;
    a custom loop's replica step cannot (see `CDLQuantizer._maybe_initialize`), so this
    call does it once, from the whole batch in inference mode. Every worker must pass
    the same ``x``. Quantizers already initialised (restored or loaded) keep their ``q``.
    """
    if not model_quantizers(model):
        return
    with strategy.scope():
        model(x, training=False)
