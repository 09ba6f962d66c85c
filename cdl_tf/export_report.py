"""`ExportReport`: what an exported run's ``export.json`` holds.

``cdl-export`` (`tflite_export.export.export_workdir`) writes one for a CDL or ``ste`` run; the
8-bit baselines (`tflite_export.baselines`) write one for a ``tfmot8`` or ``ptq8`` point, whose
int8 TFLite tensors are coded the same way, and for the ``float`` point, which holds its float32
size alone. The results table (`cdl_tf.results`) reads them.

A field that an export does not measure is ``None`` and is left out of the file. Fields added
after files were first written (`ExportAccuracy.tflite_float`, the per-kernel accuracies) read as
``None`` (empty) from an older file. A field of the wrong type, or one this version does not
know, is an `ExportReportError` that names it.

With ``N`` quantized weights, tensor ``t`` holding ``N_t`` of them with index entropy ``H_t``:

    entropy_bound_quantized = sum_t N_t H_t / 8   (bytes)
    bits_per_weight.entropy = sum_t N_t H_t / N
"""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import typing
from typing import Any, Dict, Mapping, Optional, Tuple

from cdl_tf.io import atomic_write_json

EXPORT_FILE = "export.json"
_KERNEL_FIELDS = ("tflite_int8", "top1_agreement")


class ExportReportError(ValueError):
    """An ``export.json`` field is missing, unknown or of the wrong type."""


@dataclasses.dataclass(frozen=True)
class ExportBytes:
    """Sizes in bytes: ``float32_weights`` stores every coded tensor (the float point: every
    weight) as float32; ``cdlz_ans`` is ``weights.cdlz``, ``cdlz_huffman`` the same tensors
    Huffman-coded; ``tflite_*`` the TFLite models."""

    float32_weights: int
    tflite_float: Optional[int] = None
    tflite_int8: Optional[int] = None
    cdlz_ans: Optional[int] = None
    cdlz_huffman: Optional[int] = None
    entropy_bound_quantized: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class BitsPerWeight:
    """Bits per quantized weight: the index ``entropy`` (module docstring), the coders' payloads
    with the live masks (``*_payload``), and the whole ``weights.cdlz`` (``cdlz_ans_total``)."""

    entropy: float
    ans_payload: float
    cdlz_ans_total: float
    huffman_payload: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class KernelAccuracy:
    """The int8 model on one LiteRT kernel set: its test accuracy and top-1 agreement with Keras."""

    tflite_int8: float
    top1_agreement: float


