"""Acquisitions against SciPy closed forms, log-EI stability, and batch proposals."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from refinery_jax.success_models import acquisition as acquisition_module
from refinery_jax.success_models import (
    AcquisitionParams,
    GPParams,
    ProposalConfig,
    acquisition_values,
    condition_gp,
    expected_improvement,
    log_expected_improvement,
    log_h,
    posterior,
    probability_of_improvement,
    propose,
    ucb,
)

BOX_LOW = np.full(3, -0.01, np.float32)
BOX_HIGH = np.full(3, 0.01, np.float32)
SMALL = dict(num_candidates=128, num_starts=4, num_steps=5, q=4, min_separation=0.02)


def _batch(f):
    return jax.jit(jax.vmap(f))


@pytest.fixture(scope="module")
def mu_sigma_best():
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.0, 1.0, 64).astype(np.float32)
    sigma = rng.uniform(0.01, 0.5, 64).astype(np.float32)
    best = rng.uniform(0.3, 0.9, 64).astype(np.float32)
    return mu, sigma, best


# ---------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------


def test_ucb_pi_ei_match_scipy(mu_sigma_best):
    mu, sigma, best = mu_sigma_best
    m, s, b = (a.astype(np.float64) for a in (mu, sigma, best))
    z = (m - b) / s
    np.testing.assert_allclose(_batch(lambda a, c: ucb(a, c, 2.0))(mu, sigma), m + 2.0 * s, rtol=1e-6)
    np.testing.assert_allclose(_batch(probability_of_improvement)(mu, sigma, best), stats.norm.cdf(z), atol=1e-6)
    ei_ref = (m - b) * stats.norm.cdf(z) + s * stats.norm.pdf(z)
    np.testing.assert_allclose(_batch(expected_improvement)(mu, sigma, best), ei_ref, rtol=1e-4, atol=1e-7)


def _log_h_reference(z):
    """log(φ(z) + zΦ(z)) in float64, accurate for very negative z via erfcx."""
    z = np.asarray(z, np.float64)
    with np.errstate(all="ignore"):  # np.where evaluates both branches
        direct = np.log(stats.norm.pdf(z) + z * stats.norm.cdf(z))
        # φ(z)(1 - |z| Φ(z)/φ(z)), with Φ(z)/φ(z) = sqrt(π/2) erfcx(-z/√2).
        ratio = np.abs(z) * math.sqrt(math.pi / 2) * special.erfcx(-z / math.sqrt(2))
        tail = stats.norm.logpdf(z) + np.log1p(-ratio)
    return np.where(z > -5, direct, tail)


def test_log_ei_equals_log_of_ei_where_representable():
    z = np.linspace(-12.0, 12.0, 97).astype(np.float32)
    sigma = np.full_like(z, 0.3)
    best = np.full_like(z, 0.5)
    mu = best + z * sigma
    log_ei = _batch(log_expected_improvement)(mu, sigma, best)
    ei = _batch(expected_improvement)(mu, sigma, best)
    ref = np.log(0.3) + _log_h_reference(z)
    np.testing.assert_allclose(log_ei, ref, rtol=2e-5, atol=2e-5)
    representable = np.asarray(ei) > 1e-30
    np.testing.assert_allclose(log_ei[representable], np.log(ei[representable]), rtol=1e-3, atol=1e-3)


def test_log_h_accurate_and_finite_far_in_the_tail():
    z = -np.logspace(0.0, 4.0, 41)  # -1 ... -1e4 across all branches; EI underflows from ~-13
    z32 = z.astype(np.float32)
    values = _batch(log_h)(z32)
    grads = _batch(jax.grad(log_h))(z32)
    np.testing.assert_allclose(values, _log_h_reference(z32.astype(np.float64)), rtol=1e-5)
    # d/dz log h = Φ(z) / h(z) = exp(log Φ(z) - log h(z)) > 0, ≈ |z| in the tail.
    grad_ref = np.exp(special.log_ndtr(z32.astype(np.float64)) - _log_h_reference(z32.astype(np.float64)))
    np.testing.assert_allclose(grads, grad_ref, rtol=1e-4)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))


def test_values_and_gradients_finite_for_tiny_sigma_and_extreme_z():
    mus = jnp.array([0.0, 0.2, 0.5, 0.9, 1.0, -1e3, 1e3], jnp.float32)
    sigmas = jnp.array([0.0, 1e-30, 1e-12, 1e-6, 1.0], jnp.float32)
    best = jnp.float32(0.5)
    mu_grid, sigma_grid = (a.ravel() for a in jnp.meshgrid(mus, sigmas))
    for f in (
        lambda m, s: ucb(m, s),
        lambda m, s: probability_of_improvement(m, s, best),
        lambda m, s: expected_improvement(m, s, best),
        lambda m, s: log_expected_improvement(m, s, best),
    ):
        values = _batch(f)(mu_grid, sigma_grid)
        grads = _batch(jax.grad(f, argnums=(0, 1)))(mu_grid, sigma_grid)
        assert np.all(np.isfinite(values))
        assert all(np.all(np.isfinite(g)) for g in grads)
    # σ = 0: EI is the plain improvement max(μ - J⁺, 0).
    ei0 = _batch(lambda m: expected_improvement(m, 0.0, best))(mus)
    np.testing.assert_allclose(ei0, np.maximum(np.asarray(mus) - 0.5, 0.0), atol=1e-6)


# ---------------------------------------------------------------------------
# Direction and proposals on a GP with a clear failure region
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gp_state():
    """Success rates from a landscape that fails for x > 0 (the +x half of the box)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(BOX_LOW, BOX_HIGH, (80, 3)).astype(np.float32)
    y = (1.0 / (1.0 + np.exp(4.0 * x[:, 0] / 0.01))).astype(np.float32)
    params = GPParams(jnp.log(jnp.array([0.4, 1.0, 1.0])), jnp.log(1.0), jnp.log(0.05))
    return condition_gp(params, x, y, BOX_LOW, BOX_HIGH)


