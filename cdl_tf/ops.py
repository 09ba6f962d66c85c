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

import dataclasses
import functools
from typing import Any, Callable, List, Literal, NamedTuple, Optional, Tuple

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


def weighted_distortion(theta: tf.Tensor, q: tf.Tensor, lo: int, hi: int, importance: tf.Tensor) -> tf.Tensor:
    """``1/2 sum_i F_i (Q_u(theta_i) - theta_i)^2`` with ``F = importance`` (`cdl_tf.rate_distortion`).

    The level ``clip(round(theta / q), lo, hi)`` is held fixed, so the gradient pulls each value
    towards its nearest reconstruction point, ``-F_i (Q_u(theta_i) - theta_i)``, and the step
    towards the points of the values that matter: ``sum_i F_i (Q_u(theta_i) - theta_i) l_i``.
    """
    theta = tf.convert_to_tensor(theta)
    q = tf.cast(q, theta.dtype)
    levels = tf.stop_gradient(tf.clip_by_value(tf.round(theta / q), float(lo), float(hi)))
    error = q * levels - theta
    return 0.5 * tf.reduce_sum(tf.cast(importance, theta.dtype) * tf.square(error))


def _window_size(lo: int, hi: int, window: Optional[int]) -> int:
    """Number of levels on which the CPMF is evaluated."""
    size = hi - lo + 1
    return size if window is None or window >= size else window


def _index_ids(levels: tf.Tensor, lo: int, hi: int) -> tf.Tensor:
    """Alphabet positions ``levels - lo`` as int32, clipped so that a NaN input cannot index outside."""
    return tf.clip_by_value(tf.cast(levels, tf.int32) - lo, 0, hi - lo)


def _on_tpu() -> bool:
    """Whether ops are being traced for a `TPUStrategy`, whose steps XLA compiles whole.

    `tf.math.bincount` sizes its output by ``max(ids) + 1``, which XLA cannot evaluate at
    compile time when ``ids`` depend on variables; there counts are segment sums of static size.
    """
    return tf.distribute.has_strategy() and isinstance(
        tf.distribute.get_strategy(), (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)
    )


