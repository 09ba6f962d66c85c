"""Math of the CDL quantizers: values, analytic gradients, sampling, rates."""
import numpy as np
import pytest
import tensorflow as tf

from cdl_tf import ops

LO, HI = -7, 7


def explicit_q_d(theta, q, alpha, lo=LO, hi=HI):
    """Q_d written out over the whole alphabet, differentiated by autodiff."""
    j = tf.range(lo, hi + 1, dtype=theta.dtype)
    p = tf.nn.softmax(-alpha * tf.square(theta[..., None] - j * q), axis=-1)
    return q * tf.reduce_sum(p * j, axis=-1), tf.reduce_sum(tf.reshape(p, [-1, hi - lo + 1]), 0)


def _grid(n=61):
    # Spans beyond the alphabet's ends (clipped values) and through the midpoints.
    return tf.constant(np.linspace(-3.0, 3.0, n), tf.float64)


@pytest.mark.parametrize("q,alpha", [(0.3, 5.0), (0.3, 200.0), (0.25, 2000.0), (1.0, 0.5)])
def test_q_d_gradients_match_autodiff_and_finite_differences(q, alpha):
    theta = _grid()
    q = tf.constant(q, tf.float64)
    alpha = tf.constant(alpha, tf.float64)
    weights = tf.constant(np.random.RandomState(1).randn(HI - LO + 1))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([theta, q, alpha])
        v, c = ops.quantize_with_counts(theta, q, alpha, LO, HI)
        ve, ce = explicit_q_d(theta, q, alpha)
        loss = tf.reduce_sum(v * tf.cos(theta)) + tf.reduce_sum(c * weights)
        loss_e = tf.reduce_sum(ve * tf.cos(theta)) + tf.reduce_sum(ce * weights)
    np.testing.assert_allclose(v, ve, rtol=1e-12, atol=1e-12)
    grads = tape.gradient(loss, [theta, q, alpha])
    grads_e = tape.gradient(loss_e, [theta, q, alpha])
    for g, ge in zip(grads, grads_e):
        # Where a gradient is below the rounding noise of its summands (1e-12) only atol applies.
        np.testing.assert_allclose(g, ge, rtol=1e-6, atol=1e-12)

    # Central finite differences of Q_d, per value, for theta; of sum Q_d for q and alpha.
    def f(t, qq, aa):
        return ops.q_d(t, qq, aa, LO, HI)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([theta, q, alpha])
        total = tf.reduce_sum(f(theta, q, alpha))
    g_theta, g_q, g_alpha = tape.gradient(total, [theta, q, alpha])
    h = 1e-6
    fd_theta = (f(theta + h, q, alpha) - f(theta - h, q, alpha)) / (2 * h)
    fd_q = (tf.reduce_sum(f(theta, q + h, alpha)) - tf.reduce_sum(f(theta, q - h, alpha))) / (2 * h)
    ha = h * float(alpha)
    fd_alpha = (tf.reduce_sum(f(theta, q, alpha + ha)) - tf.reduce_sum(f(theta, q, alpha - ha))) / (2 * ha)
    scale = lambda x: 1e-6 * (np.max(np.abs(x)) + 1e-3)
    np.testing.assert_allclose(g_theta, fd_theta, atol=scale(fd_theta) + 1e-7)
    np.testing.assert_allclose(g_q, fd_q, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g_alpha, fd_alpha, rtol=1e-6, atol=1e-7 / float(alpha))


