"""Datasets: the real files and their checksums, corrupted/missing files, pickles, pipelines, the validation split."""
import dataclasses
import gzip
import hashlib
import pickle
import shutil

import numpy as np
import pytest
import tensorflow as tf

from cdl_tf.data import DatasetError, dataset_info, load_arrays, make_dataset
from cdl_tf.data import checksums, cifar, idx
from cdl_tf.data.pipeline import STATS, normalization, validation_mask

REAL = ("mnist", "fashion_mnist", "cifar10")
# First labels of the original files (CIFAR-10 npz: sorted by label).
FIRST_LABELS = {("mnist", "train"): 5, ("mnist", "test"): 7, ("fashion_mnist", "train"): 9,
                ("fashion_mnist", "test"): 9, ("cifar10", "train"): 0, ("cifar10", "test"): 0}


@pytest.fixture(scope="session")
def arrays(data_dir):
    """``arrays(name, split)``: `load_arrays` from the real data, loaded once per session."""
    loaded = {}

    def get(name, split):
        if (name, split) not in loaded:
            loaded[name, split] = load_arrays(name, split, data_dir)
        return loaded[name, split]

    return get


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    # Tests pass data_dir explicitly; the environment variable is tested on its own.
    monkeypatch.delenv("CDL_DATA_DIR", raising=False)


def _copy_dataset(src, dst_root, name):
    shutil.copytree(src / name, dst_root / name)
    return dst_root / name


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- real datasets ---------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("name", REAL)
def test_real_dataset_shapes_dtypes_and_labels(arrays, name, split):
    info = dataset_info(name)
    images, labels = arrays(name, split)
    n = info.num_train if split == "train" else info.num_test
    assert images.shape == (n, *info.input_shape) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(info.num_classes))
    assert images.min() == 0 and images.max() == 255
    assert labels[0] == FIRST_LABELS[name, split]


@pytest.mark.parametrize("name", REAL)
def test_normalisation_constants_are_the_train_statistics(arrays, name):
    images, _ = arrays(name, "train")
    values = np.arange(256) / 255.0
    for channel in range(images.shape[-1]):
        counts = np.bincount(images[..., channel].ravel(), minlength=256)
        mean = counts @ values / counts.sum()
        std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
        assert mean == pytest.approx(STATS[name][0][channel], abs=1e-7)
        assert std == pytest.approx(STATS[name][1][channel], abs=1e-7)


def test_real_files_match_their_checksums(data_dir):
    for name in ("mnist", "fashion_mnist"):
        for file, md5 in idx.OFFICIAL_MD5[name].items():
            assert checksums.file_digest(data_dir / name / file) == md5
    assert checksums.file_digest(data_dir / "cifar10" / cifar.NPZ_NAME) == cifar.NPZ_MD5


def test_digest_is_memoised_by_path_size_and_mtime(data_dir, tmp_path, monkeypatch):
    path = shutil.copy(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz", tmp_path / "labels.gz")
    md5 = checksums.file_digest(path)

    def no_hashing(name):
        raise AssertionError("re-hashed a memoised file")

    with monkeypatch.context() as m:
        m.setattr(checksums.hashlib, "new", no_hashing)
        assert checksums.file_digest(path) == md5
    _flip_byte(path, 100)
    assert checksums.file_digest(path) != md5


# --- corrupted and missing files -------------------------------------------------------------

@pytest.mark.parametrize("file", ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_corrupted_idx_file_is_rejected_naming_it(data_dir, tmp_path, file):
    path = _copy_dataset(data_dir, tmp_path, "mnist") / file
    _flip_byte(path, 1000 if "images" in file else 100)
    with pytest.raises(DatasetError) as e:
        load_arrays("mnist", "test", tmp_path)
    message = str(e.value)
    assert str(path) in message and idx.OFFICIAL_MD5["mnist"][file] in message
    assert checksums.file_digest(path) in message and "yann.lecun.com" in message


def test_missing_file_is_named(data_dir, tmp_path):
    path = _copy_dataset(data_dir, tmp_path, "fashion_mnist") / "t10k-labels-idx1-ubyte.gz"
    path.unlink()
    with pytest.raises(DatasetError, match="not found") as e:
        load_arrays("fashion_mnist", "test", tmp_path)
    assert str(path) in str(e.value) and "zalandoresearch" in str(e.value)


def test_missing_cifar10_is_named(tmp_path):
    with pytest.raises(DatasetError, match="not found") as e:
        load_arrays("cifar10", "test", tmp_path)
    assert str(tmp_path / "cifar10" / "cifar10.npz") in str(e.value)
    assert "cs.toronto.edu" in str(e.value)


def test_bad_idx_header_is_rejected(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    files = idx.FILES["test"]
    # A labels file with the images' magic (3 dimensions).
    (tmp_path / "mnist" / files[0]).write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + bytes(12)))
    (tmp_path / "mnist" / files[1]).write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + bytes(12)))
    table = {f: checksums.file_digest(tmp_path / "mnist" / f) for f in files}
    monkeypatch.setitem(idx.OFFICIAL_MD5, "mnist", table)
    with pytest.raises(DatasetError, match="dimensions") as e:
        load_arrays("mnist", "test", tmp_path)
    assert str(tmp_path / "mnist" / files[0]) in str(e.value)
    (tmp_path / "mnist" / files[0]).write_bytes(gzip.compress(bytes([0, 0, 9, 3]) + bytes(12)))
    table[files[0]] = checksums.file_digest(tmp_path / "mnist" / files[0])
    with pytest.raises(DatasetError, match="magic 00000903"):
        load_arrays("mnist", "test", tmp_path)