def test_acquisition_direction(gp_state):
    rng = np.random.default_rng(2)
    xq = rng.uniform(BOX_LOW, BOX_HIGH, (16, 3)).astype(np.float32)
    mean, std = posterior(gp_state, xq)
    failure = acquisition_values(gp_state, xq, ProposalConfig(kind="ucb", target="failure"))
    success = acquisition_values(gp_state, xq, ProposalConfig(kind="ucb", target="success"))
    np.testing.assert_allclose(failure, 1.0 - mean + 2.0 * std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(success, mean + 2.0 * std, rtol=1e-5, atol=1e-6)
    # β is traced: changing it (Python float or NumPy scalar) reuses the compiled
    # function and changes the value.
    before = acquisition_module._acquisition_values_jit._cache_size()
    beta0 = acquisition_values(gp_state, xq, ProposalConfig(kind="ucb"), AcquisitionParams(beta=0.0))
    beta1 = acquisition_values(gp_state, xq, ProposalConfig(kind="ucb"), AcquisitionParams(beta=np.float32(1.0)))
    assert acquisition_module._acquisition_values_jit._cache_size() == before
    np.testing.assert_allclose(beta0, 1.0 - mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(beta1, 1.0 - mean + std, rtol=1e-5, atol=1e-6)


def test_pi_and_ei_on_the_gp_match_closed_forms_with_their_incumbents(gp_state):
    """PI/EI through the GP: orientation, incumbent J⁺ and ξ, against SciPy."""
    rng = np.random.default_rng(3)
    xq = rng.uniform(BOX_LOW, BOX_HIGH, (16, 3)).astype(np.float32)
    mean, std = (np.asarray(a, np.float64) for a in posterior(gp_state, xq))
    valid = np.asarray(gp_state.weights) > 0
    observed_y = np.asarray(gp_state.y) * float(gp_state.y_scale) + float(gp_state.y_mean)
    train_x = np.asarray(gp_state.x) * (BOX_HIGH - BOX_LOW) + BOX_LOW
    train_mean = np.asarray(posterior(gp_state, train_x)[0], np.float64)
    xi = 0.01
    # target="failure": maximise 1 - J; J⁺ is the best (lowest-success) value.
    best_observed = np.max(1.0 - observed_y[valid])
    z = (1.0 - mean - best_observed - xi) / std
    pi = acquisition_values(gp_state, xq, ProposalConfig(kind="pi", incumbent="observed"), AcquisitionParams(xi=xi))
    np.testing.assert_allclose(pi, stats.norm.cdf(z), atol=1e-5)
    # target="success", incumbent = best posterior mean at the observed points.
    best_mean = np.max(train_mean[valid])
    diff = mean - best_mean
    ei_ref = diff * stats.norm.cdf(diff / std) + std * stats.norm.pdf(diff / std)
    ei = acquisition_values(gp_state, xq, ProposalConfig(kind="ei", target="success"))
    np.testing.assert_allclose(ei, ei_ref, rtol=1e-3, atol=1e-6)
    assert np.any(ei_ref > 1e-3) and np.any(stats.norm.cdf(z) > 1e-3)  # not all ~0


@pytest.mark.parametrize("kind", ["ucb", "log_ei"])
def test_proposals_inside_box_distinct_and_deterministic(gp_state, kind):
    config = ProposalConfig(kind=kind, **SMALL)
    key = jax.random.key(3)
    p1 = np.asarray(propose(key, gp_state, BOX_LOW, BOX_HIGH, config))
    p2 = np.asarray(propose(key, gp_state, BOX_LOW, BOX_HIGH, config))
    p3 = np.asarray(propose(jax.random.key(4), gp_state, BOX_LOW, BOX_HIGH, config))
    assert p1.shape == (config.q, 3)
    assert np.all(p1 >= BOX_LOW) and np.all(p1 <= BOX_HIGH)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)
    width = BOX_HIGH - BOX_LOW
    gaps = np.linalg.norm((p1[:, None] - p1[None]) / width, axis=2) + np.eye(config.q)
    assert gaps.min() >= config.min_separation * 0.999
    # target="failure": proposals sit in the failing +x half of the box.
    assert np.mean(p1[:, 0] > 0) >= 0.75


def test_batch_picks_are_sequential_argmaxes_of_the_refitted_gp():
    """Kriging believer: pick j maximises UCB under the GP conditioned on picks < j.

    A fantasy leaves the mean unchanged and, with fixed hyperparameters, the
    standardised variance does not depend on y, so the reference is simply the GP
    re-conditioned on the data plus the earlier picks (weight 1).
    """
    rng = np.random.default_rng(1)
    n, q = 80, 6
    x = rng.uniform(BOX_LOW, BOX_HIGH, (n, 3)).astype(np.float32)
    y = (1.0 / (1.0 + np.exp(4.0 * x[:, 0] / 0.01))).astype(np.float32)
    params = GPParams(jnp.log(jnp.full(3, 1.5)), jnp.log(1.0), jnp.log(0.05))
    state = condition_gp(params, x, y, BOX_LOW, BOX_HIGH)
    config = ProposalConfig(kind="ucb", q=q, num_candidates=128, num_starts=0, min_separation=1e-6)
    key = jax.random.key(3)
    chosen = np.asarray(propose(key, state, BOX_LOW, BOX_HIGH, config))
    # The candidate pool propose scores (no gradient refinement: num_starts=0).
    pool = BOX_LOW + np.asarray(acquisition_module._latin_hypercube(key, config.num_candidates, 3)) * (BOX_HIGH - BOX_LOW)
    mean, std = (np.asarray(a, np.float64) for a in posterior(state, pool))
    x_aug = np.concatenate([x, np.zeros((q, 3), np.float32)])
    y_aug = np.concatenate([y, np.zeros(q, np.float32)])
    picked = []
    for j in range(q):
        x_aug[n : n + j] = chosen[:j]
        weights = np.concatenate([np.ones(n), np.arange(q) < j]).astype(np.float32)
        refit = condition_gp(params, x_aug, y_aug, BOX_LOW, BOX_HIGH, weights)
        var_standardised = (np.asarray(posterior(refit, pool)[1], np.float64) / float(refit.y_scale)) ** 2
        score = 1.0 - mean + 2.0 * np.sqrt(var_standardised) * float(state.y_scale)
        score[picked] = -np.inf
        p = int(np.argmin(np.linalg.norm(pool - chosen[j], axis=1)))
        assert np.allclose(pool[p], chosen[j], atol=1e-7)
        assert score[p] >= score.max() - 1e-5, (j, score[p], score.max())
        picked.append(p)
    # Without the fantasies the batch would be the plain top-q: the test must tell.
    assert picked != list(np.argsort(-(1.0 - mean + 2.0 * std))[:q])


def test_success_target_goes_the_other_way(gp_state):
    config = ProposalConfig(kind="ucb", target="success", **SMALL)
    p = np.asarray(propose(jax.random.key(3), gp_state, BOX_LOW, BOX_HIGH, config))
    mean_p, _ = posterior(gp_state, p)
    assert np.mean(p[:, 0] < 0) >= 0.75 and float(np.mean(mean_p)) > 0.6


def test_proposals_respect_a_smaller_box(gp_state):
    low, high = BOX_LOW / 4, BOX_HIGH / 4
    config = ProposalConfig(kind="ucb", **SMALL)
    p = np.asarray(propose(jax.random.key(5), gp_state, low, high, config))
    assert np.all(p >= low) and np.all(p <= high)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="kind"):
        ProposalConfig(kind="thompson")
    with pytest.raises(ValueError, match="target"):
        ProposalConfig(target="max")
    with pytest.raises(ValueError, match="q <= num_candidates"):
        ProposalConfig(q=10, num_candidates=5)


