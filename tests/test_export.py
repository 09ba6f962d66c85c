"""Export: int8 TFLite weights are the CDL indices, coded weights decode to the same model; what the
exporter refuses."""
import json
import re
import shutil

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import cdl_tf
from cdl_tf import coding
from cdl_tf.coded_model import apply_coded, coded_tensors
from cdl_tf.training import _datasets, build_model, load_run, train_and_evaluate, validate_config
from conftest import config_module
from tflite_export.convert import TFLiteModel, to_tflite
from tflite_export.decode import decode_model, decode_to_dir
from tflite_export.export import eval_arrays, export_workdir
from tflite_export.graph import RANGE_DIGITS, ExportError, InferenceGraph

lenet5_mnist = config_module("lenet5_mnist")
lenet300_mnist = config_module("lenet300_mnist")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir):
    """A LeNet-5 trained briefly with CDL on MNIST, exported."""
    workdir = tmp_path_factory.mktemp("lenet5")
    c = lenet5_mnist.get_config()
    c.data_dir = str(data_dir)
    c.train_subset, c.test_subset, c.epochs, c.verbose = 3000, 1000, 1, 0
    c.validation_size = 500
    c.cdl.lambda_w = 0.05
    train_and_evaluate(c, str(workdir))
    report = export_workdir(str(workdir), str(workdir / "export"))
    return workdir, report


def _tflite_weight(tm: TFLiteModel, layer: str) -> dict:
    found = [t for t in tm.int8_tensors() if f"{layer}_kernel_fq" in t["name"]]
    assert len(found) == 1, [t["name"] for t in tm.int8_tensors()]
    return found[0]


@pytest.mark.slow
def test_int8_weights_are_the_cdl_indices(exported):
    workdir, _ = exported
    with cdl_tf.quantize_scope():
        model = keras.models.load_model(str(workdir / "model.keras"))
    tm = TFLiteModel((workdir / "export" / "model.tflite").read_bytes())
    indices = {n: t.indices for n, t in coded_tensors(model).items() if isinstance(t, coding.QuantizedTensor)}
    assert len(indices) == 4
    for name, idx in indices.items():
        layer = name.split("/")[0]
        t = _tflite_weight(tm, layer)
        # TFLite keeps conv filters as OHWI and fully connected weights as [out, in].
        expected = np.transpose(idx, (3, 0, 1, 2)) if idx.ndim == 4 else idx.T
        np.testing.assert_array_equal(t["value"], expected, err_msg=name)
        q = float(tf.exp(model.get_layer(layer)._weight_vars[0][2]["log_q"]))
        np.testing.assert_allclose(t["quantization_parameters"]["scales"], q, rtol=1e-6)


# A one-epoch model has small margins, so the integer kernels' rounding flips a few near-ties.
# Twelve draws of the fixture (1,000 test images each) disagreed with Keras on 0.38% +- 0.20%
# of the images on the default kernels, 0.60% +- 0.23% on the builtin and 0.57% +- 0.19% on the
# reference ones (at most 1.1%); their accuracies minus Keras' were 0.0003 +- 0.0026 on the worst
# kernel set (at most 0.006 apart). Both bounds lie about 6 standard deviations beyond the worst
# kernel set's mean, while the model errs on 12-16% of the images, so a TFLite model computing
# anything else would break them.
MAX_DISAGREEMENT = 0.02
MAX_ACCURACY_GAP = 0.015


@pytest.mark.slow
def test_tflite_agrees_with_keras_hard_model(exported):
    _, report = exported
    acc = report.accuracy
    assert acc.top1_agreement >= 1 - MAX_DISAGREEMENT, acc
    assert abs(acc.tflite_int8 - acc.keras_q_u) <= MAX_ACCURACY_GAP, acc
    assert acc.keras_q_u > 0.7  # one epoch on 3000 images; chance is 0.1


@pytest.mark.slow
def test_int8_model_on_other_kernel_sets(exported):
    workdir, report = exported
    other = export_workdir(str(workdir), str(workdir / "export_kernels"), kernels=("builtin", "reference"))
    acc = other.accuracy
    assert acc.tflite_int8 == report.accuracy.tflite_int8  # the same model, converted again
    assert sorted(acc.kernels) == ["builtin", "reference"]
    for k, on in acc.kernels.items():
        assert on.top1_agreement >= 1 - MAX_DISAGREEMENT, (k, on)
        assert abs(on.tflite_int8 - acc.keras_q_u) <= MAX_ACCURACY_GAP, (k, on)
    with pytest.raises(ValueError, match="unknown kernel sets"):
        export_workdir(str(workdir), str(workdir / "export_bad"), kernels=("xnnpack",))
    with pytest.raises(ValueError, match="kernels must be one of"):
        TFLiteModel((workdir / "export" / "model.tflite").read_bytes(), kernels="gpu")


