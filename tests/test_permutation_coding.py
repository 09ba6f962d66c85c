"""Models coded with their units in canonical order and their kernels' columns as multisets
(`.cdlz` version 4): the decoded tensors are the canonical ones bit for bit, and the decoded model
computes what the model in its training order computes, on real MNIST images."""
import numpy as np
import pytest
import tf_keras as keras

import cdl_tf
from cdl_tf import coding
from cdl_tf.coded_model import apply_coded, coded_tensors
from cdl_tf.data.idx import load_idx_dataset
from tflite_export.convert import TFLiteModel, to_tflite
from tflite_export.graph import InferenceGraph


@pytest.fixture(scope="module")
def mnist(data_dir):
    """512 MNIST test images in [0, 1]: the first 256 calibrate, all 512 are evaluated."""
    images, _ = load_idx_dataset(data_dir / "mnist", "mnist", "test")
    return (images[:512] / 255.0).astype("float32")


def _dense() -> keras.Model:
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(inp)
    h = keras.layers.Dense(64, activation="relu", name="fc1")(h)
    h = keras.layers.Dense(32, activation="relu", name="fc2")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(h))


def _conv() -> keras.Model:
    inp = keras.Input((28, 28, 1))
    h = keras.layers.MaxPooling2D()(keras.layers.Conv2D(8, 5, activation="relu", name="conv1")(inp))
    h = keras.layers.MaxPooling2D()(keras.layers.Conv2D(16, 5, activation="relu", name="conv2")(h))
    h = keras.layers.Dense(32, activation="relu", name="fc1")(keras.layers.Flatten()(h))
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(h))


def _quantized(build, x: np.ndarray, seed: int) -> keras.Model:
    """An untrained weights-only CDL model of ``build`` whose hidden layers have a quarter of their
    units dead (zero kernel columns), as rate-trained layers do; its steps initialised on ``x``."""
    keras.utils.set_random_seed(seed)
    model = build()
    for layer in model.layers[:-1]:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel, bias = layer.get_weights()
            kernel[..., np.random.RandomState(seed).permutation(kernel.shape[-1])[: kernel.shape[-1] // 4]] = 0
            layer.set_weights([kernel, bias])
    qm = cdl_tf.quantize_model(model, cdl_tf.CDLConfig(weight_bits=3, quantize_activations=False))
    qm(x, training=True)
    return qm


def _int8(model: keras.Model, ranges) -> bytes:
    """The int8 TFLite model of ``model`` with the activation ranges ``ranges`` (`InferenceGraph.stored_ranges`)."""
    graph = InferenceGraph(model)
    graph.load_ranges(ranges)
    return to_tflite(graph, "int8", (28, 28, 1))


@pytest.mark.slow
@pytest.mark.parametrize("build, permutable", [(_dense, ("fc1", "fc2")), (_conv, ("conv1", "conv2", "fc1"))],
                         ids=["dense", "conv"])
def test_decoded_model_computes_what_the_trained_order_computes(build, permutable, mnist):
    qm = _quantized(build, mnist[:256], seed=len(permutable))
    trained = qm.predict(mnist, verbose=0)
    graph = InferenceGraph(qm)
    graph.calibrate([mnist[:256]])
    ranges = graph.stored_ranges()  # per tensor: the order of channels does not change them
    int8_trained = TFLiteModel(_int8(qm, ranges)).predict(mnist)
    tensors = coded_tensors(qm)
    data = coding.encode_bytes(tensors, metadata={"ranges": ranges})
    decoded = coding.decode_bytes(data)
    assert decoded.version == 4
    assert all(decoded.unordered(f"quant_{name}/kernel") for name in permutable)
    assert not decoded.unordered("quant_logits/kernel")  # the output's units are not reordered
    assert len(data) < len(coding.encode_bytes(tensors, metadata=decoded.metadata, max_version=3))
    # Bit for bit the canonical tensors.
    assert list(decoded) == list(tensors)
    for name, t in tensors.items():
        if isinstance(t, coding.QuantizedTensor):
            np.testing.assert_array_equal(decoded[name].indices, t.indices, err_msg=name)
            assert decoded[name].q == t.q
        else:
            np.testing.assert_array_equal(decoded[name], t, err_msg=name)
    # The trained model put in its decoded form (the exported model: its weights are the canonical
    # tensors) computes what its trained order computes: exactly in the int8 model's integer
    # arithmetic, up to float rounding in Keras.
    apply_coded(qm, decoded)
    np.testing.assert_array_equal(TFLiteModel(_int8(qm, decoded.metadata["ranges"])).predict(mnist), int8_trained)
    np.testing.assert_allclose(qm.predict(mnist, verbose=0), trained, rtol=1e-5, atol=1e-5)
