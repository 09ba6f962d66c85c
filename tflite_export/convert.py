"""TFLite conversion of an `InferenceGraph` and LiteRT inference."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tflite_export.graph import InferenceGraph


def to_tflite(graph: InferenceGraph, mode: str, input_shape, int8_io: bool = False) -> bytes:
    """Convert the graph: ``mode="int8"`` full integer from its fake-quant nodes, ``"float"`` float32."""
    module = tf.Module()
    module.serve = tf.function(graph.function(mode), input_signature=[tf.TensorSpec([None, *input_shape], tf.float32)],
                               autograph=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if mode == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter.convert()


# LiteRT kernel sets: the default (XNNPACK delegate over the optimized builtin kernels), the
# optimized builtin kernels alone, and the reference kernels. Their integer arithmetic differs
# in requantization rounding, so a model's int8 outputs can differ between them.
KERNELS = {
    "default": OpResolverType.AUTO,
    "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    "reference": OpResolverType.BUILTIN_REF,
}


class TFLiteModel:
    """A LiteRT interpreter over a ``.tflite`` flatbuffer, batching float inputs.

    ``kernels`` names the kernel set (`KERNELS`) the interpreter runs.
    """

    def __init__(self, content: bytes, num_threads: int = 2, kernels: str = "default"):
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {sorted(KERNELS)}, got {kernels!r}")
        self.interpreter = Interpreter(model_content=content, num_threads=num_threads,
                                       experimental_op_resolver_type=KERNELS[kernels])
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self._batch = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._batch != len(x):
            self.interpreter.resize_tensor_input(self._in["index"], [len(x), *self._in["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._in = self.interpreter.get_input_details()[0]
            self._out = self.interpreter.get_output_details()[0]
            self._batch = len(x)
        if self._in["dtype"] == np.int8:
            scale, zero = self._in["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        self.interpreter.set_tensor(self._in["index"], x.astype(self._in["dtype"]))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])
        if self._out["dtype"] == np.int8:
            scale, zero = self._out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def int8_tensors(self) -> List[Dict]:
        """Details and values of the int8 constant tensors (weights)."""
        out = []
        for d in self.interpreter.get_tensor_details():
            if d["dtype"] != np.int8 or len(d["shape"]) < 2:
                continue
            try:
                value = self.interpreter.get_tensor(d["index"])
            except ValueError:
                continue
            out.append({**d, "value": value})
        return out
