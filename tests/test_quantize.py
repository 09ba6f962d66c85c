"""quantize_model / quantize_apply, training with fit, rates, serialisation, errors."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import cdl_tf


def small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="dw")(x)
    x = keras.layers.Conv2D(12, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(24, activation="relu", name="fc")(x)
    out = keras.layers.Dense(4, name="logits")(x)
    return keras.Model(inp, out)


def random_data(n=192, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 12, 12, 3).astype("float32")
    # A learnable target: the sign pattern of two channel means.
    m = x[..., :2].mean(axis=(1, 2))
    y = (m[:, 0] > 0).astype("int64") * 2 + (m[:, 1] > 0).astype("int64")
    return x, y


def compile_(model):
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def test_plan_of_sites_bits_and_alphabets():
    qm = cdl_tf.quantize_model(small_cnn(), cdl_tf.CDLConfig())
    plan = {name: (q.kind, q.bits, q.lo, q.hi) for name, q, _ in cdl_tf.model_quantizers(qm)}
    assert plan == {
        "quant_conv1/kernel": ("weight", 8, -127, 127),  # first layer at 8 bits
        "quant_relu1/output": ("activation", 8, 0, 255),  # ...and its ReLU, past the BatchNorm
        "quant_dw/depthwise_kernel": ("weight", 4, -7, 7),
        "quant_dw/output": ("activation", 4, 0, 15),
        "quant_conv2/kernel": ("weight", 4, -7, 7),
        "quant_conv2/output": ("activation", 4, 0, 15),
        "quant_fc/kernel": ("weight", 4, -7, 7),
        "quant_fc/output": ("activation", 4, 0, 15),
        "quant_logits/kernel": ("weight", 8, -127, 127),  # last layer
        "quant_logits/output": ("activation", 8, -127, 127),  # signed: no ReLU
    }
    # conv1 feeds BatchNorm, so its own (linear) output is not a site; BN stays float.
    assert not qm.get_layer("quant_conv1")._output_quantizers
    assert isinstance(qm.get_layer("bn1"), keras.layers.BatchNormalization)


def test_config_overrides_and_skips():
    cfg = cdl_tf.CDLConfig(
        weight_bits=3, activation_bits=2, first_layer_bits=None, last_layer_bits=6,
        layer_bits={"conv2": (5, 3)}, skip_layers=("fc",), weight_alphabet="full",
    )
    qm = cdl_tf.quantize_model(small_cnn(), cfg)
    plan = {name: (q.bits, q.lo, q.hi) for name, q, _ in cdl_tf.model_quantizers(qm)}
    assert plan["quant_conv1/kernel"] == (3, -4, 3)
    assert plan["quant_conv2/kernel"] == (5, -16, 15)
    assert plan["quant_conv2/output"] == (3, 0, 7)
    assert plan["quant_logits/kernel"] == (6, -32, 31)
    assert not any(n.startswith("quant_fc") for n in plan)
    assert isinstance(qm.get_layer("fc"), keras.layers.Dense)


@pytest.fixture(scope="module")
def fitted():
    """``fitted(mode)``: ``(model, history, evaluation before, evaluation after)`` of the small CNN
    quantized in ``mode`` and fitted for 6 epochs, trained once per mode for the module."""
    done = {}

    def get(mode):
        if mode not in done:
            x, y = random_data()
            qm = compile_(cdl_tf.quantize_model(small_cnn(), cdl_tf.CDLConfig(mode=mode, lambda_w=0.01, lambda_a=0.01)))
            before = qm.evaluate(x, y, verbose=0, return_dict=True)
            hist = qm.fit(x, y, epochs=6, batch_size=32, verbose=0)
            done[mode] = qm, hist.history, before, qm.evaluate(x, y, verbose=0, return_dict=True)
        return done[mode]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cdl", "rcdl", "ste"])
def test_fit_trains_in_each_mode(fitted, mode):
    _, logs, before, after = fitted(mode)
    assert {"bits_per_weight", "bits_per_activation"} <= set(logs)
    assert all(np.isfinite(logs["loss"]))
    assert logs["loss"][-1] < logs["loss"][0]
    assert after["loss"] < before["loss"]
    assert 0 < logs["bits_per_weight"][-1] < 8 and 0 < logs["bits_per_activation"][-1] < 8


def test_fit_and_evaluate_trace_their_steps_once(fitted):
    """Keras creates the optimizer's slots and the compiled metrics in a step's first trace, and a
    `tf.function` that creates variables is traced twice; the quantized model creates them first."""
    qm = fitted("rcdl")[0]  # evaluated, then fitted
    steps = {name: getattr(qm, name)._steady for name in ("train_function", "test_function")}
    assert {name: f.experimental_get_tracing_count() for name, f in steps.items()} == {
        "train_function": 1, "test_function": 1}


@pytest.mark.slow
def test_activation_count_sample_estimates_the_activation_rate(fitted):
    """Activation quantizers estimate their rates from a subset; weights keep exact counts."""
    x, y = random_data()
    config = cdl_tf.CDLConfig(mode="cdl", lambda_w=0.01, lambda_a=0.01, activation_count_sample=256)
    qm = compile_(cdl_tf.quantize_model(small_cnn(), config))
    samples = {q.kind: q.count_sample for _, q, _ in cdl_tf.model_quantizers(qm)}
    assert samples == {"weight": 0, "activation": 256}
    hist = qm.fit(x, y, epochs=2, batch_size=32, verbose=0).history
    assert all(np.isfinite(hist["loss"])) and hist["loss"][-1] < hist["loss"][0]
    # The soft rate of a batch from 256 of its values vs from all of them, on the same weights.
    # With ~16 levels, a 256-value plug-in entropy is off by ~0.04 bits (bias) +- ~0.06 (spread):
    # 0.25 is about four spreads.
    exact = fitted("cdl")[0]  # `config` with exact counts; it takes the weights of `qm`
    assert {q.count_sample for _, q, _ in cdl_tf.model_quantizers(exact)} == {0}
    exact.set_weights(qm.get_weights())
    bits = [m.fit(x[:32], y[:32], epochs=1, batch_size=32, verbose=0, shuffle=False).history["bits_per_activation"][0]
            for m in (qm, exact)]
    assert abs(bits[0] - bits[1]) < 0.25, bits


@pytest.mark.slow
def test_cdl_forward_tensors_lie_on_their_grids():
    x, _ = random_data(32)  # the batch size of the other tests: their compiled kernels apply
    qm = cdl_tf.quantize_model(small_cnn(), cdl_tf.CDLConfig(mode="cdl"))
    qm(x, training=True)  # initialise steps
    for name, quantizer, variables in cdl_tf.model_quantizers(qm):
        q = float(quantizer.step_and_softness(variables)[0])
        if quantizer.kind == "weight":
            wrapper = qm.get_layer(name.split("/")[0])
            w = wrapper._weight_vars[0][0]
            out = quantizer(w, True, variables).numpy()
        else:
            out = quantizer(tf.random.normal([4, 5, 5, 3]), True, variables).numpy()
        idx = out / q
        np.testing.assert_allclose(idx, np.round(idx), atol=1e-4, err_msg=name)
        assert idx.min() >= quantizer.lo - 1e-4 and idx.max() <= quantizer.hi + 1e-4
    # Whole-model check: every activation site's training-mode output is on its grid.
    sites = [l for l in qm.layers if getattr(l, "_output_quantizers", None)]
    probe = keras.Model(qm.inputs, [l.output for l in sites])
    for layer, out in zip(sites, probe(x, training=True)):
        q = float(tf.exp(layer._output_quantizer_vars["log_q"]))
        idx = out.numpy() / q
        np.testing.assert_allclose(idx, np.round(idx), atol=1e-3, err_msg=layer.name)


def test_inference_uses_nearest_points():
    x, _ = random_data(16)
    qm = cdl_tf.quantize_model(small_cnn(), cdl_tf.CDLConfig(mode="cdl"))
    a = qm(x, training=False).numpy()
    b = qm(x, training=False).numpy()
    np.testing.assert_array_equal(a, b)  # no sampling at inference
    wrapper = qm.get_layer("quant_logits")
    q = float(tf.exp(wrapper._output_quantizer_vars["log_q"]))
    np.testing.assert_allclose(a / q, np.round(a / q), atol=1e-3)


def _bits_after_training(lambda_w):
    x, y = random_data()
    cfg = cdl_tf.CDLConfig(mode="rcdl", lambda_w=lambda_w, quantize_activations=False, seed=3)
    qm = compile_(cdl_tf.quantize_model(small_cnn(seed=1), cfg))
    qm.fit(x, y, epochs=8, batch_size=32, verbose=0)
    return cdl_tf.rate_report(qm).totals["bits_per_weight"]


@pytest.mark.slow
def test_raising_lambda_w_lowers_bits_per_weight():
    low, high = _bits_after_training(0.0), _bits_after_training(0.5)
    assert high < 0.8 * low, (low, high)


@pytest.mark.slow
def test_rate_report_totals_match_rows():
    x, _ = random_data(64)
    qm = cdl_tf.quantize_model(small_cnn(), cdl_tf.CDLConfig())
    report = cdl_tf.rate_report(qm, x)
    weights = [t for t in report.tensors if t.kind == "weight"]
    acts = [t for t in report.tensors if t.kind == "activation"]
    assert len(weights) == 5 and len(acts) == 5
    assert all(t.hard_bits is not None and 0 <= t.hard_bits <= t.bits for t in report.tensors)
    tot = report.totals
    n_w = sum(t.count for t in weights)
    assert tot["quantized_weights"] == n_w == sum(
        qm.get_layer(n)._weight_vars[0][0].shape.num_elements()
        for n in ("quant_conv1", "quant_dw", "quant_conv2", "quant_fc", "quant_logits")
    )
    np.testing.assert_allclose(tot["bits_per_weight"], sum(t.count * t.hard_bits for t in weights) / n_w)
    np.testing.assert_allclose(tot["weight_bits_total"], sum(t.count * t.hard_bits for t in weights))
    # Hard entropy from the report equals that of the exported indices.
    for name, idx in cdl_tf.hard_indices(qm).items():
        _, counts = np.unique(idx, return_counts=True)
        p = counts / counts.sum()
        row = next(t for t in weights if t.name == name)
        np.testing.assert_allclose(row.hard_bits, -(p * np.log2(p)).sum(), rtol=1e-5)
    assert "bits/weight" in report.format_table()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel"])
def test_save_and_load_predicts_identically(fitted, tmp_path, fmt):
    x, _ = random_data(64)
    qm = fitted("cdl")[0]
    path = str(tmp_path / {"keras": "m.keras", "h5": "m.h5", "savedmodel": "sm"}[fmt])
    qm.save(path)
    with cdl_tf.quantize_scope():
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qm.predict(x, verbose=0))
    if fmt != "savedmodel":
        got = {n: (q.bits, q.lo, q.hi, q.mode) for n, q, _ in cdl_tf.model_quantizers(loaded)}
        want = {n: (q.bits, q.lo, q.hi, q.mode) for n, q, _ in cdl_tf.model_quantizers(qm)}
        assert got == want


@pytest.mark.slow
def test_reestimate_batchnorm_sets_statistics_of_hard_model(fitted):
    x, _ = random_data(128)
    qm = fitted("ste")[0]  # its BatchNorm statistics are read by no other test
    before = qm.get_layer("bn1").moving_mean.numpy()
    used = cdl_tf.reestimate_batchnorm(qm, [x[i : i + 32] for i in range(0, 128, 32)], steps=3)
    assert used == 3
    # The moving mean equals the average of the hard model's batch means of conv1's output.
    probe = keras.Model(qm.inputs, qm.get_layer("quant_conv1").output)
    means = [probe(x[i : i + 32], training=False).numpy().mean(axis=(0, 1, 2)) for i in range(0, 96, 32)]
    np.testing.assert_allclose(qm.get_layer("bn1").moving_mean.numpy(), np.mean(means, 0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(qm.get_layer("bn1").moving_mean.numpy(), before)
    assert not any(q.force_hard for _, q, _ in cdl_tf.model_quantizers(qm))


@pytest.mark.slow
def test_rate_schedule_warms_up_lambdas(fitted):
    x, y = random_data(64)
    qm = fitted("cdl")[0]  # trained on: the schedule acts on the rate weights whatever the weights
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            _, q, v = cdl_tf.model_quantizers(self.model)[0]
            seen.append(float(v["rate_weight"]) / q.rate_weight)

    qm.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[cdl_tf.RateSchedule.warmup(2), Probe()])
    np.testing.assert_allclose(seen, [1 / 3, 2 / 3, 1.0, 1.0], rtol=1e-6)


def test_selective_annotation_with_quantize_apply():
    inp = keras.Input((10,))
    x = cdl_tf.quantize_annotate_layer(keras.layers.Dense(8, activation="relu", name="a"))(inp)
    out = keras.layers.Dense(3, name="b")(x)
    qm = cdl_tf.quantize_apply(keras.Model(inp, out), cdl_tf.CDLConfig())
    names = [n for n, _, _ in cdl_tf.model_quantizers(qm)]
    assert names == ["quant_a/kernel", "quant_a/output"]
    assert isinstance(qm.get_layer("b"), keras.layers.Dense)


def test_sequential_model_is_accepted():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(2)])
    qm = cdl_tf.quantize_model(model, cdl_tf.CDLConfig())
    assert len(cdl_tf.model_quantizers(qm)) == 4


def test_keras3_model_gets_a_clear_error():
    import keras as keras3

    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    with pytest.raises(TypeError, match="tf_keras"):
        cdl_tf.quantize_model(model, cdl_tf.CDLConfig())


def test_subclassed_model_gets_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(tf.zeros([1, 3]))
    with pytest.raises(TypeError, match="Functional"):
        cdl_tf.quantize_model(net, cdl_tf.CDLConfig())


def test_unsupported_layer_gets_a_clear_error():
    inp = keras.Input((8, 8, 2))
    x = keras.layers.SeparableConv2D(4, 3, name="sep")(inp)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    with pytest.raises(TypeError, match="'sep'.*skip_layers"):
        cdl_tf.quantize_model(model, cdl_tf.CDLConfig())
    qm = cdl_tf.quantize_model(model, cdl_tf.CDLConfig(skip_layers=("sep",)))
    assert isinstance(qm.get_layer("sep"), keras.layers.SeparableConv2D)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(weight_bits=1), "weight_bits"),
        (dict(activation_bits=9), "activation_bits"),
        (dict(mode="fast"), "mode"),
        (dict(lambda_w=-1.0), "lambda_w"),
        (dict(activation_window=0), "activation_window"),
        (dict(layer_bits={"x": (4,)}), "layer_bits"),
        (dict(init_kappa=0.0), "init_kappa"),
        (dict(weight_init_step_scale=-2.0), "weight_init_step_scale"),
        (dict(activation_count_sample=-1), "activation_count_sample"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        cdl_tf.CDLConfig(**kwargs)


def test_step_gradient_scale_keeps_the_step_exact():
    """LSQ's scaled gradient of ``log q`` changes the gradient only: the step is ``exp(log q)`` bit
    for bit (what export and decoding use), and its gradient is ``s q`` with ``s = 1/sqrt(N hi)``."""
    from cdl_tf.quantizers import CDLWeightQuantizer

    layer = keras.layers.Layer()
    quantizer = CDLWeightQuantizer(bits=4, lo=-7, hi=7)
    weights = quantizer.build((3, 3, 16, 32), "kernel", layer)
    s = 1.0 / np.sqrt(3 * 3 * 16 * 32 * 7)
    rng = np.random.RandomState(0)
    for log_q in rng.uniform(-8.0, 1.0, 200).astype(np.float32):
        weights["log_q"].assign(log_q)
        with tf.GradientTape() as tape:
            q, _ = quantizer.step_and_softness(weights, grad_scale=True)
        assert q.numpy() == tf.exp(weights["log_q"]).numpy(), log_q
        np.testing.assert_allclose(tape.gradient(q, weights["log_q"]).numpy(), s * q.numpy(), rtol=1e-6)


def test_weight_init_step_scale_multiplies_the_weights_initial_step_only():
    x, _ = random_data(32)
    steps = []
    for scale in (1.0, 3.0):
        qm = cdl_tf.quantize_model(small_cnn(), cdl_tf.CDLConfig(weight_init_step_scale=scale))
        qm(x, training=False)
        steps.append({name: float(q.step_and_softness(v)[0]) for name, q, v in cdl_tf.model_quantizers(qm)})
    kinds = {name: quantizer.kind for name, quantizer, _ in cdl_tf.model_quantizers(qm)}
    assert sorted(set(kinds.values())) == ["activation", "weight"]
    for name, kind in kinds.items():
        if kind == "weight":
            assert steps[1][name] == pytest.approx(3.0 * steps[0][name], rel=1e-5), name
    # Activation steps are LSQ's on their (here differently quantized) inputs: scale 1.
    assert {q.init_step_scale for _, q, _ in cdl_tf.model_quantizers(qm) if q.kind == "activation"} == {1.0}


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="weight_bitz"):
        cdl_tf.CDLConfig.from_dict({"weight_bitz": 3})
    assert cdl_tf.CDLConfig.from_dict({"weight_bits": 3}).weight_bits == 3


def test_unknown_layer_names_in_config_are_rejected():
    with pytest.raises(ValueError, match="nope"):
        cdl_tf.quantize_model(small_cnn(), cdl_tf.CDLConfig(skip_layers=("nope",)))


@pytest.mark.slow
def test_biases_can_be_quantized_and_rate_constrained():
    x, y = random_data(96)
    cfg = cdl_tf.CDLConfig(quantize_biases=True, bias_bits=6, lambda_w=0.01)
    qm = compile_(cdl_tf.quantize_model(small_cnn(), cfg))
    plan = {name: (q.bits, q.rate_normalizer) for name, q, _ in cdl_tf.model_quantizers(qm) if q.kind == "weight"}
    assert plan["quant_conv2/bias"][0] == 6 and plan["quant_logits/bias"][0] == 6
    assert "quant_conv1/bias" not in plan  # conv1 has no bias
    n_weights = sum(v.shape.num_elements() for l in qm.layers for v, _, _ in getattr(l, "_weight_vars", []))
    assert {n for _, n in plan.values()} == {n_weights}
    qm.fit(x, y, epochs=1, batch_size=32, verbose=0)
    for name, quantizer, variables in cdl_tf.model_quantizers(qm):
        if name.endswith("/bias"):
            wrapper = qm.get_layer(name.split("/")[0])
            bias = next(w for w, qz, _ in wrapper._weight_vars if qz is quantizer)
            out = quantizer(bias, True, variables).numpy() / float(quantizer.step_and_softness(variables)[0])
            np.testing.assert_allclose(out, np.round(out), atol=1e-4)
    assert len(cdl_tf.hard_indices(qm)) == 9


@pytest.mark.slow
def test_softness_schedule_anneals_kappa_geometrically():
    x, y = random_data(64)
    cfg = cdl_tf.CDLConfig(train_softness=False, init_kappa=2.0)
    qm = compile_(cdl_tf.quantize_model(small_cnn(), cfg))
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([float(tf.exp(v["log_softness"])) for _, _, v in cdl_tf.model_quantizers(self.model)])

    schedule = cdl_tf.SoftnessSchedule(2.0, 32.0, epochs=3)
    qm.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[schedule, Probe()])
    np.testing.assert_allclose(seen, [[2.0] * 10, [8.0] * 10, [32.0] * 10], rtol=1e-5)
    trained = compile_(cdl_tf.quantize_model(small_cnn(), cdl_tf.CDLConfig()))
    with pytest.raises(ValueError, match="train_softness=False"):
        trained.fit(x, y, epochs=1, verbose=0, callbacks=[cdl_tf.SoftnessSchedule(2.0, 8.0, 2)])