# --- CIFAR-10 npz fallback to per-array SHA-256 ----------------------------------------------

def test_npz_written_by_another_numpy_passes_array_checksums(arrays, tmp_path):
    x, y = arrays("cifar10", "test")
    (tmp_path / "cifar10").mkdir()
    # Uncompressed, so the file MD5 differs from the reference but the arrays are the same.
    np.savez(tmp_path / "cifar10" / "cifar10.npz", x_test=x, y_test=y.astype(np.uint8))
    x2, y2 = load_arrays("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


def test_npz_with_a_changed_array_is_rejected(arrays, tmp_path):
    x, y = arrays("cifar10", "test")
    x = x.copy()
    x[123, 4, 5, 0] ^= 1
    path = tmp_path / "cifar10" / "cifar10.npz"
    path.parent.mkdir()
    np.savez(path, x_test=x, y_test=y.astype(np.uint8))
    with pytest.raises(DatasetError) as e:
        load_arrays("cifar10", "test", tmp_path)
    message = str(e.value)
    assert str(path) in message and "x_test" in message and cifar.NPZ_ARRAYS["x_test"][1] in message
    assert hashlib.sha256(x.data).hexdigest() in message


# --- CIFAR python pickles -------------------------------------------------------------------

UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)


class _Tripwire:
    """Unpickling this calls `_record_unpickling`."""

    def __reduce__(self):
        return _record_unpickling, ()


@pytest.mark.parametrize("name,split,relpath", [
    ("cifar10", "train", "cifar-10-batches-py/data_batch_1"),
    ("cifar10", "test", "cifar10/cifar-10-batches-py/test_batch"),
    ("cifar100", "train", "cifar-100-python/train"),
])
def test_pickle_with_wrong_md5_is_never_unpickled(tmp_path, name, split, relpath):
    payload = pickle.dumps({"data": _Tripwire(), "labels": []})
    pickle.loads(payload)  # the tripwire works
    assert UNPICKLED == [True]
    UNPICKLED.clear()
    path = tmp_path / relpath
    path.parent.mkdir(parents=True)
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match="MD5") as e:
        load_arrays(name, split, tmp_path)
    assert str(path) in str(e.value) and hashlib.md5(payload).hexdigest() in str(e.value)
    assert UNPICKLED == []


def test_verified_cifar10_batches_are_parsed_to_nhwc(arrays, tmp_path, monkeypatch):
    x, y = arrays("cifar10", "test")
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    table = {}
    for i, file in enumerate(cifar.CIFAR10_FILES["train"]):
        part = slice(4 * i, 4 * i + 4)
        rows = x[part].transpose(0, 3, 1, 2).reshape(4, -1)  # the original CHW row layout
        (directory / file).write_bytes(pickle.dumps({"data": rows, "labels": y[part].tolist()}))
        table[file] = checksums.file_digest(directory / file)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", table)
    images, labels = load_arrays("cifar10", "train", tmp_path)
    np.testing.assert_array_equal(images, x[:20])
    np.testing.assert_array_equal(labels, y[:20])
    assert labels.dtype == np.int64


# --- where data comes from -------------------------------------------------------------------

