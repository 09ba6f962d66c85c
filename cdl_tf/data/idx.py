"""MNIST and Fashion-MNIST from their original IDX ``.gz`` files, MD5-verified before parsing."""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from cdl_tf.data.checksums import check_md5
from cdl_tf.data.errors import DatasetError
from cdl_tf.data.info import dataset_info

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Official MD5s of the original distribution files (as also used by torchvision).
OFFICIAL_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
HOW_TO_OBTAIN = {
    "mnist": "Get the original file from http://yann.lecun.com/exdb/mnist/",
    "fashion_mnist": "Get the original file from https://github.com/zalandoresearch/fashion-mnist",
}
_TFDS_HINT = ", or leave data_dir and CDL_DATA_DIR unset to let TFDS download the dataset."
_UBYTE = 0x08


def load_idx_dataset(directory: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28, 1) uint8, labels (N,) uint8)`` of one split from ``directory``."""
    info = dataset_info(name)
    count = info.num_train if split == "train" else info.num_test
    how = HOW_TO_OBTAIN[name] + _TFDS_HINT
    images_file, labels_file = (directory / f for f in FILES[split])
    for path in (images_file, labels_file):
        check_md5(path, OFFICIAL_MD5[name][path.name], how)
    images = read_idx(images_file, (count, *info.input_shape[:2]))
    labels = read_idx(labels_file, (count,))
    return images[..., None], labels


def read_idx(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The unsigned-byte IDX array in gzip file ``path``; `DatasetError` unless it has ``shape``."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: not a valid gzip file ({e})") from e
    ndim = len(shape)
    header = 4 + 4 * ndim
    expected_magic = bytes((0, 0, _UBYTE, ndim))
    if data[:4] != expected_magic:
        raise DatasetError(
            f"{path}: IDX magic {data[:4].hex()} is not {expected_magic.hex()} "
            f"(unsigned bytes, {ndim} dimension(s))"
        )
    if len(data) < header:
        raise DatasetError(f"{path}: IDX header truncated ({len(data)} bytes, expected {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if dims != shape:
        raise DatasetError(f"{path}: IDX dimensions {dims}, expected {shape}")
    if len(data) - header != math.prod(shape):
        raise DatasetError(
            f"{path}: IDX payload has {len(data) - header} bytes, "
            f"expected {math.prod(shape)} for shape {shape}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy()
