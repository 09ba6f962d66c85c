"""Model builders: parameter counts, structure, forward shapes, weight decay and cloning."""
import numpy as np
import pytest
import tf_keras as keras

from cdl_tf.models import MODELS, get_model, lenet5, lenet300_100, resnet18, resnet20, resnet56

# Parameter counts, including BatchNorm moving statistics (`count_params`), by hand:
#   LeNet-300-100: 784*300+300 + 300*100+100 + 100*10+10 = 266,610.
#   LeNet-5 (Caffe): 5*5*1*20+20 + 5*5*20*50+50 + (4*4*50)*500+500 + 500*10+10 = 431,080.
#   CIFAR ResNet-(6n+2): a BN over c channels has 4c parameters (2c trainable); a block with
#   c channels has 2 * 9c^2 conv weights + 2 * 4c BN; a first block c/2 -> c has
#   9(c/2)c + 9c^2 + 2 * 4c, plus the (c/2)c projection and its 4c BN.
#     stem 3*3*3*16 + 4*16                         =     496
#     stage 1 (16):  n * (2*2304 + 128)            = n * 4,736
#     stage 2 (32):  14,720 + (n-1) * 18,688
#     stage 3 (64):  58,112 + (n-1) * 74,240
#     head 64*10+10                                =     650
#   ResNet-8 (n=1):  496 + 4,736 + 14,720 + 58,112 + 650 = 78,714.
#   ResNet-20 (n=3): 496 + 14,208 + 52,096 + 206,592 + 650 = 274,042 (272,474 trainable).
#   ResNet-56 (n=9): 496 + 42,624 + 164,224 + 652,032 + 650 = 860,026.
#   ResNet-18, 1000 classes: 11,689,512 trainable (as torchvision's), plus 2 * 4,800 BN
#   moving statistics = 11,699,112.
EXPECTED = [
    ("lenet300_100", (28, 28, 1), 10, 266_610),
    ("lenet5", (28, 28, 1), 10, 431_080),
    ("resnet8", (32, 32, 3), 10, 78_714),
    ("resnet20", (32, 32, 3), 10, 274_042),
    ("resnet56", (32, 32, 3), 10, 860_026),
    ("resnet18", (224, 224, 3), 1000, 11_699_112),
]


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("name,input_shape,num_classes,params", EXPECTED)
def test_parameter_count_and_logits_shape(name, input_shape, num_classes, params):
    model = get_model(name, input_shape, num_classes)
    assert model.count_params() == params
    logits = model(np.random.default_rng(0).normal(size=(2, *input_shape)).astype(np.float32))
    assert logits.shape == (2, num_classes)
    assert model.layers[-1].name == "logits"
    assert model.layers[-1].activation is keras.activations.linear  # logits, no softmax


def test_trainable_counts():
    assert _trainable(resnet20()) == 272_474
    assert _trainable(resnet18()) == 11_689_512


def test_builders_defaults_and_registry_agree():
    assert lenet300_100().input_shape == (None, 28, 28, 1)
    assert lenet5().output_shape == (None, 10)
    assert resnet20().count_params() == get_model("resnet20", (32, 32, 3), 10).count_params()
    assert resnet56(num_classes=100).output_shape == (None, 100)
    assert set(MODELS) == {"lenet300_100", "lenet5", "resnet8", "resnet20", "resnet56", "resnet18"}


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vgg16'; known models: lenet300_100, lenet5"):
        get_model("vgg16", (32, 32, 3), 10)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        get_model("lenet5", (28, 28, 1), 10, weight_decay=-1.0)


def test_resnet_structure():
    model = resnet20()
    layers = {layer.name: layer for layer in model.layers}
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 19 + 2  # 19 on the main path, 2 projections
    assert all(not c.use_bias for c in convs)
    for conv in convs:  # every convolution feeds a BatchNormalization of the same name
        bn = layers[conv.name.replace("conv", "bn")]
        assert isinstance(bn, keras.layers.BatchNormalization)
        assert bn.input is conv.output
    assert isinstance(layers["stage1_block1_relu1"], keras.layers.ReLU)
    assert layers["stage1_block1_relu1"].input is layers["stage1_block1_bn1"].output
    assert "stage1_block1_shortcut_conv" not in layers
    assert layers["stage2_block1_shortcut_conv"].kernel.shape == (1, 1, 16, 32)
    assert layers["stage3_block3_relu2"].output.shape == (None, 8, 8, 64)


def test_lenet5_is_the_caffe_variant():
    layers = {layer.name: layer for layer in lenet5().layers}
    assert layers["conv1"].use_bias and layers["conv1"].activation is keras.activations.relu
    assert layers["conv1"].padding == "valid" and layers["conv2"].kernel.shape == (5, 5, 20, 50)
    assert layers["flatten"].output.shape == (None, 800)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers.values())


def test_resnet18_works_on_small_inputs():
    model = resnet18((32, 32, 3), 10)
    assert model.get_layer("stage4_block2_relu2").output.shape == (None, 1, 1, 512)
    assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 10)


@pytest.mark.parametrize("name,input_shape", [("lenet300_100", (28, 28, 1)), ("resnet20", (32, 32, 3))])
def test_weight_decay_regularises_every_kernel(name, input_shape):
    model = get_model(name, input_shape, 10, weight_decay=1e-4)
    weighted = (keras.layers.Conv2D, keras.layers.Dense)
    kernels = [layer for layer in model.layers if isinstance(layer, weighted)]
    assert len(model.losses) == len(kernels)
    expected = sum(1e-4 * np.sum(np.square(layer.kernel.numpy())) for layer in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)
    assert get_model(name, input_shape, 10).losses == []


@pytest.mark.parametrize("name,input_shape,num_classes", [
    ("lenet300_100", (28, 28, 1), 10), ("lenet5", (28, 28, 1), 10), ("resnet20", (32, 32, 3), 10),
    ("resnet56", (32, 32, 3), 10), ("resnet18", (64, 64, 3), 10),
])
def test_models_survive_clone_model(name, input_shape, num_classes):
    model = get_model(name, input_shape, num_classes, weight_decay=1e-4)
    clone = keras.models.clone_model(model)
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert clone.count_params() == model.count_params() and len(clone.losses) == len(model.losses)
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(1).normal(size=(2, *input_shape)).astype(np.float32)
    np.testing.assert_allclose(clone(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-5)
