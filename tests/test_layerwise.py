"""Inference from coded layers: lazy `.cdlz` reading and `tflite_export.layerwise`, against the fully decoded
Keras model on real test images (LeNet-300-100 from its config, a small residual model with BatchNorm and Add)."""
import os
import subprocess
import sys
import weakref
import zlib
from collections.abc import Mapping

import numpy as np
import pytest
import tf_keras as keras

import cdl_tf
from cdl_tf import coding
from cdl_tf import data as cdl_data
from cdl_tf.coded_model import apply_coded, coded_tensors
from cdl_tf.quantize import model_quantizers
from cdl_tf.training import build_model, validate_config
from conftest import config_module
from tflite_export.decode import accuracy_on_test_set, decode_model, layerwise_model
from tflite_export.export import eval_arrays
from tflite_export.layerwise import Architecture, LayerwiseModel

lenet300_mnist = config_module("lenet300_mnist")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(dataset: str, split: str, n: int, data_dir) -> np.ndarray:
    ds = cdl_data.make_dataset(dataset, split, n, data_dir=str(data_dir), training=False, subset=n)
    return next(iter(ds))[0].numpy()


@pytest.fixture(scope="module")
def lenet300_run(tmp_path_factory, data_dir):
    """A LeNet-300-100 CDL run with quantized activations, untrained, its quantizer steps set from real
    training images: ``config.json`` and ``weights.cdlz``."""
    workdir = tmp_path_factory.mktemp("lenet300")
    c = lenet300_mnist.get_config()
    c.data_dir, c.test_subset = str(data_dir), 500
    keras.utils.set_random_seed(0)
    model = build_model(c, validate_config(c))
    model(_images("mnist", "train", 256, data_dir), training=False)  # first call: sets every step q
    (workdir / "config.json").write_text(c.to_json())
    coding.write(workdir / "weights.cdlz", coded_tensors(model))
    return workdir


def test_lazy_file_decodes_each_tensor_on_lookup():
    """A lazy file holds the eager file's tensors; a payload that does not decode (under a valid CRC-32) is
    refused by the eager reader at once and by the lazy one when, and only when, that tensor is looked up."""
    rng = np.random.RandomState(0)
    tensors = {"a": coding.QuantizedTensor(rng.randint(-3, 4, (40, 8)), -3, 3, 0.5),
               "b": rng.randn(5).astype(np.float32),
               "c": coding.QuantizedTensor(rng.randint(-7, 8, (300,)), -7, 7, 0.25)}
    data = coding.encode_bytes(tensors)
    eager, lazy = coding.decode_bytes(data), coding.decode_bytes(bytearray(data), lazy=True)
    assert list(lazy) == list(eager) and "c" in lazy and "d" not in lazy
    for name in eager:
        first, again = lazy[name], lazy[name]
        assert first is not again  # decoded anew, nothing kept
        if isinstance(first, coding.QuantizedTensor):
            assert (first.lo, first.hi, first.q) == (eager[name].lo, eager[name].hi, eager[name].q)
            first, expected = first.indices, eager[name].indices
        else:
            expected = eager[name]
        np.testing.assert_array_equal(first, expected)
    assert lazy.index_bytes == eager.index_bytes and lazy.total_bytes == eager.total_bytes

    bad = bytearray(data)
    bad[-5] ^= 0x5A  # last byte of the last payload ("c")
    bad[-4:] = zlib.crc32(bytes(bad[:-4])).to_bytes(4, "little")
    with pytest.raises(coding.FormatError, match="tensor 'c' payload"):
        coding.decode_bytes(bytes(bad))
    broken = coding.decode_bytes(bytes(bad), lazy=True)
    assert "c" in broken
    np.testing.assert_array_equal(broken["a"].indices, eager["a"].indices)
    with pytest.raises(coding.FormatError, match="tensor 'c' payload"):
        broken["c"]


@pytest.fixture(scope="module")
def lenet300_keras(lenet300_run):
    """The run's decoded Keras model (`decode_model`), its outputs on the run's test images, and their labels."""
    model, _, config = decode_model(str(lenet300_run / "weights.cdlz"), str(lenet300_run))
    x, y = eval_arrays(config)
    return model, x, model(x, training=False).numpy(), y


