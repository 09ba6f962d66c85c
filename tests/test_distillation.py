"""Knowledge distillation: the loss and the Distiller in `model.fit` (a distilled run: test_training)."""
import numpy as np
import pytest
import tf_keras as keras

from cdl_tf.distillation import Distiller, distillation_loss


def test_distillation_loss_is_tempered_kl():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(8, 10)).astype("float32"), rng.normal(size=(8, 10)).astype("float32")
    temperature = 3.0
    p = np.exp(t / temperature) / np.exp(t / temperature).sum(-1, keepdims=True)
    r = np.exp(s / temperature) / np.exp(s / temperature).sum(-1, keepdims=True)
    expected = temperature**2 * np.mean(np.sum(p * np.log(p / r), -1))
    assert float(distillation_loss(t, s, temperature)) == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(t, t, temperature)) == pytest.approx(0.0, abs=1e-6)


def _mlp(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.layers.Dense(16, activation="relu", input_shape=(4,)), keras.layers.Dense(3)])


def test_distiller_trains_only_the_student_towards_the_teacher():
    teacher, student = _mlp(0), _mlp(1)
    x = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
    y = np.argmax(teacher.predict(x, verbose=0), -1)
    frozen = [w.copy() for w in teacher.get_weights()]
    distiller = Distiller(student, teacher, weight=1.0, temperature=2.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    before = float(distillation_loss(teacher(x), student(x), 2.0))
    history = distiller.fit(x, y, batch_size=32, epochs=20, verbose=0, validation_data=(x, y))
    after = float(distillation_loss(teacher(x), student(x), 2.0))
    assert after < 0.2 * before  # weight 1: the student fits the teacher's soft labels
    for w, v in zip(frozen, teacher.get_weights()):
        np.testing.assert_array_equal(w, v)
    assert {"loss", "distillation_loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    assert "val_distillation_loss" not in history.history
    assert history.history["accuracy"][-1] > 0.9  # the teacher's argmax is the label


def test_distiller_rejects_bad_arguments():
    for weight in (0.0, 1.5):
        with pytest.raises(ValueError, match="weight"):
            Distiller(_mlp(1), _mlp(0), weight=weight, temperature=2.0)
    with pytest.raises(ValueError, match="temperature"):
        Distiller(_mlp(1), _mlp(0), weight=0.5, temperature=0.0)
    wide = keras.Sequential([keras.layers.Dense(5, input_shape=(4,))])
    with pytest.raises(ValueError, match="output shape"):
        Distiller(_mlp(1), wide, weight=0.5, temperature=2.0)