def test_ei_and_log_ei_agree_on_a_pool_and_differ_where_ei_is_flat(gp_state):
    """`ei` is EI itself; `log_ei` its stable log. On a fixed pool where EI is representable they
    rank alike; where EI underflows to 0 (a large margin ξ makes every candidate hopeless) EI's
    gradient is exactly 0, so its proposals stay where the pool put them, while log-EI still
    climbs and proposes better candidates by log-EI's own measure."""
    rng = np.random.default_rng(5)
    pool = rng.uniform(BOX_LOW, BOX_HIGH, (256, 3)).astype(np.float32)
    ei = np.asarray(acquisition_values(gp_state, pool, ProposalConfig(kind="ei")), np.float64)
    log_ei = np.asarray(acquisition_values(gp_state, pool, ProposalConfig(kind="log_ei")), np.float64)
    assert ei.max() > 1e-3 and int(np.argmax(ei)) == int(np.argmax(log_ei))
    shown = ei > 1e-30
    np.testing.assert_allclose(np.log(ei[shown]), log_ei[shown], atol=2e-3)

    flat = AcquisitionParams(xi=1.0)  # J⁺ + 1: no candidate can improve on it
    assert np.all(np.asarray(acquisition_values(gp_state, pool, ProposalConfig(kind="ei"), flat)) == 0.0)
    # gradients of one hopeless candidate (Z = -20)
    d_ei = jax.grad(expected_improvement, argnums=(0, 1))(0.0, 0.05, 1.0)
    d_log = jax.grad(log_expected_improvement, argnums=(0, 1))(0.0, 0.05, 1.0)
    assert all(float(g) == 0.0 for g in d_ei) and float(d_log[0]) > 0 and np.all(np.isfinite(d_log))
    config = dict(SMALL, num_steps=20, step_size=0.05)
    key = jax.random.key(6)
    by_ei = propose(key, gp_state, BOX_LOW, BOX_HIGH, ProposalConfig(kind="ei", **config), flat)
    by_log = propose(key, gp_state, BOX_LOW, BOX_HIGH, ProposalConfig(kind="log_ei", **config), flat)
    score = lambda x: np.asarray(acquisition_values(gp_state, x, ProposalConfig(kind="log_ei"), flat))  # noqa: E731
    assert score(by_log).mean() > score(by_ei).mean() + 1.0  # nats
