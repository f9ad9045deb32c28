"""GP success model: exact posterior, fitted hyperparameters, padding, degenerate data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.success_models import GPConfig, GPParams, condition_gp, fit_gp, posterior
from refinery_jax.success_models import gp as gp_module

BOX_LOW = np.full(3, -0.01, np.float32)  # ±1 cm, as Refinery's plug-position box
BOX_HIGH = np.full(3, 0.01, np.float32)
N = 200  # one padded shape for every fit in this file: one compile
CONFIG = GPConfig()  # the defaults


def _true_success(x):
    """Smooth success landscape: high near the centre, failing towards +x / -y corners."""
    u = x / 0.01
    return 1.0 / (1.0 + np.exp(-(2.5 - 3.0 * u[:, 0] ** 2 - 2.0 * (u[:, 1] - 0.3) ** 2)))


def _landscape(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.uniform(BOX_LOW, BOX_HIGH, (n, 3)).astype(np.float32)
    y = (rng.uniform(size=n) < _true_success(x)).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def fitted():
    x, y = _landscape(0, N)
    return x, y, fit_gp(jax.random.key(0), x, y, BOX_LOW, BOX_HIGH, config=CONFIG)


# ---------------------------------------------------------------------------
# Exactness against the direct Cholesky formula (numpy, float64)
# ---------------------------------------------------------------------------


def _numpy_kernel(a, b, lengthscale, amplitude, kernel):
    r2 = np.sum(((a[:, None, :] - b[None, :, :]) / lengthscale) ** 2, axis=2)
    if kernel == "rbf":
        return amplitude**2 * np.exp(-0.5 * r2)
    r = np.sqrt(5.0 * r2)
    return amplitude**2 * (1.0 + r + r**2 / 3.0) * np.exp(-r)


@pytest.mark.parametrize("kernel", ["matern52", "rbf"])
def test_posterior_equals_direct_cholesky_formula(kernel):
    rng = np.random.default_rng(1)
    n, n_valid = 24, 17
    x = rng.uniform(BOX_LOW, BOX_HIGH, (n, 3)).astype(np.float32)
    y = rng.uniform(size=n).astype(np.float32)
    weights = np.zeros(n, np.float32)
    weights[:n_valid] = rng.uniform(0.5, 3.0, n_valid)  # heteroscedastic + padding
    x[n_valid:] = 123.0  # garbage in padded rows must not matter
    lengthscale, amplitude, noise = np.array([0.3, 0.5, 2.0]), 1.3, 0.2
    params = GPParams(jnp.log(jnp.asarray(lengthscale, jnp.float32)), jnp.log(amplitude), jnp.log(noise))
    state = condition_gp(params, x, y, BOX_LOW, BOX_HIGH, weights, kernel=kernel)
    xq = rng.uniform(BOX_LOW, BOX_HIGH, (9, 3)).astype(np.float32)
    mean, std = posterior(state, xq)

    # Reference: standardise with the same weighted statistics, then textbook GP.
    w = weights[:n_valid].astype(np.float64)
    yv = y[:n_valid].astype(np.float64)
    y_mean = np.sum(w * yv) / np.sum(w)
    y_scale = max(np.sqrt(np.sum(w * (yv - y_mean) ** 2) / np.sum(w)), CONFIG.min_output_scale)
    u = (x[:n_valid] - BOX_LOW) / (BOX_HIGH - BOX_LOW)
    uq = (xq - BOX_LOW) / (BOX_HIGH - BOX_LOW)
    K = _numpy_kernel(u, u, lengthscale, amplitude, kernel) + np.diag(noise**2 / w)
    Ks = _numpy_kernel(uq, u, lengthscale, amplitude, kernel)
    L = np.linalg.cholesky(K)
    alpha = np.linalg.solve(L.T, np.linalg.solve(L, (yv - y_mean) / y_scale))
    v = np.linalg.solve(L, Ks.T)
    ref_mean = Ks @ alpha * y_scale + y_mean
    ref_std = np.sqrt(amplitude**2 - np.sum(v**2, axis=0)) * y_scale
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std, ref_std, rtol=1e-3, atol=1e-5)
    # Log marginal likelihood per valid point, standardised units (padding excluded).
    y_std = (yv - y_mean) / y_scale
    ref_lml = (-0.5 * y_std @ alpha - np.sum(np.log(np.diag(L))) - 0.5 * n_valid * math.log(2 * math.pi)) / n_valid
    np.testing.assert_allclose(float(state.log_marginal_likelihood), ref_lml, rtol=1e-4, atol=1e-4)


def test_padding_is_exact():
    """Adding zero-weight rows changes nothing (same hyperparameters)."""
    rng = np.random.default_rng(2)
    x = rng.uniform(BOX_LOW, BOX_HIGH, (12, 3)).astype(np.float32)
    y = rng.uniform(size=12).astype(np.float32)
    params = GPParams(jnp.log(jnp.full(3, 0.4)), jnp.log(1.0), jnp.log(0.1))
    xq = rng.uniform(BOX_LOW, BOX_HIGH, (5, 3)).astype(np.float32)
    small = posterior(condition_gp(params, x, y, BOX_LOW, BOX_HIGH), xq)
    xp = np.concatenate([x, rng.normal(size=(8, 3)).astype(np.float32)])
    yp = np.concatenate([y, np.full(8, 7.0, np.float32)])
    wp = np.concatenate([np.ones(12), np.zeros(8)]).astype(np.float32)
    padded = condition_gp(params, xp, yp, BOX_LOW, BOX_HIGH, wp)
    big = posterior(padded, xq)
    np.testing.assert_allclose(big[0], small[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(big[1], small[1], rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(padded.alpha[12:]) == 0.0)


# ---------------------------------------------------------------------------
# Fitted hyperparameters beat the fixed 1 m length-scale of Refinery's code
# ---------------------------------------------------------------------------


def _heldout_nll(state, x, y):
    mean, std = posterior(state, x)
    var = np.asarray(std) ** 2 + float(state.noise_std) ** 2
    return float(np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * (y - np.asarray(mean)) ** 2 / var))


def test_fitted_gp_beats_fixed_one_metre_lengthscale(fitted):
    x, y, state = fitted
    x_test, y_test = _landscape(99, 400)
    # Baseline: same amplitude and noise as the fit, but sklearn's default 1 m
    # length-scale = 50 widths of the 2 cm box.
    fixed = GPParams(jnp.full(3, math.log(50.0)), state.params.log_amplitude, state.params.log_noise)
    baseline = condition_gp(fixed, x, y, BOX_LOW, BOX_HIGH)
    nll_fit, nll_fixed = _heldout_nll(state, x_test, y_test), _heldout_nll(baseline, x_test, y_test)
    assert nll_fit < nll_fixed - 0.02, (nll_fit, nll_fixed)
    # The fitted posterior mean also tracks the true success probability.
    mean_fit, _ = posterior(state, x_test)
    mean_fixed, _ = posterior(baseline, x_test)
    truth = _true_success(x_test)
    corr_fit = np.corrcoef(mean_fit, truth)[0, 1]
    corr_fixed = np.corrcoef(mean_fixed, truth)[0, 1]
    assert corr_fit > 0.7 and corr_fit > corr_fixed + 0.1, (corr_fit, corr_fixed)
    # Hyperparameters stay inside their bounds; the irrelevant z axis gets the longest scale.
    ls = np.exp(np.asarray(state.params.log_lengthscale))
    lo, hi = CONFIG.lengthscale_bounds
    assert np.all((ls >= lo * 0.999) & (ls <= hi * 1.001))
    assert ls[2] > ls[0] and ls[2] > ls[1]
    assert CONFIG.noise_bounds[0] * 0.999 <= float(jnp.exp(state.params.log_noise)) <= CONFIG.noise_bounds[1] * 1.001


def test_fit_is_deterministic_and_refits_do_not_recompile(fitted):
    x, y, state = fitted
    again = fit_gp(jax.random.key(0), x, y, BOX_LOW, BOX_HIGH, config=CONFIG)
    np.testing.assert_array_equal(again.alpha, state.alpha)
    before = gp_module._fit_gp_jit._cache_size()
    # Growing data: same padded shape, more valid rows.
    for n_valid in (50, 120):
        weights = (np.arange(N) < n_valid).astype(np.float32)
        s = fit_gp(jax.random.key(1), x, y, BOX_LOW, BOX_HIGH, weights, config=CONFIG)
        assert np.isfinite(float(s.log_marginal_likelihood))
    assert gp_module._fit_gp_jit._cache_size() == before


# ---------------------------------------------------------------------------
# Degenerate data: finite, sensible posteriors
# ---------------------------------------------------------------------------


def _degenerate_cases():
    rng = np.random.default_rng(3)
    x = rng.uniform(BOX_LOW, BOX_HIGH, (N, 3)).astype(np.float32)
    ones, zeros = np.ones(N, np.float32), np.zeros(N, np.float32)
    single_w = zeros.copy()
    single_w[7] = 1.0
    dup_x = np.repeat(x[:1], N, axis=0)
    dup_y = (rng.uniform(size=N) < 0.3).astype(np.float32)
    return {
        "all_successes": (x, ones, None, 1.0),
        "all_failures": (x, zeros, None, 0.0),
        "constant_rate": (x, np.full(N, 0.7, np.float32), None, 0.7),
        "single_point": (x, np.full(N, 0.4, np.float32), single_w, 0.4),
        "duplicate_theta": (dup_x, dup_y, None, float(dup_y.mean())),
    }


@pytest.mark.parametrize("case", list(_degenerate_cases()))
def test_degenerate_data_gives_finite_posteriors(case):
    x, y, weights, expected_mean = _degenerate_cases()[case]
    state = fit_gp(jax.random.key(4), x, y, BOX_LOW, BOX_HIGH, weights, config=CONFIG)
    xq = np.concatenate([x[:5], np.random.default_rng(5).uniform(BOX_LOW, BOX_HIGH, (20, 3))]).astype(np.float32)
    mean, std = posterior(state, xq)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(np.asarray(std) > 0)
    assert np.isfinite(float(state.log_marginal_likelihood))
    # At the observed θ the mean is the observed value (or rate, for duplicates).
    np.testing.assert_allclose(mean[0], expected_mean, atol=0.05)
    if case == "duplicate_theta":
        assert float(std[0]) < float(np.median(std[5:]))  # data shrink uncertainty there


# ---------------------------------------------------------------------------
# Errors raised in Python, before compiling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, y, weights, match",
    [
        (np.zeros((0, 3)), np.zeros(0), None, "at least one"),
        (np.zeros((5,)), np.zeros(5), None, r"\[N, d\]"),
        (np.zeros((5, 3)), np.zeros(4), None, "y must have shape"),
        (np.zeros((5, 2)), np.zeros(5), None, "box_low/box_high"),
        (np.zeros((5, 3)), np.zeros(5), np.zeros(5), "all weights are 0"),
        (np.zeros((5, 3)), np.zeros(5), -np.ones(5), ">= 0"),
    ],
)
def test_bad_inputs_raise_value_error(x, y, weights, match):
    with pytest.raises(ValueError, match=match):
        fit_gp(jax.random.key(0), x, y, BOX_LOW, BOX_HIGH, weights, config=CONFIG)


def test_bad_config_and_box_raise():
    with pytest.raises(ValueError, match="kernel"):
        GPConfig(kernel="matern32")
    with pytest.raises(ValueError, match="lengthscale_bounds"):
        GPConfig(lengthscale_bounds=(1.0, 0.1))
    with pytest.raises(ValueError, match="strictly greater"):
        fit_gp(jax.random.key(0), np.zeros((3, 3)), np.zeros(3), BOX_HIGH, BOX_LOW, config=CONFIG)