def _window_start(theta: tf.Tensor, q: tf.Tensor, lo: int, hi: int, k: int):
    """``(nearest, first)``: each value's nearest level and the lowest of its ``k`` evaluated levels
    (the ``k`` around the nearest, shifted inside ``A``; the Python number ``lo`` when ``k = |A|``)."""
    nearest = tf.clip_by_value(tf.round(theta / q), float(lo), float(hi))
    if k == hi - lo + 1:
        return nearest, float(lo)
    return nearest, tf.clip_by_value(nearest - float(k // 2), float(lo), float(hi - k + 1))


@dataclasses.dataclass(frozen=True)
class _Window:
    """The CPMF of every value on its ``k`` evaluated levels, as ``k`` value-shaped tensors.

    With ``u = theta / q``, nearest level ``r`` and ``delta = u - r``, level ``l_j = first + j``
    sits at offset ``o_j = l_j - r`` from the nearest (``first``: the lowest evaluated level; the
    window is the ``k`` levels around ``r``, shifted inside ``A``; a Python number when it is the
    whole alphabet). The unnormalised CPMF relative to the nearest level is

        e_j = exp(-alpha ((theta - l_j q)^2 - (theta - r q)^2)) = exp(kappa o_j (2 delta - o_j))

    with ``kappa = alpha q^2``: its exponent is ``<= 0`` (``r`` is the nearest level), so nothing
    overflows and no max-subtraction pass is needed; ``total = sum_j e_j >= 1``. Built inside
    an XLA-compiled function, the ``k`` tensors fuse into one loop over the values.
    """

    first: Any
    nearest: tf.Tensor
    delta: tf.Tensor
    offsets: List[tf.Tensor]
    e: List[tf.Tensor]
    total: tf.Tensor

    @classmethod
    def of(cls, theta: tf.Tensor, q: tf.Tensor, alpha: tf.Tensor, lo: int, hi: int, k: int) -> "_Window":
        # Each exponent is computed from theta and the levels, not from the offsets it is
        # weighted with: XLA on CPU stores, rather than fuses, an intermediate that feeds both
        # an exponential and other terms.
        nearest, first = _window_start(theta, q, lo, hi, k)
        ref = tf.square(theta - nearest * q)
        levels = [first + float(j) for j in range(k)]
        e = [tf.exp(-alpha * (tf.square(theta - level * q) - ref)) for level in levels]
        return cls(first, nearest, (theta - nearest * q) / q, [level - nearest for level in levels], e, tf.add_n(e))

    def moment_sum(self, weights: Optional[List[tf.Tensor]] = None, power: int = 0) -> tf.Tensor:
        """``sum_j e_j w_j o_j^power`` (``w = 1`` if ``weights`` is None): ``total`` times ``E[w o^power]``.

        Unnormalised, so that an expression divides by ``total`` once: XLA on CPU stores, rather
        than fuses, a quotient that several terms read.
        """
        terms = []
        for j, (ej, o) in enumerate(zip(self.e, self.offsets)):
            t = ej if weights is None else ej * weights[j]
            for _ in range(power):
                t = t * o
            terms.append(t)
        return tf.add_n(terms)

    def sample(self, seed: tf.Tensor) -> tf.Tensor:
        """Level of one draw ``I ~ P(. | theta)`` per value (inverse CDF of a stateless uniform)."""
        u = tf.random.stateless_uniform(tf.shape(self.total), seed=seed, dtype=self.total.dtype, alg=_RNG)
        u = u * self.total
        below, index = tf.zeros_like(u), tf.zeros_like(u)
        for ej in self.e[:-1]:
            below += ej
            index += tf.cast(below < u, u.dtype)
        return self.first + index

    def lookup(self, table: tf.Tensor, lo: int, hi: int) -> List[tf.Tensor]:
        """``table[l_j - lo]`` for every window position ``j``.

        For small alphabets a chain of selects on ``first`` (XLA's gathers are slow on CPU),
        else gathers.
        """
        k = len(self.e)
        if not isinstance(self.first, tf.Tensor):
            return [table[j] for j in range(k)]
        firsts = range(lo, hi - k + 2)
        if len(firsts) * k > _MAX_SELECTS:
            ids = _index_ids(self.first, lo, hi)
            return [tf.gather(table, ids + j) for j in range(k)]
        out = []
        for j in range(k):
            v = tf.zeros_like(self.total) + table[j]
            for f in firsts[1:]:
                v = tf.where(self.first == float(f), table[f - lo + j], v)
            out.append(v)
        return out


# ThreeFry: XLA on CPU draws it at ~2 ns per value, its "auto_select" choice at ~400 ns.
_RNG = "threefry"

# Table lookups per value as selects up to this many (window starts x window positions).
_MAX_SELECTS = 128


def _cpmf_rows(theta: tf.Tensor, q: tf.Tensor, alpha: tf.Tensor, lo: int, hi: int, k: int):
    """CPMF rows ``p [M, k]`` of values ``theta [M]`` and the alphabet positions ``[M]`` of their
    windows' first levels, for `_scatter_counts`; the ``[M, k]`` layout is what XLA writes fastest."""
    nearest, first = _window_start(theta, q, lo, hi, k)
    first = first + tf.zeros_like(theta)
    levels = first[:, None] + tf.range(k, dtype=theta.dtype)
    ref = tf.square(theta - nearest * q)[:, None]
    e = tf.exp(-alpha * (tf.square(theta[:, None] - levels * q) - ref))
    return e / tf.reduce_sum(e, axis=-1, keepdims=True), _index_ids(first, lo, hi)


def _scatter_counts(p: tf.Tensor, first_ids: tf.Tensor, size: int) -> tf.Tensor:
    """Soft counts per level from CPMF rows ``p [M, k]`` whose windows start at ``first_ids [M]``.

    A weighted bincount over the ``M k`` level ids, which is fast on CPU; on TPU a segment sum
    of static size.
    """
    ids = tf.reshape(first_ids[:, None] + tf.range(tf.shape(p)[1]), [-1])
    p = tf.reshape(p, [-1])
    if _on_tpu():
        return tf.math.unsorted_segment_sum(p, ids, size)
    return tf.math.bincount(ids, weights=p, minlength=size, maxlength=size, dtype=p.dtype)


def _compiled(fn, input_signature: List[tf.TensorSpec]):
    """``fn`` as an XLA-compiled function of one graph for every input shape (no autograph:
    its Python loops run over Python ranges)."""
    return tf.function(fn, jit_compile=True, autograph=False, input_signature=input_signature)


def _with_shape(t: tf.Tensor, shape) -> tf.Tensor:
    """``t`` with the static ``shape`` that a `_compiled` function's output loses (no runtime op)."""
    t.set_shape(shape)
    return t


def _sum_to_shape(grad: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """Sum a broadcast gradient back to a parameter's shape."""
    _, axes = tf.raw_ops.BroadcastGradientArgs(s0=tf.shape(grad), s1=shape)
    return tf.reshape(tf.reduce_sum(grad, axis=axes), shape)


def _subset_seed(seed: tf.Tensor) -> tf.Tensor:
    """A seed for the count subset, another stream than the ``Q_p`` draw's."""
    return tf.stack([tf.bitwise.bitwise_xor(seed[0], tf.constant(0x2545F4914F6CDD1D, tf.int64)), seed[1]])


def _covariances(w: _Window, g_out: tf.Tensor, q: tf.Tensor, g_level: List[tf.Tensor]):
    """``total^2`` times ``(Cov(W, o), Cov(W, o^2))`` per value, for ``W_j = g q l_j + G_{l_j}``.

    ``W = g q (r + o) + G``, so ``Cov(W, X) = g q Cov(o, X) + Cov(G, X)``, with
    ``S^2 Cov(A, B) = S sum e A B - (sum e A)(sum e B)``; the offsets ``o`` are taken about the
    nearest level, where the CPMF is concentrated.
    """
    s, m1, m2, m3 = w.total, w.moment_sum(power=1), w.moment_sum(power=2), w.moment_sum(power=3)
    mg, mg1, mg2 = w.moment_sum(g_level), w.moment_sum(g_level, 1), w.moment_sum(g_level, 2)
    gq = g_out * q
    return gq * (s * m2 - m1 * m1) + (s * mg1 - mg * m1), gq * (s * m3 - m1 * m2) + (s * mg2 - mg * m2)


class _Kernels(NamedTuple):
    forward: Callable
    backward: Callable
    compiled: Tuple[Any, ...]  # the XLA-compiled functions behind them


@functools.lru_cache(maxsize=None)
def _kernels(lo: int, hi: int, window: Optional[int], value: str, count_sample: Optional[int], dtype: tf.DType):
    """Forward ``(theta, q, alpha, seed) -> (values, counts)`` and backward passes for one
    alphabet, window, value mode, count estimate and dtype.

    Each compiled function is traced once, for inputs of any shape: tensors of other shapes
    reuse its graph and cost only their XLA compilation (once per shape), not a new trace.

    The CPMF lives as ``k`` value-shaped tensors (`_Window`) inside XLA-compiled functions, each
    with one output over the values, which XLA fuses into one loop: ``Q_d``'s forward is a single
    pass over ``theta``. The backward pass recomputes the CPMF from the inputs twice, in two
    compiled functions run one after another: once for the values' gradient, once for the
    reduction that gives the gradients of ``q`` and ``alpha`` as the real and imaginary parts
    of one complex sum (XLA on CPU does not fuse several outputs into one loop, and would
    otherwise store the intermediates they share, or evaluate the CPMF once per output). All
    come from per-value covariances under the CPMF, with ``d_j = q (delta - o_j)``:

        dL/dtheta = 2 alpha q Cov(W, o)
        dL/dalpha = -q^2 (Cov(W, o^2) - 2 delta Cov(W, o))
        dL/dq     = g E[I] + 2 alpha q ((delta - r) Cov(W, o) - Cov(W, o^2))

    Counts are a weighted bincount, outside XLA, of ``[M, k]`` CPMF rows that the forward kernel
    returns: ``M = N`` for exact counts; with ``count_sample=n``, ``M = n`` values drawn uniformly
    with replacement and the counts scaled by ``N / n`` (an unbiased estimate at a cost
    independent of ``N``); the backward pass is that of the exact counts, so the rate gradient
    reaches every value.

    Measured on CPU only (`bench/quantizer_kernel.py`, `bench/step_time.py`). XLA on GPU fuses
    several outputs into one kernel, where the two backward passes could be one; there and on
    TPU the select chains of `_Window.lookup` and the threefry draws cost differently; the
    bincount outside XLA runs as TensorFlow's own GPU kernel, and under `TPUStrategy` as a
    static-size segment sum inside the compiled step.
    """
    size = hi - lo + 1
    k = _window_size(lo, hi, window)

    def values(w: _Window, q, seed):
        if value == "soft":
            return q * (w.nearest + w.moment_sum(power=1) / w.total)
        if value == "nearest":
            return q * w.nearest
        return q * w.sample(seed)

    def kernel(theta, q, alpha, seed):
        out = values(_Window.of(theta, q, alpha, lo, hi, k), q, seed)
        flat = tf.reshape(theta, [-1])
        if count_sample is not None:
            picks = tf.random.stateless_uniform([count_sample], seed=_subset_seed(seed), minval=0,
                                                maxval=tf.size(flat), dtype=tf.int32, alg=_RNG)
            flat = tf.gather(flat, picks)
        return (out,) + _cpmf_rows(flat, q, alpha, lo, hi, k)

    def grad_theta(theta, q, alpha, g_out, g_counts):
        w = _Window.of(theta, q, alpha, lo, hi, k)
        cov1, _ = _covariances(w, g_out, q, w.lookup(g_counts, lo, hi))  # XLA drops the unused second
        return 2.0 * alpha * q * cov1 / tf.square(w.total)

    def grad_q_alpha(theta, q, alpha, g_out, g_counts):
        # Both reductions in one pass: the two per-value terms are the real and imaginary
        # parts of one complex sum, so the CPMF is evaluated once for both.
        w = _Window.of(theta, q, alpha, lo, hi, k)
        cov1, cov2 = _covariances(w, g_out, q, w.lookup(g_counts, lo, hi))
        s2 = tf.square(w.total)
        mean_i = w.nearest * w.total + w.moment_sum(power=1)
        g_q = (g_out * mean_i * w.total + 2.0 * alpha * q * ((w.delta - w.nearest) * cov1 - cov2)) / s2
        g_alpha = -tf.square(q) * (cov2 - 2.0 * w.delta * cov1) / s2
        both = _sum_to_shape(tf.complex(g_q, g_alpha), tf.broadcast_dynamic_shape(tf.shape(q), tf.shape(alpha)))
        return _sum_to_shape(tf.math.real(both), tf.shape(q)), _sum_to_shape(tf.math.imag(both), tf.shape(alpha))

    any_shape = tf.TensorSpec(None, dtype)
    grads_of = [any_shape] * 4 + [tf.TensorSpec([size], dtype)]  # theta, q, alpha, g_out, g_counts
    grad_theta = _compiled(grad_theta, grads_of)
    grad_q_alpha = _compiled(grad_q_alpha, grads_of)

    def backward(theta, q, alpha, g_out, g_counts):
        # One after another: run side by side, the two passes would compete for the cores.
        g_theta = _with_shape(grad_theta(theta, q, alpha, g_out, g_counts), theta.shape)
        with tf.control_dependencies([g_theta]):
            g_q, g_alpha = grad_q_alpha(theta, q, alpha, g_out, g_counts)
        return g_theta, _with_shape(g_q, q.shape), _with_shape(g_alpha, alpha.shape)

    kernel = _compiled(kernel, [any_shape] * 3 + [tf.TensorSpec([2], tf.int64)])

    def forward(theta, q, alpha, seed):
        out, p, first_ids = kernel(theta, q, alpha, seed)
        out = _with_shape(out, theta.shape)
        counts = _with_shape(_scatter_counts(p, first_ids, size), [size])
        if count_sample is not None:
            counts *= tf.cast(tf.size(theta), p.dtype) / float(count_sample)
        return out, counts

    return _Kernels(forward, backward, (kernel, grad_theta, grad_q_alpha))


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
    count_sample: Optional[int] = None,
):
    """Quantized values and soft index counts in one pass over the CPMF.

    Args:
      theta: values to quantize, any shape, float32 or float64.
      q, alpha: step and softness, scalars or broadcastable to ``theta``.
      lo, hi: integer alphabet bounds.
      value: ``"soft"`` returns ``Q_d``; ``"sample"`` a ``Q_p`` draw; ``"nearest"``
        ``Q_u``. The gradient is always that of ``Q_d`` (straight-through onto ``Q_d``).
      seed: shape ``[2]`` integer seed of the stateless draws (``value="sample"``, ``count_sample``).
      window: evaluate the CPMF on the ``window`` nearest levels only.
      count_sample: estimate the counts from this many values drawn uniformly (with
        replacement) from ``theta``, times ``N / count_sample``: unbiased, at a cost
        independent of ``N``. The gradient is that of the exact counts, so the rate term's
        gradient reaches every value. ``None`` (or ``>= N``): exact counts.

    Returns:
      ``(values, counts)``: values like ``theta``; ``counts[m] = sum_n P(lo + m | theta_n)``,
      shape ``[hi - lo + 1]``. Both are differentiable in ``theta``, ``q`` and ``alpha``.
    """
    _check_alphabet(lo, hi, window)
    if value not in ("soft", "sample", "nearest"):
        raise ValueError(f"value must be 'soft', 'sample' or 'nearest', got {value!r}")
    if count_sample is not None and (int(count_sample) != count_sample or count_sample < 1):
        raise ValueError(f"count_sample must be a positive integer or None, got {count_sample}")
    if (value == "sample" or count_sample is not None) and seed is None:
        raise ValueError("value='sample' and count_sample need a seed")
    theta = tf.convert_to_tensor(theta)
    if not theta.dtype.is_floating:
        raise TypeError(f"theta must be floating point, got {theta.dtype}")
    q = tf.cast(q, theta.dtype)
    alpha = tf.cast(alpha, theta.dtype)
    seed = tf.zeros([2], tf.int64) if seed is None else tf.cast(seed, tf.int64)
    lo, hi, window = int(lo), int(hi), None if window is None else int(window)
    n = theta.shape.num_elements()
    count_sample = None if count_sample is None or (n is not None and count_sample >= n) else int(count_sample)
    forward, backward, _ = _kernels(lo, hi, window, value, count_sample, theta.dtype)

    @tf.custom_gradient
    def _op(theta, q, alpha):
        # `grad` is the whole gradient: an outer tape need not record the forward's own ops.
        out, counts = forward(*(tf.stop_gradient(t) for t in (theta, q, alpha)), seed)

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
    """Histogram of the nearest indices ``clip(round(theta / q))`` over ``A`` (float).

    A NaN value is counted on some level instead of failing (its output, `q_u`, is NaN).
    """
    theta = tf.convert_to_tensor(theta)
    q = tf.cast(q, theta.dtype)
    idx = _index_ids(tf.clip_by_value(tf.round(theta / q), float(lo), float(hi)), lo, hi)
    if _on_tpu():
        return tf.math.unsorted_segment_sum(tf.ones_like(theta), idx, hi - lo + 1)
    return tf.cast(tf.math.bincount(tf.reshape(idx, [-1]), minlength=hi - lo + 1, maxlength=hi - lo + 1), theta.dtype)
