"""EPR as a weight quantizer: its probability model, its rate's gradient, training and export."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import cdl_tf
from cdl_tf.epr import EPRWeightQuantizer, interpolated_bits
from cdl_tf.quantize import model_quantizers
from cdl_tf.training import ConfigError, train_and_evaluate, validate_config
from conftest import config_module

lenet300_mnist = config_module("lenet300_mnist")


def test_interpolated_bits_reads_the_pmf_between_levels():
    pmf = tf.constant([0.1, 0.2, 0.3, 0.4], tf.float64)
    t = tf.constant([-2.0, -1.0, -0.5, 0.25, 1.0, 7.0, -9.0], tf.float64)  # alphabet {-2 .. 1}
    want = -np.log2([0.1, 0.2, 0.25, 0.325, 0.4, 0.4, 0.1])
    np.testing.assert_allclose(interpolated_bits(t, pmf, lo=-2).numpy(), want, rtol=1e-12)


def _quantized(lambda_w=1.0):
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(keras.layers.Dense(8, name="hidden")(inputs)))
    config = cdl_tf.CDLConfig(mode="epr", quantize_activations=False, first_layer_bits=None, last_layer_bits=None,
                              lambda_w=lambda_w)
    return cdl_tf.quantize_model(model, config)


def test_probability_model_starts_at_the_first_latents_histogram():
    qmodel = _quantized()
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    qmodel(x, training=True)
    found = [(q, v) for _, q, v in model_quantizers(qmodel)]
    assert found and all(isinstance(q, EPRWeightQuantizer) for q, _ in found)
    for q, v in found:
        counts = cdl_tf.ops.hard_index_counts(_latent(qmodel, q), tf.exp(v["log_q"]), q.lo, q.hi).numpy()
        np.testing.assert_allclose(q.pmf(v).numpy(), (counts + 1) / (counts + 1).sum(), rtol=1e-5)


def _latent(qmodel, quantizer):
    from cdl_tf.layer_registry import quantized_weight

    for layer in qmodel.layers:
        try:
            return quantized_weight(layer, quantizer)
        except ValueError:
            continue
    raise AssertionError("no layer quantizes it")


def test_rate_reaches_the_weights_the_step_and_the_probability_model():
    qmodel = _quantized(lambda_w=1.0)
    x = np.random.default_rng(1).normal(size=(16, 6)).astype(np.float32)
    qmodel(x, training=True)
    with tf.GradientTape() as tape:
        qmodel(x, training=True)
        rate = tf.add_n(qmodel.losses)
    _, quantizer, variables = model_quantizers(qmodel)[0]
    sources = [_latent(qmodel, quantizer), variables["log_q"], variables["density"]]
    grads = tape.gradient(rate, sources)
    assert float(rate) > 0
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    qmodel(x, training=False)
    assert not qmodel.losses


def test_epr_codes_weights_only(data_dir):
    from test_training import small

    c = small(lenet300_mnist, data_dir, mode="epr")
    c.cdl.quantize_activations = True
    with pytest.raises(ConfigError, match=r"cdl\.quantize_activations: mode 'epr' codes weights only"):
        validate_config(c)


@pytest.mark.slow
def test_epr_run_trains_reloads_and_exports(data_dir, tmp_path):
    from test_training import small
    from tflite_export.decode import accuracy_on_test_set
    from tflite_export.export import export_workdir

    c = small(lenet300_mnist, data_dir, mode="epr")
    c.cdl.quantize_activations, c.cdl.lambda_w = False, 0.5
    metrics = train_and_evaluate(c, str(tmp_path / "epr"))
    assert metrics["test_accuracy"] > 0.5 and 0 < metrics["bits_per_weight"] < 8  # 8-bit first and last layers
    report = export_workdir(str(tmp_path / "epr"), str(tmp_path / "export"))
    assert 0 < report.bytes.cdlz_ans < report.bytes.float32_weights / 4  # under 8 bits per weight
    # The coded file's model is the trained one: the same test accuracy as training measured.
    assert report.accuracy.keras_q_u == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert report.float_values == 300 + 100 + 10  # the float biases; the probability model is not coded
    cdlz = str(tmp_path / "export" / "weights.cdlz")
    for layerwise in (False, True):  # decoded whole and layer by layer
        accuracy, _ = accuracy_on_test_set(cdlz, str(tmp_path / "epr"), layerwise=layerwise)
        assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)
