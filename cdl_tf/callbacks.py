"""Keras callbacks for CDL training."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Callable

import tensorflow as tf
import tf_keras as keras

from cdl_tf.distillation import Distiller
from cdl_tf.io import atomic_write_json
from cdl_tf.quantize import model_quantizers
from cdl_tf.report import rate_report


def _trained_model(model: keras.Model) -> keras.Model:
    """The model whose quantizers a callback acts on: the fitted model, or a `Distiller`'s student."""
    return model.student if isinstance(model, Distiller) else model


class RateSchedule(keras.callbacks.Callback):
    """Scale every rate weight (``lambda_w``, ``lambda_a``) by ``multiplier(epoch)``.

    ``RateSchedule.warmup(5)`` ramps the rate terms linearly from 0 to their
    configured weight over the first 5 epochs.
    """

    def __init__(self, multiplier: Callable[[int], float]):
        super().__init__()
        self.multiplier = multiplier

    @classmethod
    def warmup(cls, epochs: int) -> "RateSchedule":
        if epochs < 0:
            raise ValueError(f"warm-up epochs must be >= 0, got {epochs}")
        return cls(lambda epoch: min(1.0, (epoch + 1) / (epochs + 1)))

    def on_epoch_begin(self, epoch, logs=None):
        m = float(self.multiplier(epoch))
        for _, quantizer, variables in model_quantizers(_trained_model(self.model)):
            variables["rate_weight"].assign(quantizer.rate_weight * m)


class SoftnessSchedule(keras.callbacks.Callback):
    """Anneal every quantizer's hardness ``kappa = alpha q^2`` geometrically over training.

    ``kappa_e = kappa_0 (kappa_1 / kappa_0)^(e / (E - 1))`` at epoch ``e`` of ``E``: soft
    CPMFs early keep the rate gradient alive inside the bins, hard ones late train on what
    inference sees. Use with ``train_softness=False`` and ``softness_param="kappa"``.
    """

    def __init__(self, kappa_start: float, kappa_end: float, epochs: int):
        super().__init__()
        if kappa_start <= 0 or kappa_end <= 0 or epochs < 1:
            raise ValueError(f"need kappa_start, kappa_end > 0 and epochs >= 1; got {kappa_start}, {kappa_end}, {epochs}")
        self.kappa_start, self.kappa_end, self.epochs = float(kappa_start), float(kappa_end), int(epochs)

    def kappa(self, epoch: int) -> float:
        t = min(epoch, self.epochs - 1) / max(self.epochs - 1, 1)
        return self.kappa_start * (self.kappa_end / self.kappa_start) ** t

    def on_epoch_begin(self, epoch, logs=None):
        log_kappa = math.log(self.kappa(epoch))
        for name, quantizer, variables in model_quantizers(_trained_model(self.model)):
            if quantizer.softness_param != "kappa" or quantizer.train_softness:
                raise ValueError(f"{name}: SoftnessSchedule needs softness_param='kappa' and train_softness=False")
            variables["log_softness"].assign(log_kappa)


class RateLogger(keras.callbacks.Callback):
    """Write per-tensor weight rates and every quantizer's ``q``, ``alpha`` to TensorBoard each epoch."""

    def __init__(self, logdir: str):
        super().__init__()
        self.logdir = logdir
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.logdir, "rates"))
        report = rate_report(_trained_model(self.model))
        with self._writer.as_default(step=epoch):
            for t in report.tensors:
                tf.summary.scalar(f"q/{t.name}", t.q)
                tf.summary.scalar(f"alpha/{t.name}", t.alpha)
                if t.hard_bits is not None:
                    tf.summary.scalar(f"bits/{t.name}", t.hard_bits)
                    tf.summary.scalar(f"bits_soft/{t.name}", t.soft_bits)
            for key in ("bits_per_weight", "bits_per_weight_soft"):
                tf.summary.scalar(f"total/{key}", report.totals[key])
        self._writer.flush()


class EpochLog(keras.callbacks.Callback):
    """Each finished epoch's logs and seconds, written to ``path`` and kept across resumes.

    `keras.callbacks.BackupAndRestore` resumes an interrupted run at the epoch after its last
    backup, and ``fit`` then reports only the epochs it ran. This log keeps the earlier
    epochs (those before the first one this ``fit`` runs), so `history` covers every epoch of
    the run and `earlier_seconds` is the time spent in the ones this ``fit`` did not run.
    Place it before `BackupAndRestore`: an epoch is logged before its backup is written, and
    one logged but not backed up runs again and is logged again.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.epochs: list[dict] = []
        self.earlier_seconds = 0.0
        self._previous: list[dict] | None = None
        self._start = 0.0

    def on_train_begin(self, logs=None):
        self._previous = []
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self._previous = json.load(f)["epochs"]

    def on_epoch_begin(self, epoch, logs=None):
        if self._previous is not None:  # the first epoch of this fit: keep the run's earlier ones
            self.epochs = [e for e in self._previous if e["epoch"] < epoch]
            self.earlier_seconds = sum(e["seconds"] for e in self.epochs)
            self._previous = None
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch, "seconds": time.time() - self._start,
                 "logs": {k: float(v) for k, v in (logs or {}).items()}}
        self.epochs.append(entry)
        atomic_write_json(self.path, {"epochs": self.epochs})

    @property
    def history(self) -> dict[str, list[float]]:
        """``History.history`` of every logged epoch of the run, in epoch order."""
        keys = dict.fromkeys(k for e in self.epochs for k in e["logs"])
        return {k: [e["logs"][k] for e in self.epochs if k in e["logs"]] for k in keys}
