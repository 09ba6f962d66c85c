"""The rate-distortion objective: the Fisher-weighted distortion, its gradient, the diagonal
Fisher estimate, and training with the term from a float run."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import cdl_tf
from cdl_tf import ops
from cdl_tf.layer_registry import quantized_weight, weight_quantizers
from cdl_tf.quantize import model_quantizers
from cdl_tf.rate_distortion import diagonal_fisher, set_importance
from cdl_tf.training import ConfigError, build_model, load_run, train_and_evaluate, validate_config
from conftest import config_module

lenet300_mnist = config_module("lenet300_mnist")


def test_weighted_distortion_value_and_gradient():
    rng = np.random.default_rng(0)
    theta = tf.constant(rng.normal(0, 0.3, 200))
    importance = tf.constant(rng.uniform(0, 2, 200))
    q = tf.constant(0.07, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([theta, q])
        d = ops.weighted_distortion(theta, q, -7, 7, importance)
    g_theta, g_q = tape.gradient(d, [theta, q])
    levels = np.clip(np.round(theta.numpy() / 0.07), -7, 7)
    error = 0.07 * levels - theta.numpy()
    assert float(d) == pytest.approx(0.5 * np.sum(importance.numpy() * error ** 2), rel=1e-12)
    np.testing.assert_allclose(g_theta.numpy(), -importance.numpy() * error, rtol=1e-12)
    assert float(g_q) == pytest.approx(np.sum(importance.numpy() * error * levels), rel=1e-12)
    assert np.abs(theta.numpy()).max() > 7 * 0.07  # the clipped ends are covered


def test_diagonal_fisher_is_the_mean_squared_per_example_gradient():
    """Softmax regression: d loss_n / d W = x_n (p_n - y_n)^T, d / d b = p_n - y_n."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, 4, 50)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc", bias_initializer="glorot_uniform")(inputs))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    fisher = diagonal_fisher(model, dataset, examples=40)
    w, b = (v.numpy().astype(np.float64) for v in model.layers[1].weights)
    logits = x[:40] @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = p - np.eye(4)[y[:40]]
    np.testing.assert_allclose(fisher[("fc", "kernel")], np.mean(np.einsum("ni,nj->nij", x[:40], residual) ** 2, 0),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fisher[("fc", "bias")], np.mean(residual ** 2, 0), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="fewer than the 60"):
        diagonal_fisher(model, dataset, examples=60)


def _quantized_mlp(distortion_weight):
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(keras.layers.Dense(8, name="hidden")(inputs)))
    config = cdl_tf.CDLConfig(mode="rcdl", quantize_activations=False, first_layer_bits=None, last_layer_bits=None,
                              distortion_weight=distortion_weight)
    return model, cdl_tf.quantize_model(model, config)


def test_quantizer_adds_the_distortion_to_the_training_loss():
    model, qmodel = _quantized_mlp(3.0)
    x = np.random.default_rng(2).normal(size=(16, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="set_importance"):
        qmodel(x, training=True)
    importance = {(l.name, a): np.random.default_rng(3).uniform(0, 1, getattr(l, a).shape).astype(np.float32)
                  for l in model.layers[1:] for a in ("kernel",)}
    assert set_importance(qmodel, importance) == 2
    qmodel(x, training=True)  # initialises the steps q
    qmodel(x, training=True)
    expected = 0.0
    for name, quantizer, variables in model_quantizers(qmodel):
        layer = name.split("/")[0].removeprefix("quant_")
        kernel = quantized_weight(qmodel.get_layer(f"quant_{layer}"), quantizer).numpy()  # the latent weights
        q = float(np.exp(variables["log_q"].numpy()))
        error = q * np.clip(np.round(kernel / q), quantizer.lo, quantizer.hi) - kernel
        expected += 3.0 * 0.5 * np.sum(importance[(layer, "kernel")] * error ** 2)
    assert expected > 0
    assert float(tf.add_n(qmodel.losses)) == pytest.approx(expected, rel=1e-5)  # the rate weights are 0
    qmodel(x, training=False)
    assert not qmodel.losses  # evaluation adds nothing


def test_a_quantizer_with_distortion_round_trips_its_config():
    _, qmodel = _quantized_mlp(0.5)
    quantizers = [q for _, q, _ in model_quantizers(qmodel)]
    again = type(quantizers[0]).from_config(quantizers[0].get_config())
    assert again == quantizers[0] and again.distortion_weight == 0.5


def test_distortion_needs_a_float_run_to_start_from(data_dir, tmp_path):
    from test_training import small

    c = small(lenet300_mnist, data_dir, mode="rcdl")
    c.cdl.distortion_weight = 1.0
    train = tf.data.Dataset.from_tensor_slices((np.zeros((4, 28, 28, 1), np.float32), np.zeros(4, np.int64))).batch(2)
    with pytest.raises(ConfigError, match=r"config\.cdl\.distortion_weight: .*init_from"):
        build_model(c, validate_config(c), train)
    c.cdl.distortion_weight = -1.0
    with pytest.raises(ConfigError, match="distortion_weight"):
        validate_config(c)


def _grid_error(workdir) -> float:
    """``sum (Q_u(w) - w)^2`` over the quantized weights of a finished run."""
    _, model = load_run(str(workdir))
    total = 0.0
    for layer in model.layers:
        for weight, quantizer, variables in weight_quantizers(layer):
            q = tf.exp(variables["log_q"])
            total += 2.0 * float(ops.weighted_distortion(weight, q, quantizer.lo, quantizer.hi, tf.ones_like(weight)))
    return total


@pytest.mark.slow
def test_training_with_distortion_from_a_float_run(data_dir, tmp_path):
    """The term's importance is set on every weight quantizer, and a strong term holds the latent
    weights nearer their grid points than the same run without it."""
    from test_training import small

    float_run = tmp_path / "float"
    train_and_evaluate(small(lenet300_mnist, data_dir, mode="float"), str(float_run))
    runs = {}
    for mu in (0.0, 300.0):
        c = small(lenet300_mnist, data_dir, mode="rcdl", init_from=str(float_run))
        c.cdl.distortion_weight, c.cdl.fisher_examples = mu, 64
        if mu:
            train = tf.data.Dataset.from_tensor_slices((np.random.default_rng(4).uniform(
                size=(64, 28, 28, 1)).astype(np.float32), np.zeros(64, np.int64))).batch(32)
            model = build_model(c, validate_config(c), train)
            weights = [q for _, q, _ in model_quantizers(model) if q.kind == "weight"]
            assert weights and all(q.importance is not None and float(tf.reduce_max(q.importance)) > 0
                                   for q in weights)
        metrics = train_and_evaluate(c, str(tmp_path / f"mu{mu}"))
        assert np.isfinite(metrics["history"]["loss"][-1]) and metrics["test_accuracy"] > 0.5
        runs[mu] = _grid_error(tmp_path / f"mu{mu}")
    assert runs[300.0] < 0.8 * runs[0.0], runs  # same seed and data: only the term differs