def test_closed_form_derivatives_and_identity():
    theta = _grid()
    q = tf.constant(0.4, tf.float64)
    alpha = tf.constant(12.0, tf.float64)
    j = tf.range(LO, HI + 1, dtype=tf.float64)
    p = tf.nn.softmax(-alpha * tf.square(theta[:, None] - j * q), axis=-1)
    z = j * q
    mean_z = tf.reduce_sum(p * z, -1)
    var_z = tf.reduce_sum(p * tf.square(z), -1) - tf.square(mean_z)
    d2 = tf.square(theta[:, None] - z)
    cov_z_d2 = tf.reduce_sum(p * z * d2, -1) - mean_z * tf.reduce_sum(p * d2, -1)
    mean_i = tf.reduce_sum(p * j, -1)
    idd = j * (theta[:, None] - z)
    cov_i_id = tf.reduce_sum(p * j * idd, -1) - mean_i * tf.reduce_sum(p * idd, -1)
    jac = {}
    for name in ("theta", "q", "alpha"):
        with tf.GradientTape() as tape:
            t, qq, aa = tf.identity(theta), tf.identity(q), tf.identity(alpha)
            tape.watch([t, qq, aa])
            v = ops.q_d(t, qq, aa, LO, HI)
        src = {"theta": t, "q": qq, "alpha": aa}[name]
        # Per-value derivatives: theta is elementwise; q and alpha via a jacobian.
        jac[name] = tape.jacobian(v, src)
    d_theta = tf.linalg.diag_part(jac["theta"])
    np.testing.assert_allclose(d_theta, 2 * alpha * var_z, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(jac["alpha"], -cov_z_d2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(jac["q"], mean_i + 2 * alpha * q * cov_i_id, rtol=1e-9, atol=1e-12)
    # theta dQ/dtheta + q dQ/dq - 2 alpha dQ/dalpha = Q_d
    lhs = theta * d_theta + q * jac["q"] - 2 * alpha * jac["alpha"]
    np.testing.assert_allclose(lhs, ops.q_d(theta, q, alpha, LO, HI), rtol=1e-9, atol=1e-12)


def test_q_p_mean_matches_q_d_within_four_standard_errors():
    n = 4000
    theta = tf.constant([-2.7, -0.55, -0.1, 0.0, 0.13, 0.2, 0.61, 1.05, 3.5], tf.float64)
    q, alpha = 0.4, 8.0
    draws = ops.q_p(tf.tile(theta[None], [n, 1]), q, alpha, LO, HI, seed=[7, 0])  # n independent draws of each
    mean = tf.reduce_mean(draws, 0)
    se = tf.math.reduce_std(draws, 0) / np.sqrt(n)
    expected = ops.q_d(theta, q, alpha, LO, HI)
    # Where the CPMF is (near) a point mass the sample std is 0 and the draw must be exact.
    bound = 4 * se + 1e-12
    assert np.all(np.abs(mean - expected) <= bound), (mean - expected, bound)
    on_grid = draws / q
    np.testing.assert_allclose(on_grid, np.round(on_grid), atol=1e-9)


def test_q_p_is_stateless_and_seeded():
    theta = tf.random.stateless_normal([1000], seed=[1, 2])
    a = ops.q_p(theta, 0.3, 5.0, LO, HI, seed=[3, 4])
    b = ops.q_p(theta, 0.3, 5.0, LO, HI, seed=[3, 4])
    c = ops.q_p(theta, 0.3, 5.0, LO, HI, seed=[3, 5])
    np.testing.assert_array_equal(a, b)
    assert np.any(a.numpy() != c.numpy())
    fn = tf.function(lambda t, s: ops.q_p(t, 0.3, 5.0, LO, HI, seed=s))
    np.testing.assert_array_equal(fn(theta, tf.constant([3, 4])), a)


def test_q_p_gradient_is_that_of_q_d():
    theta = _grid(21)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(theta)
        p = ops.q_p(theta, 0.3, 6.0, LO, HI, seed=[0, 1])
        d = ops.q_d(theta, 0.3, 6.0, LO, HI)
    np.testing.assert_allclose(tape.gradient(p, theta), tape.gradient(d, theta), rtol=1e-12)


def test_q_d_tends_to_q_u_as_alpha_grows():
    theta = tf.constant(np.random.RandomState(0).uniform(-3, 3, 2000), tf.float64)
    q = 0.3
    # Keep values away from decision boundaries, where Q_u jumps.
    frac = np.abs(theta.numpy() / q - np.round(theta.numpy() / q))
    theta = tf.boolean_mask(theta, frac < 0.45)
    hard = ops.q_u(theta, q, LO, HI)
    errors = [float(tf.reduce_max(tf.abs(ops.q_d(theta, q, a, LO, HI) - hard))) for a in (10.0, 100.0, 1e3, 1e4)]
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6


def test_windowed_cpmf_matches_full_where_window_holds_mass():
    theta = tf.constant(np.random.RandomState(2).uniform(-3.5, 3.5, 5000), tf.float64)
    q, alpha = 0.3, 150.0  # kappa = 13.5: mass beyond 2 levels is < exp(-kappa*2.25)
    full_v, full_c = ops.quantize_with_counts(theta, q, alpha, LO, HI)
    win_v, win_c = ops.quantize_with_counts(theta, q, alpha, LO, HI, window=5)
    np.testing.assert_allclose(win_v, full_v, atol=1e-6)
    np.testing.assert_allclose(win_c, full_c, atol=1e-6 * len(theta))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(theta)
        gf = ops.entropy_bits(theta, q, alpha, LO, HI)
        gw = ops.entropy_bits(theta, q, alpha, LO, HI, window=5)
    np.testing.assert_allclose(tape.gradient(gw, theta), tape.gradient(gf, theta), atol=1e-6)


def test_window_at_the_alphabet_edges_uses_valid_levels():
    theta = tf.constant([-100.0, -2.1, 0.0, 2.1, 100.0], tf.float32)
    v = ops.q_d(theta, 0.3, 500.0, LO, HI, window=3)
    np.testing.assert_allclose(v, ops.q_u(theta, 0.3, LO, HI), atol=1e-5)


def test_float32_and_float64_agree():
    theta = np.random.RandomState(3).randn(300)
    v32 = ops.q_d(tf.constant(theta, tf.float32), 0.2, 20.0, LO, HI)
    v64 = ops.q_d(tf.constant(theta, tf.float64), 0.2, 20.0, LO, HI)
    assert v32.dtype == tf.float32 and v64.dtype == tf.float64
    np.testing.assert_allclose(v32, v64, atol=1e-5)


def test_one_trace_serves_every_shape_and_keeps_static_shapes():
    """Values of any shape reuse one trace of each compiled kernel (only XLA recompiles); in a
    graph the values, counts and gradients keep their static shapes and equal the explicit formula's."""
    lo, hi, window = -3, 4, 5
    q, alpha = tf.Variable(0.3), tf.Variable(150.0)  # kappa = 13.5: the window holds the mass
    levels = tf.range(hi - lo + 1, dtype=tf.float32)

    def loss_and_grads(quantize, theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            values, counts = quantize(theta)
            loss = tf.reduce_sum(values) + tf.reduce_sum(counts * levels)
        return values, counts, tape.gradient(loss, [theta, q, alpha])

    @tf.function
    def step(theta):
        values, counts, grads = loss_and_grads(
            lambda t: ops.quantize_with_counts(t, q, alpha, lo, hi, window=window), theta)
        assert values.shape.as_list() == theta.shape.as_list() and counts.shape.as_list() == [hi - lo + 1]
        assert [g.shape.as_list() for g in grads] == [theta.shape.as_list(), [], []]
        return values, counts, grads

    rng = np.random.RandomState(4)
    for shape in [(7,), (3, 5), (2, 3, 4, 5), (6, 5)]:
        theta = tf.constant(rng.uniform(-1.5, 1.5, shape), tf.float32)  # past both ends of the grid
        got = step(theta)
        want = loss_and_grads(lambda t: explicit_q_d(t, q, alpha, lo, hi), theta)
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
        np.testing.assert_allclose(got[1], want[1], atol=1e-4)
        for g, w in zip(got[2], want[2]):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    assert step.experimental_get_tracing_count() == 4  # four graphs, one per shape...
    kernels = ops._kernels(lo, hi, window, "soft", None, tf.float32)
    assert [f.experimental_get_tracing_count() for f in kernels.compiled] == [1, 1, 1]  # ...one kernel trace


def test_index_pmf_and_entropy():
    raw = np.random.RandomState(4).randn(6000) * 0.2
    # Values at least 0.05 q from a decision boundary, so the hard histogram is the limit.
    raw = raw[np.abs(raw / 0.3 - np.round(raw / 0.3)) < 0.45][:4000]
    theta = tf.constant(raw, tf.float64)
    pmf = ops.index_pmf(theta, 0.3, 1e4, LO, HI)
    np.testing.assert_allclose(tf.reduce_sum(pmf), 1.0, rtol=1e-12)
    # At large alpha the soft marginal equals the hard histogram.
    hard = ops.hard_index_counts(theta, 0.3, LO, HI)
    np.testing.assert_allclose(pmf, hard / 4000, atol=1e-6)
    h = float(ops.entropy_bits(theta, 0.3, 1e4, LO, HI))
    p = (hard / 4000).numpy()
    p = p[p > 0]
    np.testing.assert_allclose(h, -(p * np.log2(p)).sum(), rtol=1e-6)
    assert float(ops.pmf_entropy_bits(tf.constant([1.0, 0.0]))) == 0.0


def test_entropy_gradient_matches_autodiff_of_explicit_marginal():
    theta = tf.constant(np.random.RandomState(5).randn(200) * 0.5, tf.float64)
    q = tf.constant(0.25, tf.float64)
    alpha = tf.constant(30.0, tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([theta, q, alpha])
        h = ops.entropy_bits(theta, q, alpha, LO, HI)
        _, c = explicit_q_d(theta, q, alpha)
        he = ops.pmf_entropy_bits(c / 200.0)
    for g, ge in zip(tape.gradient(h, [theta, q, alpha]), tape.gradient(he, [theta, q, alpha])):
        np.testing.assert_allclose(g, ge, rtol=1e-6, atol=1e-12)


def test_kappa_parameterisation_round_trips():
    q = tf.constant(0.2, tf.float64)
    kappa = tf.constant(3.0, tf.float64)
    alpha = ops.alpha_from_kappa(kappa, q)
    np.testing.assert_allclose(alpha, 75.0)
    np.testing.assert_allclose(ops.kappa_from_alpha(alpha, q), 3.0)


@pytest.mark.parametrize("kwargs", [dict(lo=3, hi=1), dict(lo=0, hi=3, window=0)])
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        ops.quantize_with_counts(tf.zeros([3]), 1.0, 1.0, **kwargs)


def test_sample_needs_seed_and_integer_input_is_rejected():
    with pytest.raises(ValueError, match="seed"):
        ops.quantize_with_counts(tf.zeros([3]), 1.0, 1.0, -1, 1, value="sample")
    with pytest.raises(TypeError, match="floating"):
        ops.q_d(tf.zeros([3], tf.int32), 1.0, 1.0, -1, 1)


def test_count_sample_is_unbiased_within_four_standard_errors():
    theta = tf.constant(np.random.RandomState(6).randn(20000) * 0.6, tf.float64)
    q, alpha, n, draws = 0.3, 40.0, 500, 200
    exact = ops.index_counts(theta, q, alpha, LO, HI, window=5).numpy()
    est = np.stack([ops.quantize_with_counts(theta, q, alpha, LO, HI, window=5, count_sample=n, seed=[9, s])[1].numpy()
                    for s in range(draws)])
    np.testing.assert_allclose(est.sum(1), len(theta), rtol=1e-9)  # N/n times n rows that each sum to 1
    # The draws are independent estimates, so their mean's standard error is their spread / sqrt(draws).
    se = est.std(0, ddof=1) / np.sqrt(draws)
    assert np.all(np.abs(est.mean(0) - exact) <= 4 * se + 1e-9), (est.mean(0) - exact, se)
    assert np.any(est.std(0) > 0)


def test_count_sample_keeps_the_exact_counts_gradient():
    theta = tf.constant(np.random.RandomState(7).randn(3000) * 0.5, tf.float64)
    q = tf.constant(0.25, tf.float64)
    alpha = tf.constant(30.0, tf.float64)
    weights = tf.constant(np.random.RandomState(8).randn(HI - LO + 1))
    grads = []
    for count_sample in (None, 100):
        with tf.GradientTape() as tape:
            tape.watch([theta, q, alpha])
            v, c = ops.quantize_with_counts(theta, q, alpha, LO, HI, window=5, count_sample=count_sample, seed=[1, 2])
            loss = tf.reduce_sum(v * tf.sin(theta)) + tf.reduce_sum(c * weights)  # linear in the counts
        grads.append(tape.gradient(loss, [theta, q, alpha]))
    for g, ge in zip(*grads):
        np.testing.assert_allclose(g, ge, rtol=1e-12, atol=1e-12)


def test_count_sample_of_the_whole_tensor_or_more_is_exact_and_needs_a_seed():
    theta = tf.constant(np.random.RandomState(9).randn(50), tf.float64)
    exact = ops.index_counts(theta, 0.3, 20.0, LO, HI, window=5)
    _, c = ops.quantize_with_counts(theta, 0.3, 20.0, LO, HI, window=5, count_sample=50, seed=[0, 1])
    np.testing.assert_allclose(c, exact, rtol=1e-12)
    with pytest.raises(ValueError, match="seed"):
        ops.quantize_with_counts(theta, 0.3, 20.0, LO, HI, count_sample=10)
    with pytest.raises(ValueError, match="count_sample"):
        ops.quantize_with_counts(theta, 0.3, 20.0, LO, HI, count_sample=0, seed=[0, 1])


def test_non_finite_values():
    """Q_u and Q_ste clip +-inf to the alphabet's ends and keep a NaN NaN, as does Q_d; a non-finite value
    makes the soft counts (so the rate term and the loss) NaN, while the hard counts still count every
    value without failing (a NaN on some level)."""
    q, alpha = 0.25, 20.0
    theta = tf.constant([0.3, np.nan, np.inf, -np.inf, -0.6])
    for nearest in (ops.q_u(theta, q, LO, HI), ops.q_ste(theta, q, alpha, LO, HI)):
        np.testing.assert_array_equal(nearest, [0.25, np.nan, HI * q, LO * q, -0.5])
    soft = ops.q_d(theta, q, alpha, LO, HI).numpy()
    assert np.isnan(soft[1]) and np.all(np.isfinite(soft[[0, 4]]))
    assert np.all(np.isnan(ops.index_pmf(theta, q, alpha, LO, HI))) and np.isnan(ops.entropy_bits(theta, q, alpha, LO, HI))
    counts = ops.hard_index_counts(theta, q, LO, HI).numpy()
    assert counts.sum() == 5 and counts[HI - LO] == 1  # +inf at HI
    assert counts[1 - LO] == 1 and counts[-2 - LO] == 1  # 0.3 -> 1, -0.6 -> -2