@pytest.mark.slow
def test_float_tflite_accuracy_is_the_written_models(exported):
    workdir, report = exported
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    x, y = eval_arrays(config)
    assert len(y) == report.test_examples == 1000
    pred = TFLiteModel((workdir / "export" / "model_float.tflite").read_bytes()).predict(x).argmax(1)
    assert report.accuracy.tflite_float == float((pred == y).mean())


@pytest.mark.slow
def test_export_report_sizes(exported):
    workdir, _ = exported
    report = json.loads((workdir / "export" / "export.json").read_text())
    b, bits = report["bytes"], report["bits_per_weight"]
    assert report["quantized_weights"] == 430_500
    assert report["workdir"] == str(workdir) and report["int8_io"] is False
    for key, name in (("cdlz_ans", "weights.cdlz"), ("tflite_int8", "model.tflite"), ("tflite_float", "model_float.tflite")):
        assert b[key] == (workdir / "export" / name).stat().st_size, key
    assert b["float32_weights"] == 4 * (report["quantized_weights"] + report["float_values"])
    assert bits["cdlz_ans_total"] == pytest.approx(8 * b["cdlz_ans"] / report["quantized_weights"])
    assert b["tflite_int8"] < b["tflite_float"] / 3
    assert b["cdlz_ans"] < b["tflite_int8"]
    # ANS payloads reach the entropy within 1% (+ 32 bits per tensor of coder state).
    assert bits["ans_payload"] <= 1.01 * bits["entropy"] + 4 * 32 / report["quantized_weights"]
    assert bits["huffman_payload"] >= bits["ans_payload"]


@pytest.mark.slow
def test_decoded_model_is_the_exported_model(exported, data_dir):
    workdir, _ = exported
    out = workdir / "decoded"
    decode_to_dir(str(workdir / "export" / "weights.cdlz"), str(workdir), str(out))
    assert (out / "model.tflite").read_bytes() == (workdir / "export" / "model.tflite").read_bytes()
    with cdl_tf.quantize_scope():
        original = keras.models.load_model(str(workdir / "model.keras"))
        decoded = keras.models.load_model(str(out / "model.keras"))
    # Every inference weight is exactly the exported one: indices, steps and float tensors.
    want, got = coded_tensors(original), coded_tensors(decoded)
    assert want.keys() == got.keys()
    for name, t in want.items():
        if isinstance(t, coding.QuantizedTensor):
            np.testing.assert_array_equal(got[name].indices, t.indices, err_msg=name)
            assert got[name].q == t.q, name
        else:
            np.testing.assert_array_equal(got[name], t, err_msg=name)
    # Predictions then agree but for rounding ties that a different float summation order in
    # the CPU kernels (which depends on the machine's load) can flip by one grid step.
    x = np.random.RandomState(0).rand(256, 28, 28, 1).astype("float32")
    a, b = decoded.predict(x, verbose=0), original.predict(x, verbose=0)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.98


@pytest.mark.slow
def test_corrupted_coded_weights_are_refused(exported, tmp_path):
    workdir, _ = exported
    data = bytearray((workdir / "export" / "weights.cdlz").read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.cdlz"
    bad.write_bytes(bytes(data))
    with pytest.raises(coding.FormatError):
        decode_model(str(bad), str(workdir))


@pytest.mark.slow
@pytest.mark.parametrize("layer,weight,value", [("quant_conv2", "kernel", np.nan), ("quant_logits", "bias", np.inf)])
def test_run_with_non_finite_weights_is_refused(exported, tmp_path, layer, weight, value):
    workdir, _ = exported
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(workdir / "config.json", run)
    _, model = load_run(str(workdir))
    variable = next(v for v in model.get_layer(layer).weights if v.name.split("/")[-1].startswith(weight))
    variable.assign(tf.tensor_scatter_nd_update(variable, [[0] * len(variable.shape)], [value]))
    model.save(str(run / "model.keras"))
    with pytest.raises(ExportError, match=rf"non-finite weights \(NaN or inf\) in \['{layer}/{weight}'\]"):
        export_workdir(str(run), str(run / "export"))
    assert not (run / "export").exists()


def _bn_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((10, 10, 2))
    x = keras.layers.Conv2D(6, 3, use_bias=False, name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    y = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    x = keras.layers.ReLU(name="relu2")(keras.layers.Add(name="add")([x, y]))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(x))
    qm = cdl_tf.quantize_model(model, cdl_tf.CDLConfig())
    rng = np.random.RandomState(0)
    for bn in ("bn1", "bn2"):
        layer = qm.get_layer(bn)
        gamma = rng.uniform(0.5, 1.5, 6) * np.where(np.arange(6) % 3 == 0, -1, 1)  # some negative
        layer.gamma.assign(gamma)
        layer.beta.assign(rng.randn(6) * 0.1)
        layer.moving_mean.assign(rng.randn(6) * 0.1)
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, 6))
    return qm, (np.random.RandomState(1).randint(0, 256, (64, 10, 10, 2)) / 255.0).astype("float32")