@dataclasses.dataclass(frozen=True)
class ExportAccuracy:
    """Test accuracies: the int8 TFLite model; the Keras ``Q_u`` model and its top-1 agreement
    with the int8 model; ``model_float.tflite`` (activations unrounded); per extra kernel set
    (``kernels``, stored as ``tflite_int8_<name>`` and ``top1_agreement_<name>``)."""

    tflite_int8: float
    keras_q_u: Optional[float] = None
    top1_agreement: Optional[float] = None
    tflite_float: Optional[float] = None
    kernels: Mapping[str, KernelAccuracy] = dataclasses.field(default_factory=dict)

    @classmethod
    def _parse_json(cls, data: Any, file: str, field: str) -> ExportAccuracy:
        """The accuracies of the JSON object ``data`` (field ``field`` of ``file``), kernels apart."""
        data = _object(data, file, field)
        if "kernels" in data:
            raise ExportReportError(f"{file}: unknown field(s) ['{field}.kernels']")
        names = sorted({key[len(k) + 1:] for key in data for k in _KERNEL_FIELDS if key.startswith(f"{k}_")})
        kernels = {}
        for name in names:
            values = {}
            for k in _KERNEL_FIELDS:
                key = f"{k}_{name}"
                if data.get(key) is None:
                    raise ExportReportError(f"{file}: missing field '{field}.{key}'")
                values[k] = _value(float, data.pop(key), file, f"{field}.{key}")
            kernels[name] = KernelAccuracy(**values)
        return dataclasses.replace(_parse(cls, data, file, field), kernels=kernels)

    def to_json(self) -> Dict[str, Any]:
        """The JSON object of the accuracies, each kernel set's flattened into it."""
        out = _fields_json(self, exclude=("kernels",))
        for name, accuracy in self.kernels.items():
            out.update({f"{field}_{name}": getattr(accuracy, field) for field in _KERNEL_FIELDS})
        return out


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """An exported run (``workdir``): its sizes, rates and accuracies on ``test_examples`` test
    images. ``int8_io``: the CDL int8 model has int8 inputs and outputs. The 8-bit baselines add
    the shape of each coded tensor (``tensors``), the conversion time and, for ``ptq8``, the float
    run converted (``source``)."""

    workdir: str
    bytes: ExportBytes
    quantized_weights: Optional[int] = None
    float_values: Optional[int] = None
    bits_per_weight: Optional[BitsPerWeight] = None
    test_examples: Optional[int] = None
    accuracy: Optional[ExportAccuracy] = None
    int8_io: Optional[bool] = None
    tensors: Optional[Mapping[str, Tuple[int, ...]]] = None
    convert_time_s: Optional[float] = None
    source: Optional[str] = None

    @classmethod
    def from_json(cls, data: Any, file: str = EXPORT_FILE) -> ExportReport:
        """The report of ``data``, the JSON object of an ``export.json`` (``file`` names it in errors)."""
        return _parse(cls, _object(data, file, ""), file)

    def to_json(self) -> Dict[str, Any]:
        """The JSON object of ``export.json`` (``None`` fields left out)."""
        return _fields_json(self)

    @classmethod
    def read(cls, export_dir: str) -> ExportReport:
        """The report in ``export_dir/export.json``."""
        path = os.path.join(export_dir, EXPORT_FILE)
        with open(path) as f:
            return cls.from_json(json.load(f), path)

    def write(self, export_dir: str) -> None:
        """Write ``export_dir/export.json`` (atomically)."""
        atomic_write_json(os.path.join(export_dir, EXPORT_FILE), self.to_json())

    def require(self, *fields: str) -> None:
        """Raise `ExportReportError` unless every dotted field of ``fields`` (``"bytes.cdlz_ans"``) is set."""
        missing = []
        for name in fields:
            value: Any = self
            for part in name.split("."):
                value = getattr(value, part) if value is not None else None
            if value is None:
                missing.append(name)
        if missing:
            raise ExportReportError(f"the export report of {self.workdir} has no {', '.join(missing)}")


def _object(data: Any, file: str, field: str) -> Dict[str, Any]:
    if not isinstance(data, dict):
        raise ExportReportError(f"{file}: {field or 'the report'} must be a JSON object, got {data!r}")
    return dict(data)


def _parse(cls, data: Mapping[str, Any], file: str, field: str = ""):
    """``cls`` from the JSON object ``data`` (field ``field`` of ``file``), each field converted to
    its annotated type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{field}." if field else ""
    unknown = sorted(prefix + name for name in set(data) - set(fields))
    if unknown:
        raise ExportReportError(f"{file}: unknown field(s) {unknown}; {field or 'the report'} holds {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        value = data.get(name)
        if value is not None:
            values[name] = _value(hints[name], value, file, prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ExportReportError(f"{file}: missing field {prefix + name!r}")
    return cls(**values)


_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _value(kind, value: Any, file: str, field: str) -> Any:
    """``value`` as the type ``kind``: a record of this module, a mapping, a tuple, or one of
    `_SCALARS`, optional or not."""
    if typing.get_origin(kind) is typing.Union:  # Optional[X]
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        if hasattr(kind, "_parse_json"):
            return kind._parse_json(value, file, field)
        return _parse(kind, _object(value, file, field), file, field)
    if origin in (collections.abc.Mapping, dict):
        return {k: _value(args[1], v, file, f"{field}.{k}") for k, v in _object(value, file, field).items()}
    if origin is tuple:
        if not isinstance(value, list):
            raise ExportReportError(f"{file}: {field} must be a list, got {value!r}")
        return tuple(_value(args[0], v, file, f"{field}[{i}]") for i, v in enumerate(value))
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float and number:
        return float(value)
    if (kind is int and number and isinstance(value, int)) or (kind in (bool, str) and isinstance(value, kind)):
        return value
    raise ExportReportError(f"{file}: {field} must be {_SCALARS[kind]}, got {value!r}")


def _fields_json(record, exclude: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """The JSON object of a record: its set fields, nested records and tuples as JSON values."""
    return {f.name: _json(getattr(record, f.name)) for f in dataclasses.fields(record)
            if f.name not in exclude and getattr(record, f.name) is not None}


def _json(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return value.to_json() if hasattr(value, "to_json") else _fields_json(value)
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value
