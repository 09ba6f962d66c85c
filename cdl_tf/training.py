"""Config-driven training of float, TF-MOT 8-bit and CDL models with `model.fit`.

A run lives in a work directory:

    config.json        the validated config of the run
    backup/            `BackupAndRestore` state: a killed run restarts where it stopped
    epochs.json        each finished epoch's logs and seconds, kept across restarts (`EpochLog`)
    tensorboard/       loss, accuracy, rates overall and per tensor, q and alpha per tensor,
                       communication bits
    model.keras        the trained model (load inside `cdl_tf.quantize_scope()`)
    metrics.json       validation and test accuracy with hard quantization, rates, communication
                       bits, parameter counts, times
    workers/<id>/      outputs of a non-chief worker of a multi-worker run (a copy of the chief's)

Training shows and logs metrics on the validation split (`config.validation_size` training
images held out, `cdl_tf.data.make_dataset`); the test set is evaluated once, at the end.
`config.distill.teacher` names a finished run whose model teaches this one (`cdl_tf.distillation`).
`config.strategy` chooses the `tf.distribute` strategy (`cdl_tf.distribute`); batches
are global batches, which Keras splits across the replicas, and the first training step
initialises the quantizers as on one device.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot

from cdl_tf import data as cdl_data
from cdl_tf import models as cdl_models
from cdl_tf.batchnorm import reestimate_batchnorm
from cdl_tf.callbacks import EpochLog, RateLogger, RateSchedule, SoftnessSchedule
from cdl_tf.communication import activation_site, communication_report, write_summaries
from cdl_tf.config import CDLConfig
from cdl_tf.distillation import Distiller
from cdl_tf.distribute import make_strategy
from cdl_tf.experiment_config import AUGMENT, CDL_MODES, ConfigError, ExperimentConfig, is_finished_run
from cdl_tf.io import atomic_write_json
from cdl_tf.quantize import model_quantizers, quantize_model, quantize_scope
from cdl_tf.rate_distortion import diagonal_fisher, set_importance
from cdl_tf.report import rate_report
from cdl_tf.run_config import read_run_config

def validate_config(config) -> CDLConfig:
    """Check every field (`ExperimentConfig.from_config`) before anything runs; returns the run's
    `CDLConfig`."""
    return CDLConfig.from_experiment(ExperimentConfig.from_config(config))


def _optimizer(config, steps_per_epoch: int):
    o = config.optimizer
    total = config.epochs * steps_per_epoch
    warmup = o.warmup_epochs * steps_per_epoch
    if o.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            o.learning_rate / 10 if warmup else o.learning_rate, max(total - warmup, 1),
            warmup_target=o.learning_rate if warmup else None, warmup_steps=warmup,
        )
    else:
        lr = o.learning_rate
    if o.name == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.SGD(lr, momentum=o.momentum, nesterov=True)


def build_model(config, cdl_config: CDLConfig, train: Optional[tf.data.Dataset] = None) -> keras.Model:
    """The float model of the config, quantized as its mode says (weights from ``init_from``).

    ``init_from`` is a float run of the same model, or a CDL run (cdl, rcdl, ste) with the
    same quantization plan: then a CDL mode continues from its weights and steps ``q``, with
    this config's rate weights and initial softness (e.g. a final hard-forward ``ste`` phase);
    its alphabets may grow (more bits), not shrink. With ``config.cdl.distortion_weight`` the
    weights' importance is estimated on ``train`` at the float model ``init_from``
    (`cdl_tf.rate_distortion`); without ``train`` (a model to evaluate) it is not.
    """
    info = cdl_data.dataset_info(config.dataset)
    model = cdl_models.get_model(config.model, info.input_shape, info.num_classes, config.optimizer.weight_decay)
    source = None
    if config.init_from:
        with quantize_scope():
            source = keras.models.load_model(os.path.join(config.init_from, "model.keras"), compile=False)
        if not model_quantizers(source):
            if len(source.get_weights()) != len(model.get_weights()):
                raise ConfigError(f"config.init_from: {config.init_from!r} is not a float or CDL {config.model} run")
            model.set_weights(source.get_weights())
            source = None
        elif config.mode not in CDL_MODES:
            raise ConfigError(f"config.init_from: {config.init_from!r} is a CDL run; continuing it needs a CDL mode "
                              f"({', '.join(CDL_MODES)}), not {config.mode!r}")
    if config.mode in CDL_MODES:
        fisher = None
        if cdl_config.distortion_weight and train is not None:
            if not config.init_from or source is not None:
                raise ConfigError("config.cdl.distortion_weight: the weights' importance is estimated at a trained "
                                  "float model; set config.init_from to a float run")
            fisher = diagonal_fisher(model, train, cdl_config.fisher_examples)
        qmodel = quantize_model(model, cdl_config)
        if source is not None:
            _continue_cdl_run(qmodel, source, cdl_config, config.init_from)
        if fisher is not None:
            set_importance(qmodel, fisher)
        return qmodel
    if config.mode == "tfmot8":
        return tfmot.quantization.keras.quantize_model(model)
    return model


def _continue_cdl_run(qmodel: keras.Model, source: keras.Model, cdl_config: CDLConfig, path: str) -> None:
    """Copy ``source``'s weights and quantizer state; rate weights and softness from ``cdl_config``."""
    shapes = [tuple(w.shape) for w in source.weights]
    if shapes != [tuple(w.shape) for w in qmodel.weights]:
        raise ConfigError(f"config.init_from: {path!r} is a CDL run with another quantization plan (layers, "
                          "quantized biases or activations) than this config")
    # A larger alphabet keeps every point i q of the run's; a smaller one would clip its indices.
    alphabets = {name: (q.lo, q.hi) for name, q, _ in model_quantizers(source)}
    changed = [f"{name} [{alphabets.get(name)} -> {(q.lo, q.hi)}]" for name, q, _ in model_quantizers(qmodel)
               if name not in alphabets or not q.lo <= alphabets[name][0] <= alphabets[name][1] <= q.hi]
    if changed:
        raise ConfigError(f"config.init_from: {path!r} is a CDL run with alphabets (bits) that this config's do not "
                          f"contain: {', '.join(changed)}; continue with as many bits or more, or start from a "
                          "float run")
    qmodel.set_weights(source.get_weights())
    for _, quantizer, variables in model_quantizers(qmodel):
        variables["rate_weight"].assign(quantizer.rate_weight)
        log_softness = np.log(cdl_config.init_kappa)
        if cdl_config.softness_param == "alpha":  # alpha = kappa / q^2
            log_softness -= 2.0 * float(variables["log_q"].numpy())
        variables["log_softness"].assign(log_softness)


