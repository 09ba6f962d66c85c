"""Knowledge distillation: a float teacher's soft labels in the training loss of a CDL model.

With student logits ``s``, teacher logits ``t``, labels ``y``, weight ``a`` and temperature ``T``,

    L = (1 - a) CE(y, s) + a T^2 KL(softmax(t / T) || softmax(s / T)) + sum of the student's losses,

the last being the rate terms ``lambda R`` of the CDL quantizers (and any weight decay). The
``T^2`` keeps the soft-label gradient on the scale of the hard-label one (Hinton et al. 2015).
The teacher runs in inference mode and is not trained.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from cdl_tf.quantize import InitializesQuantizers, model_quantizers


def distillation_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor, temperature: float) -> tf.Tensor:
    """``T^2 KL(softmax(t / T) || softmax(s / T))``, averaged over the batch."""
    log_t = tf.nn.log_softmax(teacher_logits / temperature)
    log_s = tf.nn.log_softmax(student_logits / temperature)
    return temperature**2 * tf.reduce_mean(tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1))


class Distiller(InitializesQuantizers, keras.Model):
    """Trains ``student`` with ``model.fit`` on hard labels and ``teacher``'s soft labels.

    Calling the distiller calls the student, so compiled metrics, evaluation and callbacks
    see the student's logits; under `tf.distribute` the first step initialises the
    student's quantizers. Save ``distiller.student``, not the distiller.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, weight: float, temperature: float, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"distillation weight must be in (0, 1], got {weight}")
        if temperature <= 0.0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        if student.output_shape != teacher.output_shape:
            raise ValueError(f"teacher output shape {teacher.output_shape} differs from the student's "
                             f"{student.output_shape}")
        self.student, self.teacher = student, teacher
        self.teacher.trainable = False
        self.weight, self.temperature = float(weight), float(temperature)
        self._loss = keras.metrics.Mean(name="loss")
        self._soft_loss = keras.metrics.Mean(name="distillation_loss")

    @property
    def metrics(self):
        """Ours, the compiled metrics and the student's layer metrics (e.g. bits per weight), not the
        compiled hard-label loss tracker (our ``loss`` is the whole objective)."""
        hard = self.compiled_loss.metrics if self.compiled_loss is not None else []
        return [m for m in super().metrics if all(m is not h for h in hard)]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _quantizers(self):
        return model_quantizers(self.student)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_logits = self.teacher(x, training=False)
        with tf.GradientTape() as tape:
            logits = self.student(x, training=True)
            hard = self.compiled_loss(y, logits, sample_weight)
            soft = distillation_loss(teacher_logits, logits, self.temperature)
            loss = (1.0 - self.weight) * hard + self.weight * soft + sum(self.student.losses, 0.0)
        self.optimizer.minimize(loss, self.student.trainable_variables, tape=tape)
        self._loss.update_state(loss)
        self._soft_loss.update_state(soft)
        self.compiled_metrics.update_state(y, logits, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        """The student's hard-label loss plus its own losses (as without distillation) and metrics."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        logits = self.student(x, training=False)
        self._loss.update_state(self.compiled_loss(y, logits, sample_weight,
                                                   regularization_losses=self.student.losses))
        self.compiled_metrics.update_state(y, logits, sample_weight)
        return {m.name: m.result() for m in self.metrics if m is not self._soft_loss}
