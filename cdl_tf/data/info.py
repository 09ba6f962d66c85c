"""`DatasetInfo` and the table of supported datasets."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts of a dataset: class count, model input shape (HWC) and split sizes."""

    num_classes: int
    input_shape: tuple[int, int, int]
    num_train: int
    num_test: int


_INFO = {
    "mnist": DatasetInfo(10, (28, 28, 1), 60_000, 10_000),
    "fashion_mnist": DatasetInfo(10, (28, 28, 1), 60_000, 10_000),
    "cifar10": DatasetInfo(10, (32, 32, 3), 50_000, 10_000),
    "cifar100": DatasetInfo(100, (32, 32, 3), 50_000, 10_000),
    # Test split = the ILSVRC2012 validation set.
    "imagenet2012": DatasetInfo(1000, (224, 224, 3), 1_281_167, 50_000),
}
DATASETS = tuple(_INFO)
SPLITS = ("train", "test")  # of the files
PIPELINE_SPLITS = ("train", "validation", "test")  # of `make_dataset`: validation is carved from train
VALIDATION_SIZE = 5000  # training images held out as the validation split by default


def dataset_info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of ``name``; `ValueError` listing the known names otherwise."""
    check_name(name, DATASETS)
    return _INFO[name]


def check_name(name: str, known: tuple[str, ...]) -> None:
    """Raise `ValueError` unless ``name`` is one of ``known``."""
    if name not in known:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(known)}")


def check_split(split: str, known: tuple[str, ...] = SPLITS) -> None:
    """Raise `ValueError` unless ``split`` is one of ``known`` (default: ``train``, ``test``)."""
    if split not in known:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(known)}")


def check_validation_size(name: str, split: str, validation_size: int) -> None:
    """Raise `ValueError` unless ``validation_size`` leaves training images of ``name``, and is
    >= 1 for the ``validation`` split."""
    num_train = dataset_info(name).num_train
    if not 0 <= validation_size < num_train:
        raise ValueError(f"validation_size must be in [0, {num_train}) for {name}, got {validation_size}")
    if split == "validation" and not validation_size:
        raise ValueError("the validation split needs validation_size >= 1")