@pytest.mark.slow
def test_folded_batchnorm_gives_per_channel_scales_with_exact_indices():
    qm, x = _bn_model()
    qm(x, training=True)  # initialise steps
    graph = InferenceGraph(qm)
    assert graph.folded == {"bn1": "quant_conv1", "bn2": "quant_conv2"}
    # The float reference graph (folded weights, rounding on the CDL grids) is the Keras Q_u model.
    np.testing.assert_allclose(tf.function(graph.function("reference"))(x), qm(x, training=False), atol=1e-5)
    graph.calibrate([x])
    tm = TFLiteModel(to_tflite(graph, "int8", (10, 10, 2)))
    indices = cdl_tf.hard_indices(qm)
    for conv in ("conv1", "conv2"):
        w = graph.weights[f"quant_{conv}"]
        t = _tflite_weight(tm, f"quant_{conv}")
        expected = np.transpose(indices[f"quant_{conv}/kernel"], (3, 0, 1, 2)) * np.sign(w.channel_scale)[:, None, None, None]
        np.testing.assert_array_equal(t["value"], expected)
        np.testing.assert_allclose(t["quantization_parameters"]["scales"], np.abs(w.q * w.channel_scale), rtol=1e-6)


def test_coded_tensors_round_trip_through_the_container():
    qm, x = _bn_model()
    qm(x, training=True)
    tensors = coded_tensors(qm)
    # BatchNorm layers are stored as their affine maps: two floats per channel.
    assert sorted(n for n in tensors if n.startswith("bn1/")) == ["bn1/scale", "bn1/shift"]
    decoded = coding.decode_bytes(coding.encode_bytes(tensors))
    fresh, _ = _bn_model()
    apply_coded(fresh, decoded)
    np.testing.assert_allclose(fresh(x, training=False), qm(x, training=False), rtol=1e-5, atol=1e-5)
    # The decoded form is a fixed point: coding it again gives the same tensors and outputs.
    apply_coded(qm, tensors)
    np.testing.assert_array_equal(fresh(x, training=False), qm(x, training=False))
    again = coded_tensors(fresh)
    for name, t in tensors.items():
        got = again[name]
        if isinstance(t, coding.QuantizedTensor):
            np.testing.assert_array_equal(got.indices, t.indices, err_msg=name)
        else:
            np.testing.assert_array_equal(got, t, err_msg=name)
    with pytest.raises(ValueError, match="missing"):
        apply_coded(fresh, {k: v for k, v in decoded.items() if not k.startswith("bn1")})


@pytest.mark.slow
def test_quantized_biases_export_as_indices():
    keras.utils.set_random_seed(4)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.Flatten(name="flat")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(x))
    qm = cdl_tf.quantize_model(model, cdl_tf.CDLConfig(quantize_biases=True))
    for layer in ("conv", "logits"):
        bias = next(w for w, _, _ in qm.get_layer(f"quant_{layer}")._weight_vars if "bias" in w.name)
        bias.assign(np.linspace(-0.3, 0.3, bias.shape[0]))
    x = (np.random.RandomState(2).randint(0, 256, (32, 8, 8, 1)) / 255.0).astype("float32")
    qm(x, training=True)
    graph = InferenceGraph(qm)
    np.testing.assert_allclose(tf.function(graph.function("reference"))(x), qm(x, training=False), atol=1e-5)
    tensors = coded_tensors(qm)
    assert isinstance(tensors["quant_conv/bias"], coding.QuantizedTensor)
    assert isinstance(tensors["quant_logits/bias"], coding.QuantizedTensor)
    graph.calibrate([x])
    tm = TFLiteModel(to_tflite(graph, "int8", (8, 8, 1)))
    assert (tm.predict(x).argmax(1) == qm.predict(x, verbose=0).argmax(1)).mean() >= 0.9


