"""Communication cost of a CDL model: one broadcast of its weights, and split inference.

Broadcast: the ``.cdlz`` bytes of the model's inference weights (`coded_tensors`:
ANS-coded indices of the quantized tensors, float32 for the rest), against the same
tensors sent as float32, and with the quantized tensors as int8 (the rest float32).
``sum N H`` over the quantized tensors (plus the float32 rest) is the coded size an
ideal coder reaches.

Split inference at an activation site of ``N`` values per example: the device sends
the hard indices ``i = clip(round(x / q))`` of each example, ANS-coded with the site's
index PMF ``P`` (the marginal of the examples measured, known to both ends). An example
then costs about ``-sum_k log2 P(i_k)`` bits, whose average over the examples is the
bound ``N H(P)``; uncoded it costs ``32 N`` (float32) or ``8 N`` (int8) bits.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping

import constriction
import numpy as np
import tensorflow as tf
import tf_keras as keras

from cdl_tf.coded_model import coded_tensors, entropy_bound_bits
from cdl_tf.coding import QuantizedTensor, encode_bytes
from cdl_tf.layer_registry import inner_layer, output_quantizers
from cdl_tf.quantizers import CDLActivationQuantizer


def activation_sites(model) -> Dict[str, keras.layers.Layer]:
    """Quantized activation sites of a CDL model: wrapped layer's name -> its wrapper."""
    return {inner_layer(layer).name: layer for layer in model.layers
            if any(isinstance(q, CDLActivationQuantizer) for q, _ in output_quantizers(layer))}


def activation_site(model, name: str) -> keras.layers.Layer:
    """The wrapper of the activation site ``name`` (the layer's name, or its wrapper's)."""
    sites = activation_sites(model)
    for layer_name, wrapper in sites.items():
        if name in (layer_name, wrapper.name):
            return wrapper
    raise ValueError(f"{name!r} is not an activation site of {model.name}; sites: {sorted(sites)}")


def site_indices(model, name: str, x: np.ndarray, batch_size: int = 256) -> tuple:
    """Hard indices of the site ``name`` on the examples ``x``: ``(int32 [n, ...], quantizer)``.

    The wrapper outputs ``Q_u(x) = q i``, so ``i = round(output / q)`` exactly.
    """
    wrapper = activation_site(model, name)
    quantizer, variables = next((q, v) for q, v in output_quantizers(wrapper) if isinstance(q, CDLActivationQuantizer))
    q = quantizer.step_and_softness(variables)[0]
    head = keras.Model(model.inputs, wrapper.output)
    run = tf.function(lambda batch: tf.round(head(batch, training=False) / q), reduce_retracing=True)
    idx = np.concatenate([run(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)])
    return idx.astype(np.int32), quantizer


def ans_encode(symbols: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """1-D ``symbols`` in ``[0, len(counts))`` ANS-coded under the PMF ``counts / sum(counts)``.

    The coder of `cdl_tf.coding` (constriction's `AnsCoder` with a 24-bit categorical
    model), but with a PMF shared by many tensors instead of each tensor's own histogram.
    Returns the compressed ``uint32`` words.
    """
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.ascontiguousarray(symbols, dtype=np.int32),
                         constriction.stream.model.Categorical(np.asarray(counts, np.float64), perfect=False))
    return coder.get_compressed()


def broadcast_bits(model) -> Dict[str, float]:
    """Bits to send the model's inference weights once: ``.cdlz`` vs float32 vs int8."""
    tensors = coded_tensors(model)
    quantized = sum(t.indices.size for t in tensors.values() if isinstance(t, QuantizedTensor))
    rest = sum(np.size(t) for t in tensors.values() if not isinstance(t, QuantizedTensor))
    coded = 8.0 * len(encode_bytes(tensors))
    float32, int8 = 32.0 * (quantized + rest), 8.0 * quantized + 32.0 * rest
    return {
        "quantized_values": int(quantized), "float_values": int(rest),
        "cdlz_bits": coded, "entropy_bound_bits": entropy_bound_bits(tensors) + 32.0 * rest,
        "float32_bits": float32, "int8_bits": int8,
        "float32_over_cdlz": float32 / coded, "int8_over_cdlz": int8 / coded,
    }


def split_bits(model, name: str, x: np.ndarray, batch_size: int = 256) -> Dict[str, Any]:
    """Average bits per example of the activation at site ``name`` on ``x``, coded and not."""
    idx, quantizer = site_indices(model, name, x, batch_size)
    symbols = (idx - quantizer.lo).reshape(len(idx), -1)
    counts = np.bincount(symbols.reshape(-1), minlength=quantizer.hi - quantizer.lo + 1).astype(np.float64)
    pmf = counts / counts.sum()
    entropy = float(-np.sum(pmf[pmf > 0] * np.log2(pmf[pmf > 0])))
    n = symbols.shape[1]
    bits = float(np.mean([32 * ans_encode(example, counts).size for example in symbols]))
    return {
        "site": activation_site(model, name).layer.name, "values": int(n), "examples": int(len(idx)),
        "bits": quantizer.bits, "entropy_bits_per_value": entropy,
        "coded_bits": bits, "entropy_bound_bits": n * entropy,
        "float32_bits": 32.0 * n, "int8_bits": 8.0 * n,
        "float32_over_coded": 32.0 * n / bits, "int8_over_coded": 8.0 * n / bits,
    }


def communication_report(model, split_at: str, x: np.ndarray) -> Dict[str, Any]:
    """``{"broadcast": broadcast_bits}`` plus ``"split": split_bits`` when ``split_at`` names a site."""
    report: Dict[str, Any] = {"broadcast": broadcast_bits(model)}
    if split_at:
        report["split"] = split_bits(model, split_at, x)
    return report


def write_summaries(logdir: str, report: Mapping[str, Any], step: int) -> None:
    """The numeric fields of a `communication_report` as TensorBoard scalars ``communication/...``."""
    writer = tf.summary.create_file_writer(os.path.join(logdir, "communication"))
    with writer.as_default(step=step):
        for part, fields in report.items():
            for key, value in fields.items():
                if isinstance(value, (int, float)):
                    tf.summary.scalar(f"communication/{part}/{key}", value)
    writer.close()
