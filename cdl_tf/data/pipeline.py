"""`make_dataset`: deterministic, normalised, optionally augmented `tf.data` pipelines."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import numpy as np
import tensorflow as tf

from cdl_tf.data.arrays import ARRAY_DATASETS, load_arrays
from cdl_tf.data.imagenet import imagenet_dataset
from cdl_tf.data.info import PIPELINE_SPLITS, VALIDATION_SIZE, check_name, check_split, check_validation_size
from cdl_tf.data.tfdata import finish, with_seeds

def normalization(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` applied to images scaled to [0, 1]: ``(x - mean) / std``.

    The mean is the train mean rounded to a whole pixel value, so a single-channel
    normalised image is exactly an int8 grid with an integer zero point and TFLite's
    int8 input loses nothing.
    """
    mean, std = STATS[name]
    return (np.round(np.multiply(mean, 255.0)) / 255.0).astype(np.float32), np.asarray(std, np.float32)


# Mean and population std of the train images scaled to [0, 1] (per channel for CIFAR).
STATS = {
    "mnist": ((0.13066048,), (0.30810780,)),
    "fashion_mnist": ((0.28604060,), (0.35302424,)),
    "cifar10": ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
    "cifar100": ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)),
}


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A random crop of the image zero-padded by ``pad`` pixels (a shift of up to ``pad``
    pixels each way), then a random horizontal flip if ``flip``; ``default``: on for
    training unless asked otherwise."""

    pad: int
    flip: bool
    default: bool


AUGMENTATIONS = {
    "cifar10": Augmentation(pad=4, flip=True, default=True),  # the torchvision recipe
    "cifar100": Augmentation(pad=4, flip=True, default=True),
    "mnist": Augmentation(pad=2, flip=False, default=False),  # digits are not mirror-symmetric
    "fashion_mnist": Augmentation(pad=2, flip=True, default=False),
}


def make_dataset(
    name: str,
    split: str,
    batch_size: int,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    training: bool,
    seed: int = 0,
    augment: bool | None = None,
    subset: int | None = None,
    drop_remainder: bool = False,
    validation_size: int = VALIDATION_SIZE,
) -> tf.data.Dataset:
    """Batches of ``(float32 normalised images, int64 labels)`` of ``split`` of ``name``.

    ``split`` is ``train``, ``validation`` or ``test``: the validation split is the
    ``validation_size`` training images that `validation_mask` picks, ``train`` the others
    (all of them if ``validation_size`` is 0). The raw uint8 images are cached, then
    shuffled if ``training`` (reshuffled every epoch), then augmented if ``augment``
    (default: ``training`` and the dataset's `AUGMENTATIONS` default), then scaled to
    [0, 1] and normalised with the train mean/std (per channel for CIFAR), the same for
    every split. ``subset=n`` keeps the first ``n`` examples of a seeded permutation of
    the split. Everything random derives from ``seed`` through stateless ops, so
    pipelines built with equal seeds yield identical batches. ``data_dir`` resolves as in
    `load_arrays`; for ``imagenet2012`` it is the TFDS data directory (see `imagenet_dataset`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be >= 1, got {subset}")
    check_split(split, PIPELINE_SPLITS)
    check_validation_size(name, split, validation_size)
    if name == "imagenet2012":
        return imagenet_dataset(
            split, batch_size, data_dir=data_dir, training=training, seed=seed, augment=augment,
            subset=subset, drop_remainder=drop_remainder, validation_size=validation_size,
        )
    check_name(name, ARRAY_DATASETS)
    augmentation = AUGMENTATIONS[name]
    if augment is None:
        augment = training and augmentation.default
    images, labels = load_arrays(name, "test" if split == "test" else "train", data_dir)
    if split != "test" and validation_size:
        keep = validation_mask(images, validation_size)
        if split == "train":
            keep = ~keep
        images, labels = images[keep], labels[keep]
    if subset is not None:
        if subset > len(labels):
            raise ValueError(f"subset must be in [1, {len(labels)}] for {name} {split}, got {subset}")
        keep = np.random.default_rng(seed).permutation(len(labels))[:subset]
        images, labels = images[keep], labels[keep]

    ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if training:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if augment:
        ds = with_seeds(ds, seed).map(functools.partial(_augment, augmentation), num_parallel_calls=tf.data.AUTOTUNE)
    mean, std = (tf.constant(v) for v in normalization(name))
    ds = ds.map(lambda x, y: ((tf.cast(x, tf.float32) / 255.0 - mean) / std, y), tf.data.AUTOTUNE)
    return finish(ds, batch_size, drop_remainder)


def validation_mask(images: np.ndarray, size: int) -> np.ndarray:
    """Boolean mask of the ``size`` images whose pixels hash lowest (64-bit BLAKE2b), ties in order.

    A rule on the pixels rather than their position picks the same images from every source
    of a dataset (the CIFAR-10 npz is sorted by label, TFDS stores examples shuffled), spreads
    them over the classes, and the images held out at one size are among those held out at
    every larger one.
    """
    keys = np.array([int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "big")
                     for image in images], np.uint64)
    mask = np.zeros(len(images), bool)
    mask[np.argsort(keys, kind="stable")[:size]] = True
    return mask


def _augment(
    augmentation: Augmentation, image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
    pad = augmentation.pad
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)
    if augmentation.flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image, label
