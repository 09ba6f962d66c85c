"""Units in the coded tensors: those nothing reads cleared, the rest in canonical order (live ones first),
the model's outputs unchanged."""
import dataclasses

import numpy as np
import pytest
import tf_keras as keras

import cdl_tf
from cdl_tf.coding import QuantizedTensor, encode_bytes
from cdl_tf.coded_model import apply_coded, coded_tensors
from cdl_tf.coded_model import order_units, unit_order_bits
from cdl_tf.coded_model import fill_unread


def _quantized(model: keras.Model, x: np.ndarray, quantize_biases: bool = True) -> keras.Model:
    config = cdl_tf.CDLConfig(quantize_activations=False, quantize_biases=quantize_biases,
                              first_layer_bits=None, last_layer_bits=None)
    qm = cdl_tf.quantize_model(model, config)
    qm(x, training=True)  # initialises the steps from the weights
    return qm


def _with_indices(tensors: dict, **kernels: np.ndarray) -> dict:
    """``tensors`` with the kernels of the given layers replaced and every bias set to index 1."""
    out = dict(tensors)
    for layer, indices in kernels.items():
        out[f"quant_{layer}/kernel"] = dataclasses.replace(out[f"quant_{layer}/kernel"],
                                                           indices=np.asarray(indices, np.int32))
        bias = out[f"quant_{layer}/bias"]
        out[f"quant_{layer}/bias"] = dataclasses.replace(bias, indices=np.ones_like(bias.indices))
    return out


def _values(tensor) -> np.ndarray:
    return tensor.indices if isinstance(tensor, QuantizedTensor) else np.asarray(tensor)


def _live(tensors: dict, layer: str) -> np.ndarray:
    """Per output channel of ``layer``: kernel column non-zero."""
    kernel = _values(tensors[f"quant_{layer}/kernel"])
    return (kernel != 0).reshape(-1, kernel.shape[-1]).any(axis=0)


def _dense_chain(mid_activation: str = "relu") -> keras.Model:
    """6 inputs -> fc1 (5) -> fc2 (8) -> fc3 (3)."""
    inp = keras.Input((6,))
    h = keras.layers.Dense(5, activation="relu", name="fc1")(inp)
    h = keras.layers.Dense(8, activation=mid_activation, name="fc2")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="fc3")(h))


@pytest.mark.slow
def test_unread_dense_units_are_cleared_and_the_pass_repeats():
    """fc3 reads no unit 0-3 of fc2; without them fc2 reads no unit 0-1 of fc1."""
    keras.utils.set_random_seed(1)
    x = np.random.RandomState(2).randn(16, 6).astype("float32")
    qm = _quantized(_dense_chain(), x)
    k2 = np.ones((5, 8), int)
    k2[:2, 4:] = 0  # fc1 units 0-1 feed only fc2 units 0-3
    k3 = np.ones((8, 3), int)
    k3[:4] = 0  # nothing reads fc2 units 0-3
    tensors = _with_indices(coded_tensors(qm), fc1=np.ones((6, 5), int), fc2=k2, fc3=k3)
    out = fill_unread(qm, tensors)
    np.testing.assert_array_equal(_live(out, "fc2"), [False] * 4 + [True] * 4)
    np.testing.assert_array_equal(_live(out, "fc1"), [False, False, True, True, True])
    assert _live(out, "fc3").all()
    np.testing.assert_array_equal(out["quant_fc2/kernel"].indices[2:, 4:], 1)  # read weights kept
    assert out["quant_fc3/kernel"] is tensors["quant_fc3/kernel"]
    np.testing.assert_array_equal(out["quant_fc2/bias"].indices, 1)  # all 1 already: the read ones' mode


