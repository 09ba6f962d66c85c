"""Datasets: checksum-verified raw arrays and deterministic `tf.data` input pipelines."""
from cdl_tf.data.arrays import load_arrays
from cdl_tf.data.errors import DatasetError
from cdl_tf.data.info import DatasetInfo, dataset_info
from cdl_tf.data.pipeline import make_dataset

__all__ = ["DatasetError", "DatasetInfo", "dataset_info", "load_arrays", "make_dataset"]