@pytest.mark.slow
def test_weights_only_mlp_exports_every_kernel_as_cdl_indices():
    """Dense ReLU layers feeding Dense ReLU layers get calibrated int8 ranges (weights-only CDL)."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((6, 6, 1))
    x = keras.layers.Flatten(name="flat")(inp)
    x = keras.layers.Dense(16, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(8, activation="relu", name="fc2")(x)
    qm = cdl_tf.quantize_model(keras.Model(inp, keras.layers.Dense(3, name="logits")(x)),
                               cdl_tf.CDLConfig(quantize_activations=False, first_layer_bits=None))
    x = (np.random.RandomState(6).randint(0, 256, (64, 6, 6, 1)) / 255.0).astype("float32")
    qm(x, training=True)
    graph = InferenceGraph(qm)
    graph.calibrate([x])
    assert {"quant_fc1", "quant_fc2", "quant_logits"} <= set(graph.ranges)
    tm = TFLiteModel(to_tflite(graph, "int8", (6, 6, 1)))
    indices = cdl_tf.hard_indices(qm)
    for layer in ("fc1", "fc2", "logits"):
        np.testing.assert_array_equal(_tflite_weight(tm, f"quant_{layer}")["value"], indices[f"quant_{layer}/kernel"].T)
    assert (tm.predict(x).argmax(1) == qm.predict(x, verbose=0).argmax(1)).mean() >= 0.9


def test_stored_ranges_load_into_a_fresh_graph_and_bad_ones_are_refused():
    """The metadata keeps the ranges without names, in the graph's order; a list that does not fit
    the graph it is loaded into is refused with the reason."""
    inp = keras.Input((5,))
    out = keras.layers.Dense(4, name="logits")(keras.layers.Dense(6, activation="relu", name="fc1")(inp))
    qm = cdl_tf.quantize_model(keras.Model(inp, out),
                               cdl_tf.CDLConfig(quantize_activations=False, first_layer_bits=None))
    x = np.random.RandomState(8).randn(32, 5).astype("float32")
    qm(x, training=True)
    graph = InferenceGraph(qm)
    graph.calibrate([x])
    stored = json.loads(json.dumps(graph.stored_ranges()))
    assert len(stored) == len(graph.range_names) == 3  # input, fc1 (ReLU output), logits
    fresh = InferenceGraph(qm)
    fresh.load_ranges(stored)
    assert fresh.ranges == graph.ranges
    with pytest.raises(ExportError, match="expected a list of 3"):
        fresh.load_ranges(stored[:2])
    with pytest.raises(ExportError, match="expected a list of 3"):
        fresh.load_ranges({"input": stored[0]})
    with pytest.raises(ExportError, match="stored range of 'quant_fc1'"):
        fresh.load_ranges([stored[0], [1.0, 2.0], stored[2]])


def test_calibrated_ranges_are_short_and_contain_the_calibration_data():
    """Ranges are rounded outward to RANGE_DIGITS significant digits: every calibrated value stays
    inside its float32 range, which is at most 10**(1 - RANGE_DIGITS) of its magnitude wider."""
    rng = np.random.RandomState(7)
    inp = keras.Input((5,))
    out = keras.layers.Dense(4, name="logits")(keras.layers.Dense(6, activation="relu", name="fc1")(inp))
    qm = cdl_tf.quantize_model(keras.Model(inp, out),
                               cdl_tf.CDLConfig(quantize_activations=False, first_layer_bits=None))
    batches = [(rng.randn(32, 5) * scale).astype("float32") for scale in (0.013, 7.1, 2300.0)]
    qm(batches[0], training=True)
    graph = InferenceGraph(qm)
    graph.calibrate(batches)
    fn = tf.function(graph.function("calibrate"))
    probes = [fn(tf.constant(x))[1] for x in batches]
    for name, (lo, hi) in graph.ranges.items():
        seen_lo = min(0.0, *(float(tf.reduce_min(p[name])) for p in probes))
        seen_hi = max(0.0, *(float(tf.reduce_max(p[name])) for p in probes))
        assert np.float32(lo) <= np.float32(seen_lo) and np.float32(hi) >= np.float32(seen_hi), name
        for bound, seen in ((lo, seen_lo), (hi, seen_hi)):
            assert len(f"{abs(bound):e}".split("e")[0].rstrip("0").replace(".", "")) <= RANGE_DIGITS
            assert abs(bound - seen) <= 10.0 ** (1 - RANGE_DIGITS) * abs(seen) + 1e-12, (name, bound, seen)


def _untrained(module, **cdl):
    """The untrained model of a run of ``module``'s config (with these ``cdl`` fields), as the decoder builds it."""
    c = module.get_config()
    c.cdl.update(cdl)
    return build_model(c, validate_config(c))


