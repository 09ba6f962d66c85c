"""A CDL model's inference weights as ``.cdlz`` tensors, and back.

`coded_tensors` extracts them (`tensors`), with the units nothing reads at their cheapest
values (`unread`) and output channels in canonical order (`unit_order`), both following the
readers of each layer's channels (`channels`); `apply_coded` puts decoded tensors back.
"""
from cdl_tf.coded_model.channels import ChannelReaders, channel_readers
from cdl_tf.coded_model.tensors import apply_coded, check_names, checked_value, coded_tensors, entropy_bound_bits
from cdl_tf.coded_model.unit_order import order_units, unit_order_bits
from cdl_tf.coded_model.unread import fill_unread, nonzero

__all__ = ["ChannelReaders", "apply_coded", "channel_readers", "check_names", "checked_value", "coded_tensors",
           "entropy_bound_bits", "fill_unread", "nonzero", "order_units", "unit_order_bits"]
