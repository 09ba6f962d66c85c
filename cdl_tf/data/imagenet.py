"""ImageNet (ILSVRC2012) through TFDS: random-resized-crop training and resize-256/crop-224 eval."""
from __future__ import annotations

import os

import tensorflow as tf

from cdl_tf.data.errors import DatasetError
from cdl_tf.data.tfdata import finish, with_seeds

SIZE = 224
RESIZE = 256
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SHUFFLE_BUFFER = 10_000


def imagenet_dataset(
    split: str,
    batch_size: int,
    *,
    data_dir: str | os.PathLike[str] | None,
    training: bool,
    seed: int,
    augment: bool | None,
    subset: int | None,
    drop_remainder: bool,
    validation_size: int,
) -> tf.data.Dataset:
    """`make_dataset` for ``imagenet2012``, streamed from TFDS: ``test`` is ILSVRC2012's
    validation set, ``validation`` the last ``validation_size`` examples of TFDS's train split
    (which TFDS stores in a fixed shuffled order), ``train`` the examples before them.

    ``data_dir`` is the TFDS data directory (TFDS needs the manually downloaded
    ILSVRC2012 archives to prepare it). Not cached: it does not fit in memory.
    ``subset=n`` takes the first ``n`` examples of the (file-shuffled if training) stream.
    """
    import tensorflow_datasets as tfds

    tfds_split = {"train": f"train[:-{validation_size}]" if validation_size else "train",
                  "validation": f"train[-{validation_size}:]", "test": "validation"}[split]
    try:
        ds = tfds.load(
            "imagenet2012", split=tfds_split, data_dir=data_dir,
            as_supervised=True, shuffle_files=training, read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except Exception as e:  # TFDS raises many types (missing manual files, I/O errors).
        raise DatasetError(
            f"TFDS could not load imagenet2012 ({type(e).__name__}: {e}); see "
            "https://www.tensorflow.org/datasets/catalog/imagenet2012 for the manual download"
        ) from e
    if subset is not None:
        ds = ds.take(subset)
    if training:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    if augment is None:
        augment = training
    if augment:
        ds = with_seeds(ds, seed).map(_random_resized_crop_flip, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(_resize_center_crop, num_parallel_calls=tf.data.AUTOTUNE)
    mean, std = tf.constant(MEAN), tf.constant(STD)
    ds = ds.map(lambda x, y: ((x / 255.0 - mean) / std, y), tf.data.AUTOTUNE)
    return finish(ds, batch_size, drop_remainder)


def _random_resized_crop_flip(
    image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    box_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), box_seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.image.resize(tf.slice(image, begin, size), (SIZE, SIZE))
    return tf.image.stateless_random_flip_left_right(image, flip_seed), label


def _resize_center_crop(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.round(hw * RESIZE / tf.reduce_min(hw)), tf.int32)
    image = tf.image.resize(image, new_hw)
    return tf.image.resize_with_crop_or_pad(image, SIZE, SIZE), label