def _with_teacher(model: keras.Model, config, train) -> keras.Model:
    """``model``, or a `Distiller` of it if the config names a teacher run (built on a batch of ``train``)."""
    distill = config.distill
    if not distill.teacher:
        return model
    _, teacher = load_run(distill.teacher)
    distiller = Distiller(model, teacher, distill.weight, distill.temperature)
    distiller(_first_batch(train, config.batch_size), training=False)  # `BackupAndRestore` needs a built model
    return distiller


def _compile_args() -> Dict[str, Any]:
    return dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def _datasets(config, drop_remainder: bool = False):
    """``(train, validation, test)`` pipelines of the config; validation is ``None`` if
    ``config.validation_size`` is 0."""
    data_dir, validation_size = config.data_dir or None, config.validation_size
    train = cdl_data.make_dataset(
        config.dataset, "train", config.batch_size, data_dir=data_dir, training=True, seed=config.seed,
        augment=AUGMENT[config.augment], subset=config.train_subset or None,
        drop_remainder=drop_remainder, validation_size=validation_size,
    )
    validation = cdl_data.make_dataset(
        config.dataset, "validation", config.batch_size, data_dir=data_dir, training=False,
        validation_size=validation_size,
    ) if validation_size else None
    return train, validation, test_dataset(config, config.batch_size)


def test_dataset(config, batch_size: int):
    """The test images a run is evaluated on: ``config.test_subset`` of them (all if 0), drawn
    with ``config.seed``, in batches of ``batch_size``."""
    return cdl_data.make_dataset(config.dataset, "test", batch_size, data_dir=config.data_dir or None,
                                 training=False, seed=config.seed, subset=config.test_subset or None)


def _first_batch(dataset, n: int) -> np.ndarray:
    xs = []
    for x, _ in dataset:
        xs.append(x.numpy())
        if sum(len(b) for b in xs) >= n:
            break
    return np.concatenate(xs)[:n]


def _check_split_at(model, config) -> None:
    if config.split_at:
        try:
            activation_site(model, config.split_at)
        except ValueError as e:
            raise ConfigError(f"config.split_at: {e}") from e


def _output_dir(workdir: str, strategy) -> str:
    """``workdir`` for the chief (or a single process), ``workdir/workers/<id>`` for other workers."""
    if strategy.extended.should_checkpoint:
        return workdir
    return os.path.join(workdir, "workers", str(strategy.cluster_resolver.task_id))