def test_layerwise_lenet300_is_the_decoded_keras_model(lenet300_run, lenet300_keras):
    model, x, expected, _ = lenet300_keras
    layerwise, _ = layerwise_model(str(lenet300_run / "weights.cdlz"), str(lenet300_run))
    got = layerwise(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    activations = {name.split("/")[0]: (q.lo, q.hi) for name, q, _ in model_quantizers(model) if q.kind == "activation"}
    assert {s.name: s.output_alphabet for s in layerwise.architecture.steps if s.output_step} == activations
    assert set(activations) == {"quant_fc1", "quant_fc2", "quant_logits"}


def _residual_model() -> keras.Model:
    """conv-BN-ReLU, then a basic block (conv-BN-ReLU-conv-BN + identity, Add, ReLU), pooling, logits."""
    layers = keras.layers
    inputs = keras.Input((32, 32, 3), name="input")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
    y = layers.ReLU(name="relu1")(layers.BatchNormalization(name="bn1")(y))
    y = layers.BatchNormalization(name="bn2")(layers.Conv2D(8, 3, strides=1, padding="same", use_bias=False,
                                                            name="conv2")(y))
    x = layers.ReLU(name="relu2")(layers.Add(name="add")([x, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x))


def test_layerwise_residual_model_is_the_decoded_keras_model_and_decodes_one_layer_at_a_time(data_dir):
    """Also: every tensor is decoded once per batch, and none decoded for an earlier layer is alive when
    the next layer's are decoded; each activation is released by its last reader."""
    keras.utils.set_random_seed(1)
    model = cdl_tf.quantize_model(_residual_model(), cdl_tf.CDLConfig(lambda_w=0.01, lambda_a=0.01))
    x = _images("cifar10", "test", 328, data_dir)
    model(x[200:], training=False)  # sets every step q (from other images than those compared)
    data = coding.encode_bytes(coded_tensors(model))
    apply_coded(model, coding.decode_bytes(data))
    architecture = Architecture.from_model(model)

    lookups, alive = [], []

    class Watched(Mapping):
        """The lazy file, recording each lookup and which tensors decoded for other layers are still alive."""

        def __getitem__(self, name):
            tensor = lazy[name]
            layer = name.rsplit("/", 1)[0]
            alive.extend(n for n, ref in lookups if ref() is not None and n.rsplit("/", 1)[0] != layer)
            lookups.append((name, weakref.ref(tensor)))
            return tensor

        def __iter__(self):
            return iter(lazy)

        def __len__(self):
            return len(lazy)

    lazy = coding.decode_bytes(data, lazy=True)
    layerwise = LayerwiseModel(architecture, Watched())
    expected = model(x[:200], training=False).numpy()
    got = layerwise(x[:200]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))

    assert sorted(n for n, _ in lookups) == sorted(lazy) and alive == []
    order = [s.name for s in architecture.steps]
    assert [n.rsplit("/", 1)[0] for n, _ in lookups] == sorted((n.rsplit("/", 1)[0] for n, _ in lookups),
                                                               key=order.index)
    released = [s for step in architecture.steps for s in step.releases]
    assert sorted(released) == sorted([architecture.input, *order[:-1]])
    steps = {s.name: s for s in architecture.steps}
    assert set(steps["add"].releases) == {"bn2", "quant_stem_relu"}
    assert set(steps["stem_bn"].tensors) == {"scale", "shift"}


def test_layerwise_refuses_coded_weights_of_another_model(lenet300_run):
    architecture = Architecture.from_model(_quantized_lenet300_with_biases())
    lazy = coding.read(lenet300_run / "weights.cdlz", lazy=True)
    unexpected = r"coded weights do not fit this model: missing \[\], unexpected \[.*output_log_q"
    with pytest.raises(ValueError, match=unexpected):
        LayerwiseModel(architecture, lazy)
    fitting = {n: t for n, t in lazy.items() if not n.endswith("output_log_q")}
    lo, hi = architecture.steps[1].tensors["bias"].alphabet  # quant_fc1, after the flatten
    fitting["quant_fc1/bias"] = coding.QuantizedTensor(np.zeros(300, np.int32), lo, hi, 0.1)
    with pytest.raises(ValueError, match="quant_fc2/bias: expected quantized indices, got a float tensor"):
        LayerwiseModel(architecture, fitting)(np.zeros((1, 28, 28, 1), np.float32))


def _quantized_lenet300_with_biases() -> keras.Model:
    c = lenet300_mnist.get_config()
    c.cdl.quantize_activations, c.cdl.quantize_biases = False, True
    return build_model(c, validate_config(c))


@pytest.mark.slow
def test_cli_evaluates_the_test_set_layer_by_layer(lenet300_run, lenet300_keras, data_dir):
    _, _, outputs, labels = lenet300_keras
    keras_accuracy, images = accuracy_on_test_set(str(lenet300_run / "weights.cdlz"), str(lenet300_run),
                                                  layerwise=False, batch_size=200)
    assert (keras_accuracy, images) == (np.mean(outputs.argmax(1) == labels), len(labels))
    env = {**os.environ, "PYTHONPATH": ROOT, "CDL_DATA_DIR": str(data_dir)}
    done = subprocess.run([sys.executable, "-m", "cdl_tf.tools.decode", str(lenet300_run / "weights.cdlz"),
                           f"--like={lenet300_run}", "--eval", "--layerwise", "--batch_size=200"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"test accuracy {keras_accuracy:.4f} on {images} images (layer by layer from the coded file)" in done.stdout
    assert not (lenet300_run / "decoded").exists()
