"""Quantized weight tensors and their empirical index entropy.

A quantized tensor stores integer indices ``i`` in the alphabet ``[lo, hi]`` and a
step ``q``; its real values are ``w = i * q`` or, with per-channel scales ``s``
along the last axis, ``w[..., c] = i[..., c] * q * s[c]``.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np

INDEX_MIN = -(2**31)
INDEX_MAX = 2**31 - 1


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """Integer indices with alphabet ``[lo, hi]``, step ``q`` and optional scales.

    Attributes:
      indices: integer array of any shape (0-size allowed); every entry in ``[lo, hi]``.
      lo, hi: alphabet bounds, ``INDEX_MIN <= lo <= hi <= INDEX_MAX`` (int32).
      q: quantisation step, finite and ``> 0``; rounded to float32 on construction
        because that is how it is stored.
      scales: ``None`` or float32 multipliers of shape ``(indices.shape[-1],)``,
        finite; converted to float32 on construction.
    """

    indices: np.ndarray
    lo: int
    hi: int
    q: float
    scales: np.ndarray | None = None

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices)
        if not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"indices must have an integer dtype, got {indices.dtype}")
        lo, hi = operator.index(self.lo), operator.index(self.hi)
        if not INDEX_MIN <= lo <= hi <= INDEX_MAX:
            raise ValueError(f"need {INDEX_MIN} <= lo <= hi <= {INDEX_MAX}, got lo={lo}, hi={hi}")
        if indices.size:
            i_min, i_max = int(indices.min()), int(indices.max())
            if i_min < lo or i_max > hi:
                raise ValueError(f"indices span [{i_min}, {i_max}], outside [lo={lo}, hi={hi}]")
        q = float(np.float32(self.q))
        if not (math.isfinite(q) and q > 0):
            raise ValueError(f"q must be finite and > 0 as float32, got {self.q!r}")
        scales = self.scales
        if scales is not None:
            scales = np.asarray(scales, dtype=np.float32)
            if indices.ndim == 0:
                raise ValueError("scales need indices with at least one axis")
            if scales.shape != (indices.shape[-1],):
                raise ValueError(
                    f"scales shape {scales.shape} != (indices.shape[-1],) = ({indices.shape[-1]},)"
                )
            if not np.all(np.isfinite(scales)):
                raise ValueError("scales must be finite")
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "scales", scales)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.indices.shape

    @property
    def values(self) -> np.ndarray:
        """Dequantised float32 values ``indices * q`` (``* scales`` along the last axis)."""
        out = self.indices.astype(np.float32) * np.float32(self.q)
        if self.scales is not None:
            out = out * self.scales
        return out


def index_entropy_bits(indices: np.ndarray) -> float:
    """Empirical entropy in bits per value, ``H = -sum_i p_i log2 p_i``.

    ``p_i`` is the relative frequency of index value ``i`` in ``indices``; an empty
    array has ``H = 0``.
    """
    flat = np.asarray(indices).reshape(-1)
    if flat.size == 0:
        return 0.0
    _, counts = np.unique(flat, return_counts=True)
    p = counts / flat.size
    return float(-(p * np.log2(p)).sum())
