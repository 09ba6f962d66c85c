"""`load_arrays`: raw images and labels of a dataset, from a data directory or TFDS."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cdl_tf.data.cifar import load_cifar10, load_cifar100
from cdl_tf.data.errors import DatasetError
from cdl_tf.data.idx import load_idx_dataset
from cdl_tf.data.info import check_name, check_split

ARRAY_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
DATA_DIR_ENV = "CDL_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """``data_dir`` if given, else ``$CDL_DATA_DIR`` if set and non-empty, else ``None`` (TFDS)."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None


def load_arrays(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(images, labels)`` of ``split`` (``train``/``test``) of dataset ``name``.

    Images are uint8 NHWC (MNIST/Fashion-MNIST: ``(N, 28, 28, 1)``), labels int64.
    Files come from ``data_dir``, else ``$CDL_DATA_DIR`` (layout ``<dir>/mnist/``,
    ``<dir>/fashion_mnist/``, ``<dir>/cifar10/``, ...), else TFDS, which downloads
    them. Files in a directory are checksum-verified; `DatasetError` names any file
    that is missing, corrupted or malformed.
    """
    if name == "imagenet2012":
        raise ValueError(
            "imagenet2012 does not fit in memory; use make_dataset, which streams it from TFDS"
        )
    check_name(name, ARRAY_DATASETS)
    check_split(split)
    root = resolve_data_dir(data_dir)
    if root is None:
        images, labels = _load_tfds(name, split)
    elif name in ("mnist", "fashion_mnist"):
        images, labels = load_idx_dataset(root / name, name, split)
    elif name == "cifar10":
        images, labels = load_cifar10(root, split)
    else:
        images, labels = load_cifar100(root, split)
    return images, labels.astype(np.int64)


def _load_tfds(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    try:
        images, labels = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1, as_supervised=True))
    except Exception as e:  # TFDS raises many types (download, preparation, I/O errors).
        raise DatasetError(
            f"TFDS could not load {name!r} split {split!r} ({type(e).__name__}: {e}); pass data_dir "
            f"or set {DATA_DIR_ENV} to a directory holding the original files"
        ) from e
    return images, labels