def test_env_var_is_used_and_explicit_dir_wins(data_dir, tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    monkeypatch.setenv("CDL_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError) as e:
        load_arrays("mnist", "test")
    assert str(tmp_path / "mnist") in str(e.value)
    assert load_arrays("mnist", "test", data_dir)[0].shape == (10_000, 28, 28, 1)


def test_without_a_directory_tfds_is_used(monkeypatch):
    import tensorflow_datasets as tfds

    calls = []

    def fake_load(name, **kwargs):
        calls.append((name, kwargs["split"]))
        return tf.zeros([3, 28, 28, 1], tf.uint8), tf.constant([1, 2, 3], tf.int64)

    monkeypatch.setattr(tfds, "load", fake_load)
    images, labels = load_arrays("fashion_mnist", "train")
    assert calls == [("fashion_mnist", "train")]
    assert images.shape == (3, 28, 28, 1) and labels.dtype == np.int64


def test_argument_errors():
    with pytest.raises(ValueError, match="known datasets: mnist, fashion_mnist"):
        load_arrays("svhn", "train")
    with pytest.raises(ValueError, match="split 'val'"):
        load_arrays("mnist", "val")
    with pytest.raises(ValueError, match="make_dataset"):
        load_arrays("imagenet2012", "train")
    with pytest.raises(ValueError, match="known datasets"):
        dataset_info("cifar")
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset("mnist", "test", 0, training=False)
    with pytest.raises(ValueError, match="subset must be >= 1"):
        make_dataset("mnist", "test", 8, training=False, subset=0)


def test_subset_out_of_range_is_rejected(data_dir):
    with pytest.raises(ValueError, match=r"subset must be in \[1, 10000\]"):
        make_dataset("mnist", "test", 8, data_dir=data_dir, training=False, subset=10_001)


def test_dataset_info():
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("mnist").input_shape == (28, 28, 1)
    assert (dataset_info("cifar10").num_train, dataset_info("cifar10").num_test) == (50_000, 10_000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset_info("mnist").num_classes = 3


# --- pipelines -------------------------------------------------------------------------------

def _batches(ds, n=None):
    return [(x.numpy(), y.numpy()) for x, y in (ds.take(n) if n else ds)]


def test_same_seed_gives_identical_batches_and_other_seed_another_order(data_dir):
    def build(seed):
        return make_dataset(
            "cifar10", "test", 64, data_dir=data_dir, training=True, seed=seed, subset=512
        )

    a, b, c = build(0), build(0), build(1)
    for epoch in range(2):  # reshuffled every epoch, reproducibly
        batches_a, batches_b = _batches(a), _batches(b)
        for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
        if epoch == 0:
            first_epoch = batches_a
    assert not np.array_equal(first_epoch[0][1], batches_a[0][1])
    assert not np.array_equal(_batches(c, 1)[0][1], first_epoch[0][1])


def test_eval_pipeline_is_normalised_and_in_order(arrays, data_dir):
    x, y = arrays("mnist", "test")
    ds = make_dataset("mnist", "test", 100, data_dir=data_dir, training=False)
    (images, labels), = _batches(ds, 1)
    assert images.dtype == np.float32 and labels.dtype == np.int64
    mean, std = normalization("mnist")
    np.testing.assert_allclose(images, (x[:100] / 255.0 - mean[0]) / std[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, y[:100])


@pytest.mark.parametrize("name, size, pad, flip, default", [
    ("cifar10", 32, 4, True, True), ("mnist", 28, 2, False, False),
])
def test_augmentation_is_a_padded_crop_and_optional_flip(arrays, data_dir, name, size, pad, flip, default):
    def build(augment):
        return make_dataset(
            name, "test", 32, data_dir=data_dir, training=True, seed=3, augment=augment, subset=256
        )

    (plain, labels), = _batches(build(False), 1)
    (augmented, labels_aug), = _batches(build(True), 1)
    (by_default, _), = _batches(build(None), 1)
    np.testing.assert_array_equal(by_default, augmented if default else plain)
    np.testing.assert_array_equal(labels, labels_aug)  # same shuffle, images changed in place
    channels = plain.shape[-1]
    assert augmented.shape == plain.shape == (32, size, size, channels)
    assert not np.allclose(augmented, plain)
    mean, std = normalization(name)
    raw = np.round((plain * std + mean) * 255).astype(np.int64)
    padded = np.pad(raw, [(0, 0), (pad, pad), (pad, pad), (0, 0)])  # zero (black) padding
    recovered = (augmented * std + mean) * 255
    shifts = range(2 * pad + 1)
    flipped = 0
    for i in range(len(raw)):
        crops = [padded[i, dy:dy + size, dx:dx + size] for dy in shifts for dx in shifts]
        if any(np.allclose(recovered[i], c, atol=1e-2) for c in crops):
            continue
        assert flip and any(np.allclose(recovered[i], c[:, ::-1], atol=1e-2) for c in crops), i
        flipped += 1
    # Only images that match no unflipped crop count as flipped: with a flip probability of
    # 1/2 per image, some of the 32 (seeded) are.
    assert (flipped > 0) == flip


def test_subset_size_classes_and_drop_remainder(data_dir):
    ds = make_dataset("cifar10", "test", 32, data_dir=data_dir, training=False, subset=100)
    labels = np.concatenate([y for _, y in _batches(ds)])
    assert len(labels) == 100
    assert len(np.unique(labels)) == 10  # the file is sorted by label: the subset is shuffled first
    ds = make_dataset(
        "cifar10", "test", 32, data_dir=data_dir, training=False, subset=100, drop_remainder=True
    )
    assert [len(y) for _, y in _batches(ds)] == [32, 32, 32]


# --- validation split ------------------------------------------------------------------------

def _assert_pipeline_yields(ds, images, labels, name):
    """``ds`` yields exactly ``images`` (normalised as every split is) and ``labels``, in order."""
    mean, std = normalization(name)
    start = 0
    for x, y in ds:
        x, y = x.numpy(), y.numpy()
        np.testing.assert_allclose(x, (images[start:start + len(y)] / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(y, labels[start:start + len(y)])
        start += len(y)
    assert start == len(labels)


def test_validation_and_train_splits_partition_the_training_images(arrays, data_dir):
    images, labels = arrays("mnist", "train")
    held_out = validation_mask(images, 5000)
    assert held_out.sum() == 5000

    def split(name):
        return make_dataset("mnist", name, 5000, data_dir=data_dir, training=False, validation_size=5000)

    _assert_pipeline_yields(split("validation"), images[held_out], labels[held_out], "mnist")
    _assert_pipeline_yields(split("train"), images[~held_out], labels[~held_out], "mnist")


def test_validation_images_are_spread_over_the_classes(arrays):
    images, labels = arrays("cifar10", "train")  # the npz is sorted by label: its last 5000 images are trucks
    assert np.bincount(labels[validation_mask(images, 5000)], minlength=10).min() > 400


def test_validation_images_depend_on_the_pixels_not_their_order(arrays):
    images, _ = arrays("fashion_mnist", "train")
    mask = validation_mask(images, 2000)
    order = np.random.default_rng(7).permutation(len(images))
    np.testing.assert_array_equal(validation_mask(images[order], 2000), mask[order])
    smaller = validation_mask(images, 500)
    assert smaller.sum() == 500 and not (smaller & ~mask).any()  # held out at every larger size


def test_train_subset_comes_from_the_images_left_for_training(arrays, data_dir):
    images, _ = arrays("mnist", "train")
    held_out = {image.tobytes() for image in images[validation_mask(images, 5000)]}
    ds = make_dataset("mnist", "train", 500, data_dir=data_dir, training=True, subset=2000, validation_size=5000)
    mean, std = normalization("mnist")
    subset = [np.round((x * std + mean) * 255).astype(np.uint8).tobytes() for x, _ in ds.unbatch().as_numpy_iterator()]
    assert len(subset) == 2000 and not held_out.intersection(subset)
    with pytest.raises(ValueError, match=r"subset must be in \[1, 55000\] for mnist train"):
        make_dataset("mnist", "train", 8, data_dir=data_dir, training=False, subset=55_001)


def test_validation_size_zero_keeps_every_training_image(data_dir):
    def batches(validation_size):
        return int(make_dataset("mnist", "train", 1000, data_dir=data_dir, training=False,
                                validation_size=validation_size).cardinality())

    assert (batches(0), batches(5000)) == (60, 55)
    with pytest.raises(ValueError, match="validation split needs validation_size >= 1"):
        make_dataset("mnist", "validation", 8, data_dir=data_dir, training=False, validation_size=0)
    with pytest.raises(ValueError, match=r"validation_size must be in \[0, 60000\) for mnist"):
        make_dataset("mnist", "train", 8, data_dir=data_dir, training=False, validation_size=60_000)
    with pytest.raises(ValueError, match="split 'val'"):
        make_dataset("mnist", "val", 8, data_dir=data_dir, training=False)


def test_imagenet_validation_is_the_end_of_tfds_train_split(monkeypatch):
    import tensorflow_datasets as tfds

    splits = []

    def fake_load(name, split, **kwargs):
        splits.append(split)
        return tf.data.Dataset.from_tensors((tf.zeros([300, 400, 3], tf.uint8), tf.constant(1, tf.int64)))

    monkeypatch.setattr(tfds, "load", fake_load)
    for split, validation_size in (("train", 10_000), ("validation", 10_000), ("test", 10_000), ("train", 0)):
        ds = make_dataset("imagenet2012", split, 1, training=False, validation_size=validation_size)
        assert next(iter(ds))[0].shape == (1, 224, 224, 3)
    assert splits == ["train[:-10000]", "train[-10000:]", "validation", "train"]