def test_coded_weights_of_another_model_are_refused(tmp_path):
    """A valid ``.cdlz`` of another model is refused with the tensors that do not fit: LeNet-300-100's
    weights for a LeNet-5 run (through the decoder), and LeNet-5's with and without quantized biases."""
    (tmp_path / "config.json").write_text(lenet5_mnist.get_config().to_json())
    path = tmp_path / "lenet300.cdlz"
    coding.write(path, coded_tensors(_untrained(lenet300_mnist)))
    with pytest.raises(ValueError, match=r"coded weights do not fit this model: missing \['quant_conv1/bias', .*\], "
                                         r"unexpected \['quant_fc2/bias', 'quant_fc2/kernel', 'quant_fc2/output_log_q'\]"):
        decode_model(str(path), str(tmp_path))

    def coded(model):
        return coding.decode_bytes(coding.encode_bytes(coded_tensors(model)))

    plain, biased = _untrained(lenet5_mnist), _untrained(lenet5_mnist, quantize_biases=True)
    with pytest.raises(ValueError, match="quant_conv1/bias: expected a float tensor, got quantized indices"):
        apply_coded(plain, coded(biased))
    with pytest.raises(ValueError, match="quant_conv1/bias: expected quantized indices, got a float tensor"):
        apply_coded(biased, coded(plain))


def _cdl_model(hidden, **config) -> keras.Model:
    """``hidden(inputs)`` on 6x6x1 inputs, then flattened into 3 logits, CDL-quantized."""
    keras.utils.set_random_seed(9)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Flatten(name="flat")(hidden(inputs))
    return cdl_tf.quantize_model(keras.Model(inputs, keras.layers.Dense(3, name="logits")(x)), cdl_tf.CDLConfig(**config))


def _sequential():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])


def _two_outputs():
    inputs = keras.Input((4,))
    return keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)])


def _float_kernel():
    return _cdl_model(lambda x: keras.layers.Conv2D(2, 3, name="conv")(x), skip_layers=("conv",))


def _upsampling():
    return _cdl_model(lambda x: keras.layers.UpSampling2D(name="up")(x))


def _sigmoid():
    return _cdl_model(lambda x: keras.layers.Activation("sigmoid", name="squash")(x))


@pytest.mark.parametrize("build,message", [
    (_sequential, "export needs a Functional model (cdl_tf.quantize_model returns one)"),
    (_two_outputs, "export supports models with one input and one output"),
    (_float_kernel, "layer 'conv' is not CDL-quantized; the int8 export needs every kernel quantized"),
    (_upsampling, "layer 'up' of type UpSampling2D is not supported by the exporter"),
    (_sigmoid, "activation 'sigmoid' is not supported by the exporter"),
])
def test_unsupported_layers_and_patterns_are_refused_naming_them(build, message):
    """Refused when the graph is built, or else when its function is first traced."""
    with pytest.raises(ExportError, match=f"^{re.escape(message)}$"):
        InferenceGraph(build()).function("reference")(tf.zeros([2, 6, 6, 1]))


def test_uncalibrated_graph_is_refused_for_int8_and_its_ranges():
    graph = InferenceGraph(_cdl_model(lambda x: keras.layers.Conv2D(2, 3, activation="relu", name="conv")(x)))
    with pytest.raises(ExportError, match=r"calibrate the graph \(InferenceGraph.calibrate\) before building the int8"):
        graph.function("int8")
    with pytest.raises(ExportError, match="before storing its ranges"):
        graph.stored_ranges()
    with pytest.raises(ExportError, match="no calibration batch was given"):
        graph.calibrate([])
    with pytest.raises(ValueError, match="mode must be calibrate, int8, float or reference, got 'int4'"):
        graph.function("int4")


def test_export_evaluates_the_test_images_training_evaluated(data_dir):
    """With a test subset, the images come from the run's seed, in export as in training."""
    labels = {}
    for seed in (0, 3):
        c = lenet5_mnist.get_config()
        c.data_dir, c.test_subset, c.seed = str(data_dir), 64, seed
        x, y = eval_arrays(c)
        _, _, test = _datasets(c)
        trained_on = np.concatenate([xb.numpy() for xb, _ in test])
        assert np.array_equal(x, trained_on)
        labels[seed] = y
    assert not np.array_equal(labels[0], labels[3])  # another seed, other images