def test_unread_biases_take_the_most_common_read_index():
    """Read biases [2, 2, 2, 5]: the unread ones become 2. Zeros would add a symbol."""
    keras.utils.set_random_seed(9)
    qm = _quantized(_dense_chain(), np.random.RandomState(10).randn(16, 6).astype("float32"))
    k3 = np.ones((8, 3), int)
    k3[:4] = 0
    tensors = _with_indices(coded_tensors(qm), fc2=np.ones((5, 8), int), fc3=k3)
    tensors["quant_fc2/bias"] = dataclasses.replace(tensors["quant_fc2/bias"], indices=np.array([0, 1, 3, 4, 2, 2, 2, 5]))
    np.testing.assert_array_equal(fill_unread(qm, tensors)["quant_fc2/bias"].indices, [2, 2, 2, 2, 2, 2, 2, 5])


def test_conv_channels_are_unread_only_when_no_flattened_position_reads_them():
    """Flatten maps channel c of an (H, W, C) map to features i with i mod C == c."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D()(h))  # (2, 2, 4) -> 16 features
    qm = _quantized(keras.Model(inp, keras.layers.Dense(3, name="fc")(h)),
                    np.random.RandomState(4).rand(8, 6, 6, 1).astype("float32"))
    fc = np.ones((16, 3), int)
    fc[1::4] = 0  # no position reads channel 1
    fc[2::4][:3] = 0  # one position still reads channel 2
    out = fill_unread(qm, _with_indices(coded_tensors(qm), conv=np.ones((3, 3, 1, 4), int), fc=fc))
    np.testing.assert_array_equal(_live(out, "conv"), [True, False, True, True])


def test_channels_mixed_by_softmax_or_a_residual_sum_count_as_read():
    keras.utils.set_random_seed(5)
    x = np.random.RandomState(6).randn(16, 6).astype("float32")
    k3 = np.ones((8, 3), int)
    k3[:4] = 0
    qm = _quantized(_dense_chain(mid_activation="softmax"), x)
    out = fill_unread(qm, _with_indices(coded_tensors(qm), fc2=np.ones((5, 8), int), fc3=k3))
    assert _live(out, "fc2").all()

    inp = keras.Input((6,))
    a = keras.layers.Dense(8, activation="relu", name="fc1")(inp)
    b = keras.layers.Add()([a, keras.layers.Dense(8, name="fc2")(a)])
    qm = _quantized(keras.Model(inp, keras.layers.Dense(3, name="fc3")(b)), x)
    k2 = np.ones((8, 8), int)
    k2[:4] = 0  # fc2 reads no unit 0-3 of fc1, but the sum does
    out = fill_unread(qm, _with_indices(coded_tensors(qm), fc1=np.ones((6, 8), int), fc2=k2, fc3=k3))
    assert _live(out, "fc1").all() and _live(out, "fc2").all()


def test_coding_a_model_with_unread_units_leaves_its_outputs_unchanged():
    """The zeroed units (float biases here) are unread: giving them weights again does not move a
    single output bit."""
    keras.utils.set_random_seed(7)
    model = _dense_chain()
    w3 = model.get_layer("fc3").get_weights()
    w3[0][:4] = 0.0
    model.get_layer("fc3").set_weights(w3)
    x = np.random.RandomState(8).randn(64, 6).astype("float32")
    qm = _quantized(model, x, quantize_biases=False)
    before = qm.predict(x, verbose=0)
    tensors = coded_tensors(qm)
    np.testing.assert_array_equal(_live(tensors, "fc2"), [True] * 4 + [False] * 4)  # stored live units first
    apply_coded(qm, tensors)
    decoded = qm.predict(x, verbose=0)
    np.testing.assert_allclose(decoded, before, rtol=1e-5, atol=1e-5)
    kernel, bias = tensors["quant_fc2/kernel"].indices.copy(), np.array(tensors["quant_fc2/bias"])
    kernel[:, 4:], bias[4:] = 1, 1.0
    revived = {**tensors, "quant_fc2/kernel": dataclasses.replace(tensors["quant_fc2/kernel"], indices=kernel),
               "quant_fc2/bias": bias}
    apply_coded(qm, revived)
    np.testing.assert_array_equal(qm.predict(x, verbose=0), decoded)


def test_sequential_models_are_walked_too():
    """`quantize_model` keeps a Sequential model Sequential; its unread units are found as well."""
    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu", name="fc1"),
                              keras.layers.Dense(8, activation="relu", name="fc2"), keras.layers.Dense(3, name="fc3")])
    qm = _quantized(model, np.random.RandomState(12).randn(16, 6).astype("float32"))
    k3 = np.ones((8, 3), int)
    k3[:4] = 0
    out = fill_unread(qm, _with_indices(coded_tensors(qm), fc1=np.ones((6, 5), int), fc2=np.ones((5, 8), int), fc3=k3))
    np.testing.assert_array_equal(_live(out, "fc2"), [False] * 4 + [True] * 4)
    assert _live(out, "fc1").all()


def _outputs(qm: keras.Model, tensors: dict, x: np.ndarray) -> np.ndarray:
    apply_coded(qm, tensors)
    return qm.predict(x, verbose=0)


def _canonical(columns: np.ndarray, *ties: np.ndarray) -> list:
    """The canonical unit order written out: live columns first, lexicographically, then by ``ties``; stable."""
    return sorted(range(columns.shape[1]),
                  key=lambda c: (not columns[:, c].any(), tuple(columns[:, c]), *(t[c] for t in ties)))


def _assert_same_tensors(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, t in want.items():
        np.testing.assert_array_equal(_values(got[key]), _values(t), err_msg=key)


def test_units_take_the_canonical_order_with_the_outputs_unchanged():
    """conv (4 channels) -> pool -> flatten -> fc1 (6) -> fc2 (3). conv channels 0 and 2 have no non-zero
    weight (their biases still feed the readers, so the readers' rows must move with them) and go last,
    2 first by its lower bias; channel 3 is channel 1 again (kernel, bias and readers' rows), so the two
    keep their order and carry log2(4! / 2!) bits of order. fc1 is sorted after its rows took conv's order."""
    keras.utils.set_random_seed(13)
    rng = np.random.RandomState(14)
    inp = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D()(h))  # (2, 2, 4) -> 16 features
    h = keras.layers.Dense(6, activation="relu", name="fc1")(h)
    x = rng.rand(32, 6, 6, 1).astype("float32")
    qm = _quantized(keras.Model(inp, keras.layers.Dense(3, name="fc2")(h)), x, quantize_biases=False)
    conv, fc1 = rng.randint(-3, 4, (3, 3, 1, 4)), rng.randint(-3, 4, (16, 6))
    conv[..., [0, 2]], fc1[:, [1, 3]] = 0, 0
    conv[..., 3], fc1[3::4] = conv[..., 1], fc1[1::4]
    tensors = coded_tensors(qm)
    tensors = {**tensors, "quant_conv/kernel": dataclasses.replace(tensors["quant_conv/kernel"], indices=conv),
               "quant_fc1/kernel": dataclasses.replace(tensors["quant_fc1/kernel"], indices=fc1),
               "quant_conv/bias": np.array([0.5, 0.2, -0.1, 0.2], np.float32)}
    out = order_units(qm, tensors)
    conv_order = _canonical(conv.reshape(-1, 4), tensors["quant_conv/bias"])
    assert conv_order == [1, 3, 2, 0]
    np.testing.assert_array_equal(out["quant_conv/kernel"].indices, conv[..., conv_order])
    np.testing.assert_array_equal(out["quant_conv/bias"], tensors["quant_conv/bias"][conv_order])
    rows = np.arange(16).reshape(4, 4)[:, conv_order].reshape(-1)  # channel c of position p is row 4 p + c
    fc1_order = _canonical(fc1[rows], np.asarray(tensors["quant_fc1/bias"]))
    np.testing.assert_array_equal(out["quant_fc1/kernel"].indices, fc1[rows][:, fc1_order])
    np.testing.assert_array_equal(out["quant_fc2/kernel"].indices, tensors["quant_fc2/kernel"].indices[fc1_order])
    np.testing.assert_array_equal(_live(out, "fc1"), [True] * 4 + [False] * 2)
    np.testing.assert_allclose(_outputs(qm, out, x), _outputs(qm, tensors, x), rtol=1e-5, atol=1e-5)
    _assert_same_tensors(order_units(qm, out), out)  # sorting again changes nothing
    bits = unit_order_bits(qm, out)
    assert bits.keys() == {"quant_conv", "quant_fc1"}  # fc2 is the model output
    assert bits["quant_conv"] == pytest.approx(np.log2(12)) and bits["quant_fc1"] == pytest.approx(np.log2(720))


def test_batchnorm_between_follows_the_order_and_residual_sums_keep_theirs():
    """conv1 -> BN -> relu -> conv2 -> BN -> Add(input): conv1's channels are reordered with its BN's scale and
    shift; conv2's feed the sum, which mixes channels, so they keep their order."""
    keras.utils.set_random_seed(15)
    rng = np.random.RandomState(16)
    inp = keras.Input((6, 6, 4))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(h))
    h = keras.layers.BatchNormalization(name="bn2")(keras.layers.Conv2D(4, 3, padding="same", name="conv2")(h))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([inp, h]))
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(h))
    for bn in ("bn1", "bn2"):
        layer = model.get_layer(bn)
        layer.set_weights([rng.uniform(0.5, 2, 4), rng.randn(4), rng.randn(4), rng.uniform(0.5, 2, 4)])
    x = rng.rand(32, 6, 6, 4).astype("float32")
    qm = _quantized(model, x, quantize_biases=False)
    conv1, conv2 = rng.randint(-3, 4, (3, 3, 4, 4)), rng.randint(-3, 4, (3, 3, 4, 4))
    conv1[..., 1], conv2[..., 0] = 0, 0
    tensors = coded_tensors(qm)
    tensors = {**tensors, "quant_conv1/kernel": dataclasses.replace(tensors["quant_conv1/kernel"], indices=conv1),
               "quant_conv2/kernel": dataclasses.replace(tensors["quant_conv2/kernel"], indices=conv2)}
    out = order_units(qm, tensors)
    order = _canonical(conv1.reshape(-1, 4))
    assert order[-1] == 1 and order != [0, 2, 3, 1]  # the dead channel last, the live ones sorted
    np.testing.assert_array_equal(out["quant_conv1/kernel"].indices, conv1[..., order])
    for key in ("bn1/scale", "bn1/shift", "quant_conv1/bias"):
        np.testing.assert_array_equal(out[key], np.asarray(tensors[key])[order])
    np.testing.assert_array_equal(out["quant_conv2/kernel"].indices, conv2[:, :, order, :])
    np.testing.assert_array_equal(out["bn2/scale"], tensors["bn2/scale"])
    np.testing.assert_allclose(_outputs(qm, out, x), _outputs(qm, tensors, x), rtol=1e-5, atol=1e-5)


def test_live_first_order_makes_sparse_files_smaller():
    """40 of 300 units live at random places: the masks of fc1's columns and fc2's rows shrink to runs."""
    keras.utils.set_random_seed(17)
    rng = np.random.RandomState(18)
    inp = keras.Input((200,))
    model = keras.Model(inp, keras.layers.Dense(10, name="fc2")(keras.layers.Dense(300, activation="relu", name="fc1")(inp)))
    qm = _quantized(model, rng.randn(16, 200).astype("float32"))
    live = rng.permutation(300)[:40]
    fc1, fc2 = np.zeros((200, 300), int), np.zeros((300, 10), int)
    fc1[:, live] = rng.randint(-1, 2, (200, 40)) * (rng.rand(200, 40) < 0.1)
    fc2[live] = rng.randint(-2, 3, (40, 10))
    tensors = _with_indices(coded_tensors(qm), fc1=fc1, fc2=fc2)
    before, after = len(encode_bytes(tensors)), len(encode_bytes(order_units(qm, tensors)))
    assert after < before - 30, (before, after)
