"""`tf.data` stages shared by the pipelines: per-element seeds and the final batching."""
import tensorflow as tf


def with_seeds(ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Zip each element of ``ds`` with its own stateless-op seed (shape ``[2]``), new every epoch."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds)).map(lambda xy, s: (*xy, s))


def finish(ds: tf.data.Dataset, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
    """Batch, prefetch and make the element order deterministic."""
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(options)
