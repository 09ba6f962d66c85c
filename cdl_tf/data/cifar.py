"""CIFAR-10 and CIFAR-100 from a data directory, checksum-verified before use.

CIFAR-10: ``cifar10/cifar10.npz`` (arrays ``x_train``, ``y_train``, ``x_test``,
``y_test``, images HWC RGB), or the original ``cifar-10-batches-py/``.
CIFAR-100: the original ``cifar-100-python/``. The original directories are looked
up under ``<data_dir>/<name>/`` and then ``<data_dir>/``. Pickles are unpickled only
after their bytes match the official MD5.
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import numpy as np

from cdl_tf.data.checksums import file_digest, file_key, read_verified
from cdl_tf.data.errors import DatasetError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_TFDS_HINT = "or leave data_dir and CDL_DATA_DIR unset to let TFDS download the dataset."
HOW_TO_OBTAIN = {
    "cifar10": f"Get cifar-10-python.tar.gz from {CIFAR_URL} and extract cifar-10-batches-py/ "
    f"into the data directory, {_TFDS_HINT}",
    "cifar100": f"Get cifar-100-python.tar.gz from {CIFAR_URL} and extract cifar-100-python/ "
    f"into the data directory, {_TFDS_HINT}",
}

NPZ_NAME = "cifar10.npz"
NPZ_MD5 = "9c8134d855e39bb7fc62d126cbacf5a2"
# SHA-256 of each array's raw C-order bytes; they hold whatever numpy/zlib wrote the file.
NPZ_ARRAYS = {
    "x_train": ((50_000, 32, 32, 3), "61bea91e73ac2b02dfb856e685981dce64abe13d4e780aa98a1ac1e7c056d03b"),
    "y_train": ((50_000,), "a29f2a5ffc141bb1c9e1af453e9a5ef8c316b2f675f8cea1d849d220d33a14fb"),
    "x_test": ((10_000, 32, 32, 3), "52a9dc125982c0440d5eed87474b2f521e96c45a98df08e4329aa42c692b9d9d"),
    "y_test": ((10_000,), "a054c239a40ee7f2a5745e7e4bc11a51e9cb40c98134b602c1068e6a207487c6"),
}
# Official MD5s of the files in the python-pickle distributions.
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR100_DIR = "cifar-100-python"
CIFAR100_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}

# (resolved path, size, mtime_ns, array name) of npz arrays whose SHA-256 matched.
_VERIFIED_ARRAYS: set[tuple[str, int, int, str]] = set()


def load_cifar10(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 32, 32, 3) uint8, labels (N,))`` from the npz or the original batches."""
    npz = data_dir / "cifar10" / NPZ_NAME
    if npz.exists():
        return load_npz(npz, split)
    batches = _find_dir(data_dir, "cifar10", CIFAR10_DIR)
    if batches is None:
        raise DatasetError(
            f"{npz}: file not found, and no {CIFAR10_DIR}/ directory in {data_dir / 'cifar10'} "
            f"or {data_dir}. {HOW_TO_OBTAIN['cifar10']}"
        )
    files = CIFAR10_FILES[split]
    parts = [_load_pickle(batches / f, CIFAR10_MD5[f], "labels", "cifar10") for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar100(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 32, 32, 3) uint8, fine labels (N,))`` from ``cifar-100-python/``."""
    directory = _find_dir(data_dir, "cifar100", CIFAR100_DIR) or data_dir / "cifar100" / CIFAR100_DIR
    return _load_pickle(directory / split, CIFAR100_MD5[split], "fine_labels", "cifar100")


def load_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of the CIFAR-10 npz: the file MD5 must match, else every loaded array's SHA-256."""
    how = HOW_TO_OBTAIN["cifar10"]
    md5 = file_digest(path)
    names = (f"x_{split}", f"y_{split}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = [npz[name] for name in names]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DatasetError(
            f"{path}: cannot read arrays {names} ({e}); file MD5 {md5}, expected {NPZ_MD5}. {how}"
        ) from e
    for name, array in zip(names, arrays):
        shape, sha256 = NPZ_ARRAYS[name]
        if array.shape != shape or array.dtype != np.uint8:
            raise DatasetError(
                f"{path}: array {name} is {array.dtype}{array.shape}, expected uint8{shape}. {how}"
            )
        key = (*file_key(path), name)
        if md5 == NPZ_MD5 or key in _VERIFIED_ARRAYS:
            continue
        actual = hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()
        if actual != sha256:
            raise DatasetError(
                f"{path}: file MD5 is {md5}, not the reference {NPZ_MD5}, and array {name} fails "
                f"its SHA-256 check: expected {sha256}, got {actual}; the file is corrupted or "
                f"holds other data. {how}"
            )
        _VERIFIED_ARRAYS.add(key)
    return arrays[0], arrays[1]


def _find_dir(data_dir: Path, name: str, dirname: str) -> Path | None:
    for directory in (data_dir / name / dirname, data_dir / dirname):
        if directory.is_dir():
            return directory
    return None


def _load_pickle(path: Path, md5: str, labels_key: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = pickle.loads(read_verified(path, md5, HOW_TO_OBTAIN[name]), encoding="latin1")
    data, labels = np.asarray(batch["data"]), np.asarray(batch[labels_key])
    if data.dtype != np.uint8 or data.shape[1:] != (3072,) or labels.shape != data.shape[:1]:
        raise DatasetError(
            f"{path}: expected uint8 data of shape (N, 3072) and N labels, "
            f"got {data.dtype}{data.shape} data and {labels.shape} labels"
        )
    # Rows are 1024 R, then G, then B values of a 32x32 image.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels
