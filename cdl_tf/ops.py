"""CDL quantizers and index-rate functions in pure TensorFlow.

A quantized tensor has a step ``q > 0``, a softness ``alpha > 0`` and an integer
alphabet ``A = {lo, ..., hi}``. The conditional PMF of index ``i`` given a value
``theta`` is

    P(i | theta) = exp(-alpha (theta - i q)^2) / sum_{j in A} exp(-alpha (theta - j q)^2)

and from it

    Q_p(theta) = I q,  I ~ P(. | theta)                (probabilistic quantizer)
    Q_d(theta) = q E[I] = E[Q_p(theta)]                (soft deterministic quantizer)
    Q_u(theta) = q clip(round(theta / q), lo, hi)      (nearest point)

With ``window=k`` the CPMF is evaluated only on the ``k`` levels of ``A`` nearest
to ``theta / q`` (cost O(k) instead of O(|A|) per value).

Gradients are analytic (CDL_SPEC section 1). Writing ``l_j = -alpha d_j^2`` with
``d_j = theta - j q``, every derivative of ``Q_d`` and of the soft index counts
``c_m = sum_n P(m | theta_n)`` is a covariance under ``P(. | theta)``: for an
upstream gradient ``g`` on the values and ``G`` on the counts, let
``W_j = g q j + G_j``; then

    dL/dtheta = Cov(W, dl/dtheta) = Cov(W, -2 alpha d)
    dL/dalpha = Cov(W, -d^2)
    dL/dq     = g E[I] + Cov(W, 2 alpha j d)

which reproduces ``dQ_d/dtheta = 2 alpha Var(Z)``, ``dQ_d/dalpha = -Cov(Z, d^2)``
and ``dQ_d/dq = E[I] + 2 alpha q Cov(I, I d)``. The backward pass recomputes the
CPMF from the inputs, so no ``k``-wide tensor is kept alive between passes.
"""
from __future__ import annotations

import functools
from typing import Literal, Optional

import tensorflow as tf

ValueMode = Literal["soft", "sample", "nearest"]

__all__ = [
    "alpha_from_kappa",
    "kappa_from_alpha",
    "q_u",
    "q_d",
    "q_p",
    "q_ste",
    "quantize_with_counts",
    "index_counts",
    "index_pmf",
    "entropy_bits",
    "pmf_entropy_bits",
    "hard_index_counts",
]