def _save_config(config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    atomic_write_json(path, json.loads(config.to_json()))


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
    """Train the run of ``config`` in ``workdir`` (resuming if it was interrupted); returns metrics."""
    cdl_config = validate_config(config)
    strategy = make_strategy(config.strategy)
    outdir = _output_dir(workdir, strategy)
    os.makedirs(outdir, exist_ok=True)
    _save_config(config, outdir)
    keras.utils.set_random_seed(config.seed)
    start = time.time()
    train, validation, test = _datasets(config, drop_remainder=strategy.num_replicas_in_sync > 1)
    steps_per_epoch = int(train.cardinality())
    with strategy.scope():
        model = build_model(config, cdl_config, train)
        fitted = _with_teacher(model, config, train)
        fitted.compile(optimizer=_optimizer(config, steps_per_epoch), **_compile_args())
    _check_split_at(model, config)
    epoch_log = EpochLog(os.path.join(outdir, "epochs.json"))
    callbacks = [
        epoch_log,  # before the backup: see `EpochLog`
        keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup")),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.TensorBoard(os.path.join(outdir, "tensorboard")),
    ]
    if config.mode in CDL_MODES:
        callbacks += [RateSchedule.warmup(config.rate_warmup_epochs), RateLogger(os.path.join(outdir, "tensorboard"))]
        if config.final_kappa:
            callbacks.append(SoftnessSchedule(config.cdl.init_kappa, config.final_kappa, config.epochs))
    history = fitted.fit(train, epochs=config.epochs, validation_data=validation, callbacks=callbacks,
                         verbose=config.verbose)
    if fitted.stop_training and any(not np.isfinite(v) for v in history.history.get("loss", [0.0])):
        raise FloatingPointError("training stopped on a NaN loss; lower the learning rate or the lambdas")
    train_time = epoch_log.earlier_seconds + time.time() - start
    with strategy.scope():
        if fitted is not model:
            model.compile(**_compile_args())
        if config.mode in CDL_MODES and config.bn_reestimate_steps:
            reestimate_batchnorm(model, train, steps=config.bn_reestimate_steps)
        model.save(os.path.join(outdir, "model.keras"))
        metrics = evaluate(model, config, test, validation)
    metrics.update(
        train_time_s=train_time, epochs=config.epochs, strategy=config.strategy,
        replicas=strategy.num_replicas_in_sync,
        history=epoch_log.history,
    )
    if "communication" in metrics:
        write_summaries(os.path.join(outdir, "tensorboard"), metrics["communication"], config.epochs)
    atomic_write_json(os.path.join(outdir, "metrics.json"), metrics)
    return metrics


def evaluate(model, config, test, validation=None) -> Dict[str, Any]:
    """Hard-quantized test and validation accuracy (``None`` without a validation split), rates
    and parameter counts of a trained model."""
    metrics: Dict[str, Any] = {
        "mode": config.mode, "model": config.model, "dataset": config.dataset,
        **_split_metrics(model, "test", test), **_split_metrics(model, "validation", validation),
        "params": int(sum(w.shape.num_elements() for w in model.weights if w.dtype.is_floating and w.trainable)),
    }
    if config.mode in CDL_MODES:
        x = _first_batch(test, min(1000, config.batch_size * 8))
        report = rate_report(model, x)
        totals = report.totals
        metrics.update(
            bits_per_weight=totals["bits_per_weight"],
            bits_per_weight_soft=totals["bits_per_weight_soft"],
            bits_per_activation=totals["bits_per_activation"],
            bits_per_activation_soft=totals["bits_per_activation_soft"],
            quantized_weights=totals["quantized_weights"],
            weight_bits_total=totals["weight_bits_total"],
            layers=[dataclasses.asdict(t) for t in report.tensors],
            cdl=dataclasses.asdict(validate_config(config)),
            communication=communication_report(model, config.split_at, x),
        )
    return metrics


def _split_metrics(model, split: str, dataset) -> Dict[str, Optional[float]]:
    """``<split>_accuracy``, ``_error`` and ``_loss`` of ``model`` on ``dataset`` (each ``None`` without one)."""
    if dataset is None:
        return dict.fromkeys((f"{split}_accuracy", f"{split}_error", f"{split}_loss"))
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    accuracy = float(results["accuracy"])
    return {f"{split}_accuracy": accuracy, f"{split}_error": 1.0 - accuracy, f"{split}_loss": float(results["loss"])}


def load_run(workdir: str):
    """``(config, model)`` of a finished run: the architecture from its config, the weights from its file.

    TF-MOT's 8-bit models do not reload through `load_model`, so the model is rebuilt.
    """
    if not is_finished_run(workdir):
        raise FileNotFoundError(f"{workdir!r} is not a finished run directory: no config.json and model.keras")
    config = read_run_config(workdir)
    config.init_from = ""  # the weights come from the run itself, not from where it started
    config.distill.teacher = ""
    model = build_model(config, validate_config(config))
    model.load_weights(os.path.join(workdir, "model.keras"))
    return config, model


def evaluate_workdir(workdir: str, data_dir: Optional[str] = None) -> Dict[str, Any]:
    """Re-evaluate the saved model of a finished run on its test set and validation split."""
    config, model = load_run(workdir)
    if data_dir:
        config.data_dir = data_dir
    model.compile(**_compile_args())
    _, validation, test = _datasets(config)
    return evaluate(model, config, test, validation)