def alpha_from_kappa(kappa: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
    """Softness from the dimensionless hardness ``kappa = alpha q^2``."""
    return kappa / tf.square(q)


def kappa_from_alpha(alpha: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
    """Dimensionless hardness ``kappa = alpha q^2``; peak slope of ``Q_d`` is ``kappa / 2``."""
    return alpha * tf.square(q)


def _check_alphabet(lo: int, hi: int, window: Optional[int]) -> None:
    if int(lo) != lo or int(hi) != hi or lo > hi:
        raise ValueError(f"alphabet bounds must be integers with lo <= hi, got lo={lo}, hi={hi}")
    if window is not None and (int(window) != window or window < 1):
        raise ValueError(f"window must be a positive integer or None, got {window}")


def q_u(theta: tf.Tensor, q: tf.Tensor, lo: int, hi: int) -> tf.Tensor:
    """Nearest reconstruction point ``q clip(round(theta / q), lo, hi)``."""
    _check_alphabet(lo, hi, None)
    theta = tf.convert_to_tensor(theta)
    q = tf.cast(q, theta.dtype)
    return q * tf.clip_by_value(tf.round(theta / q), float(lo), float(hi))


def _window_size(lo: int, hi: int, window: Optional[int]) -> int:
    """Number of levels on which the CPMF is evaluated."""
    size = hi - lo + 1
    return size if window is None or window >= size else window


def _levels(u: tf.Tensor, lo: int, hi: int, window: Optional[int]):
    """Levels on which the CPMF is evaluated (``[..., k]``) and the nearest level (``[...]``).

    ``u = theta / q``. The window is the ``k`` levels around the nearest, shifted inside ``A``.
    """
    size = hi - lo + 1
    k = _window_size(lo, hi, window)
    nearest = tf.clip_by_value(tf.round(u), float(lo), float(hi))
    if k == size:
        first = tf.fill(tf.shape(u), tf.constant(float(lo), u.dtype))
    else:
        first = tf.clip_by_value(nearest - float(k // 2), float(lo), float(hi - k + 1))
    return first[..., None] + tf.range(k, dtype=u.dtype), nearest


def _cpmf(theta, q, alpha, lo: int, hi: int, window: Optional[int]):
    """CPMF on the evaluated levels: ``(p [..., k], levels [..., k], d [..., k])``.

    Logits are taken relative to the nearest level, ``-alpha (d_j^2 - d_nearest^2) <= 0``,
    so the exponentials cannot overflow and no max-subtraction pass is needed.
    """
    u = theta / q
    levels, nearest = _levels(u, lo, hi, window)
    expand = lambda t: t[..., None] if t.shape.rank else t
    d = theta[..., None] - levels * expand(q)
    ref = tf.square(theta - nearest * q)[..., None]
    e = tf.exp(-expand(alpha) * (tf.square(d) - ref))
    return e / tf.reduce_sum(e, axis=-1, keepdims=True), levels, d


def _sum_to_shape(grad: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """Sum a broadcast gradient back to a parameter's shape."""
    _, axes = tf.raw_ops.BroadcastGradientArgs(s0=tf.shape(grad), s1=shape)
    return tf.reshape(tf.reduce_sum(grad, axis=axes), shape)


def _on_tpu() -> bool:
    """Whether ops are being traced for a `TPUStrategy`, whose steps XLA compiles whole.

    `tf.math.bincount` sizes its output by ``max(ids) + 1``, which XLA cannot evaluate at
    compile time when ``ids`` depend on variables; there counts are segment sums of static size.
    """
    return tf.distribute.has_strategy() and isinstance(
        tf.distribute.get_strategy(), (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)
    )


def _index_ids(levels: tf.Tensor, lo: int, hi: int) -> tf.Tensor:
    """Alphabet positions ``levels - lo`` as int32, clipped so that a NaN input cannot index outside."""
    return tf.clip_by_value(tf.cast(levels, tf.int32) - lo, 0, hi - lo)


def _scatter_counts(p: tf.Tensor, ids: tf.Tensor, size: int) -> tf.Tensor:
    """Soft counts ``sum_n P(j | theta_n)`` per level from windowed CPMFs and their level ids.

    A weighted bincount, which is fast on CPU; on TPU a segment sum of static size.
    """
    p, ids = tf.reshape(p, [-1]), tf.reshape(ids, [-1])
    if _on_tpu():
        return tf.math.unsorted_segment_sum(p, ids, size)
    return tf.math.bincount(ids, weights=p, minlength=size, maxlength=size, dtype=p.dtype)


@functools.lru_cache(maxsize=None)
def _kernels(lo: int, hi: int, window: Optional[int], value: str):
    """Forward ``(theta, q, alpha, seed) -> (values, counts)`` and backward passes for one
    alphabet, window and value mode.

    The CPMF work runs in XLA-compiled kernels; the counts are summed outside XLA, which is
    faster on CPU: a column sum of the CPMF on the whole alphabet, otherwise a weighted
    bincount over the level ids that the kernel returns beside the windowed CPMF.
    """
    size = hi - lo + 1
    full = _window_size(lo, hi, window) == size

    def kernel(theta, q, alpha, seed):
        p, levels, _ = _cpmf(theta, q, alpha, lo, hi, window)
        if value == "soft":
            out = q * tf.reduce_sum(p * levels, axis=-1)
        elif value == "nearest":
            out = q * tf.clip_by_value(tf.round(theta / q), float(lo), float(hi))
        else:
            u = tf.random.stateless_uniform(tf.shape(theta), seed=seed, dtype=theta.dtype)
            below = tf.cast(tf.math.cumsum(p, axis=-1) < u[..., None], theta.dtype)
            idx = tf.minimum(tf.reduce_sum(below, axis=-1), float(levels.shape[-1] - 1))
            out = q * (levels[..., 0] + idx)
        if full:
            return out, p
        return out, p, _index_ids(levels, lo, hi)

    def backward(theta, q, alpha, g_out, g_counts):
        p, levels, d = _cpmf(theta, q, alpha, lo, hi, window)
        ids = _index_ids(levels, lo, hi)
        w = (g_out * q)[..., None] * levels + tf.gather(g_counts, ids)
        w_c = p * (w - tf.reduce_sum(p * w, axis=-1, keepdims=True))
        a = alpha[..., None] if alpha.shape.rank else alpha
        g_theta = tf.reduce_sum(w_c * (-2.0 * a * d), axis=-1)
        g_alpha = tf.reduce_sum(w_c * -tf.square(d), axis=-1)
        g_q = g_out * tf.reduce_sum(p * levels, axis=-1) + tf.reduce_sum(w_c * (2.0 * a * levels * d), axis=-1)
        return g_theta, _sum_to_shape(g_q, tf.shape(q)), _sum_to_shape(g_alpha, tf.shape(alpha))

    kernel = tf.function(kernel, jit_compile=True)

    def forward(theta, q, alpha, seed):
        if full:
            out, p = kernel(theta, q, alpha, seed)
            return out, tf.reduce_sum(tf.reshape(p, [-1, size]), axis=0)
        out, p, ids = kernel(theta, q, alpha, seed)
        return out, _scatter_counts(p, ids, size)

    return forward, tf.function(backward, jit_compile=True)


def quantize_with_counts(
    theta: tf.Tensor,
    q: tf.Tensor,
    alpha: tf.Tensor,
    lo: int,
    hi: int,
    *,
    value: ValueMode = "soft",
    seed: Optional[tf.Tensor] = None,
    window: Optional[int] = None,
):
    """Quantized values and soft index counts in one pass over the CPMF.

    Args:
      theta: values to quantize, any shape, float32 or float64.
      q, alpha: step and softness, scalars or broadcastable to ``theta``.
      lo, hi: integer alphabet bounds.
      value: ``"soft"`` returns ``Q_d``; ``"sample"`` a ``Q_p`` draw; ``"nearest"``
        ``Q_u``. The gradient is always that of ``Q_d`` (straight-through onto ``Q_d``).
      seed: shape ``[2]`` integer seed of the stateless draw (``value="sample"``).
      window: evaluate the CPMF on the ``window`` nearest levels only.

    Returns:
      ``(values, counts)``: values like ``theta``; ``counts[m] = sum_n P(lo + m | theta_n)``,
      shape ``[hi - lo + 1]``. Both are differentiable in ``theta``, ``q`` and ``alpha``.
    """
    _check_alphabet(lo, hi, window)
    if value not in ("soft", "sample", "nearest"):
        raise ValueError(f"value must be 'soft', 'sample' or 'nearest', got {value!r}")
    if value == "sample" and seed is None:
        raise ValueError("value='sample' needs a seed")
    theta = tf.convert_to_tensor(theta)
    if not theta.dtype.is_floating:
        raise TypeError(f"theta must be floating point, got {theta.dtype}")
    q = tf.cast(q, theta.dtype)
    alpha = tf.cast(alpha, theta.dtype)
    seed = tf.zeros([2], tf.int64) if seed is None else tf.cast(seed, tf.int64)
    lo, hi, window = int(lo), int(hi), None if window is None else int(window)
    forward, backward = _kernels(lo, hi, window, value)

    @tf.custom_gradient
    def _op(theta, q, alpha):
        out, counts = forward(theta, q, alpha, seed)

        def grad(g_out, g_counts):
            g_out = tf.zeros_like(theta) if g_out is None else g_out
            g_counts = tf.zeros_like(counts) if g_counts is None else g_counts
            return backward(theta, q, alpha, g_out, g_counts)

        return (out, counts), grad

    return _op(theta, q, alpha)


def q_d(theta, q, alpha, lo: int, hi: int, window: Optional[int] = None) -> tf.Tensor:
    """Soft deterministic quantizer ``Q_d(theta) = sum_i i q P(i | theta)``."""
    return quantize_with_counts(theta, q, alpha, lo, hi, value="soft", window=window)[0]


def q_p(theta, q, alpha, lo: int, hi: int, seed, window: Optional[int] = None) -> tf.Tensor:
    """A stateless draw of ``Q_p(theta)``; its gradient is that of ``Q_d``."""
    return quantize_with_counts(theta, q, alpha, lo, hi, value="sample", seed=seed, window=window)[0]


def q_ste(theta, q, alpha, lo: int, hi: int, window: Optional[int] = None) -> tf.Tensor:
    """``Q_u(theta)`` in the forward pass with the gradient of ``Q_d`` (uniform QAT)."""
    return quantize_with_counts(theta, q, alpha, lo, hi, value="nearest", window=window)[0]


def index_counts(theta, q, alpha, lo: int, hi: int, window: Optional[int] = None) -> tf.Tensor:
    """Soft index counts ``c_i = sum_n P(i | theta_n)`` over ``A``, shape ``[hi - lo + 1]``."""
    return quantize_with_counts(theta, q, alpha, lo, hi, value="soft", window=window)[1]


def index_pmf(theta, q, alpha, lo: int, hi: int, window: Optional[int] = None) -> tf.Tensor:
    """Marginal index PMF ``P(i) = (1/N) sum_n P(i | theta_n)``."""
    counts = index_counts(theta, q, alpha, lo, hi, window)
    return counts / tf.maximum(tf.reduce_sum(counts), tf.constant(1e-30, counts.dtype))


def pmf_entropy_bits(pmf: tf.Tensor) -> tf.Tensor:
    """Entropy ``-sum_i p_i log2 p_i`` of a PMF in bits (``0 log 0 = 0``)."""
    pmf = tf.convert_to_tensor(pmf)
    log2 = tf.math.log(tf.constant(2.0, pmf.dtype))
    return -tf.reduce_sum(tf.math.xlogy(pmf, pmf)) / log2


def entropy_bits(theta, q, alpha, lo: int, hi: int, window: Optional[int] = None) -> tf.Tensor:
    """Entropy of the marginal index PMF in bits per value; differentiable."""
    return pmf_entropy_bits(index_pmf(theta, q, alpha, lo, hi, window))


def hard_index_counts(theta, q, lo: int, hi: int) -> tf.Tensor:
    """Histogram of the nearest indices ``clip(round(theta / q))`` over ``A`` (float)."""
    theta = tf.convert_to_tensor(theta)
    q = tf.cast(q, theta.dtype)
    idx = tf.cast(tf.clip_by_value(tf.round(theta / q), float(lo), float(hi)), tf.int32) - lo
    if _on_tpu():
        return tf.math.unsorted_segment_sum(tf.ones_like(theta), idx, hi - lo + 1)
    return tf.cast(tf.math.bincount(tf.reshape(idx, [-1]), minlength=hi - lo + 1, maxlength=hi - lo + 1), theta.dtype)
