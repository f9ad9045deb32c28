"""JAX EM Gaussian mixture against scikit-learn, BIC selection, weights, deployment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from refinery_jax.success_models import (
    DeploymentConfig,
    GMMConfig,
    GMMParams,
    fit_gmm,
    fit_gmm_bic,
    fit_success_gmm,
    gmm_log_prob,
    gmm_sample,
    init_gmm,
    make_deployment_sampler,
    run_em,
    select_initialisations,
)

N, D, K_MAX = 300, 3, 4  # one data shape and slot count for the whole file: few compiles
CONFIGS = {ct: GMMConfig(max_components=K_MAX, covariance_type=ct) for ct in ("full", "diag")}


def _blobs(seed, k, spread=8.0, scale=1.0, anisotropic=False):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, spread, (k, D))
    labels = rng.integers(0, k, N)
    noise = rng.normal(0.0, scale, (N, D))
    if anisotropic:
        noise = noise @ rng.normal(0.0, 1.0, (D, D))
    return (centres[labels] + noise).astype(np.float32)


DATASETS = {
    "separated_3": (lambda: _blobs(0, 3), 3),
    "overlapping_anisotropic_2": (lambda: _blobs(1, 2, spread=1.5, anisotropic=True), 2),
    "offset_blobs_3": (lambda: _blobs(7, 3) + 500.0, 3),  # far from the origin: float32 cancellation
    "uniform_box_cm_4": (lambda: np.random.default_rng(2).uniform(-0.01, 0.01, (N, D)).astype(np.float32), 4),
}


def _sklearn_from(params: GMMParams, k: int, covariance_type: str) -> GaussianMixture:
    weights = np.asarray(params.weights[:k], np.float64)
    cov = np.asarray(params.covariances[:k], np.float64)
    precisions = np.linalg.inv(cov) if covariance_type == "full" else 1.0 / cov
    return GaussianMixture(
        k,
        covariance_type=covariance_type,
        weights_init=weights / weights.sum(),
        means_init=np.asarray(params.means[:k], np.float64),
        precisions_init=precisions,
    )


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_em_matches_sklearn_from_the_same_initialisation(dataset, covariance_type):
    make, k = DATASETS[dataset]
    x = make()
    config = CONFIGS[covariance_type]
    params0 = init_gmm(jax.random.key(0), x, k, config=config)
    ours = run_em(params0, x, config=config)
    x64 = x.astype(np.float64)  # sklearn keeps float32 inputs in float32: give it float64
    ref = _sklearn_from(params0, k, covariance_type).fit(x64)
    assert bool(ours.converged) and int(ours.num_components) == k
    # Mean log-likelihood per sample within 1e-3, and the same per-sample densities.
    assert abs(float(ours.log_likelihood) - ref.score(x64)) < 1e-3
    np.testing.assert_allclose(gmm_log_prob(ours, x), ref.score_samples(x64), atol=1e-3)
    assert abs(float(ours.bic) - ref.bic(x64)) < 1e-3 * N
    np.testing.assert_allclose(np.asarray(ours.params.weights[k:]), 0.0)  # inactive slots


@pytest.mark.parametrize("k_true", [1, 2, 3])
def test_bic_picks_true_number_of_components(k_true):
    x = _blobs(10 + k_true, k_true, spread=12.0)
    best, bic = fit_gmm_bic(jax.random.key(1), x, config=CONFIGS["full"])
    assert int(best.num_components) == k_true
    assert int(np.argmin(bic)) + 1 == k_true and bic.shape == (K_MAX,)
    assert np.all(np.isfinite(bic))


def test_bic_never_chooses_a_numerically_broken_fit():
    """Pairs 0.1 mm apart 50 m from the origin: float32 second moments cancel, some K give
    NaN BIC (argmin over NaN would pick one); the chosen fit is finite."""
    rng = np.random.default_rng(0)
    pairs = np.repeat(rng.uniform(-50.0, 50.0, (6, D)), 2, axis=0) + 1e-4 * rng.normal(size=(12, D))
    x = np.concatenate([pairs, rng.normal(size=(N - 12, D))]).astype(np.float32)
    best, bic = fit_gmm_bic(jax.random.key(0), x, (np.arange(N) < 12).astype(np.float32), config=CONFIGS["full"])
    assert np.isnan(np.asarray(bic)).any(), "the case should break some K"
    assert np.isfinite(float(best.bic)) and all(np.all(np.isfinite(np.asarray(a))) for a in
                                                (best.params.means, best.params.covariances, best.params.weights))


def test_weighted_em_equals_duplicated_rows():
    x = _blobs(3, 2)
    config = CONFIGS["full"]
    # Rows 0..49 counted twice: as weight 2 (their copies padded out) or as copies.
    base = x[: N - 50]
    x_both = np.concatenate([base, base[:50]])  # [N, D]
    w_dup = np.ones(N, np.float32)
    w_weighted = np.concatenate([np.full(50, 2.0), np.ones(N - 100), np.zeros(50)]).astype(np.float32)
    params0 = init_gmm(jax.random.key(2), x_both, 2, config=config)
    dup = run_em(params0, x_both, w_dup, config)
    weighted = run_em(params0, x_both, w_weighted, config)
    assert int(dup.n_iter) > 1
    np.testing.assert_allclose(weighted.params.means, dup.params.means, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(weighted.log_likelihood), float(dup.log_likelihood), atol=1e-4)


def test_number_of_components_is_traced_not_static():
    from refinery_jax.success_models import gmm as gmm_module

    x = _blobs(8, 2)
    fit_gmm(jax.random.key(0), x, 1, config=CONFIGS["diag"])
    before = gmm_module._fit_jit._cache_size()
    states = [fit_gmm(jax.random.key(0), x, k, config=CONFIGS["diag"]) for k in (2, 3, 4)]
    assert gmm_module._fit_jit._cache_size() == before  # K changes, no recompile
    assert [int(s.num_components) for s in states] == [2, 3, 4]


def test_padding_rows_are_ignored():
    x = _blobs(4, 2)
    config = CONFIGS["diag"]
    weights = (np.arange(N) < 200).astype(np.float32)
    x_garbage = x.copy()
    x_garbage[200:] = 1e4  # finite garbage where weight is 0
    a = fit_gmm(jax.random.key(3), x, 2, weights, config)
    b = fit_gmm(jax.random.key(3), x_garbage, 2, weights, config)
    np.testing.assert_allclose(a.params.means, b.params.means, rtol=1e-5)
    assert np.isfinite(float(b.log_likelihood))


def test_empty_component_is_frozen_not_nan():
    x = _blobs(5, 2)
    config = CONFIGS["full"]
    params0 = init_gmm(jax.random.key(4), x, 3, config=config)
    far = params0.means.at[2].set(jnp.full(D, 1e4))  # component 2 owns no point
    weights = jnp.array([0.5, 0.5 - 1e-6, 1e-6, 0.0])
    ours = run_em(params0.replace(means=far, weights=weights), x, config=config)
    leaves = jax.tree.leaves(ours)
    assert all(np.all(np.isfinite(np.asarray(a, np.float64))) for a in leaves)
    np.testing.assert_allclose(ours.params.means[2], far[2])  # kept its previous mean
    assert float(ours.params.weights[2]) < 1e-6
    assert np.all(np.isfinite(gmm_log_prob(ours, x)))


# ---------------------------------------------------------------------------
# Sampling and deployment-time selection (Algorithm 2)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def success_gmm():
    """Successes from a box of initial conditions: two patches of the ±1 cm box."""
    rng = np.random.default_rng(6)
    x = rng.uniform(-0.01, 0.01, (N, D)).astype(np.float32)
    success = ((np.abs(x[:, 0] - 0.005) < 0.003) | (np.abs(x[:, 1] + 0.005) < 0.002)).astype(np.float32)
    return x, success, fit_success_gmm(jax.random.key(5), x, success, CONFIGS["full"])


def test_success_gmm_samples_match_its_moments(success_gmm):
    x, success, gmm = success_gmm
    samples = gmm_sample(jax.random.key(6), gmm, 4000)
    mixture_mean = np.sum(np.asarray(gmm.params.weights)[:, None] * np.asarray(gmm.params.means), axis=0)
    np.testing.assert_allclose(samples.mean(0), mixture_mean, atol=5e-4)
    # Fitted to successes only: higher density on successes than on failures.
    log_p = np.asarray(gmm_log_prob(gmm, x))
    assert log_p[success > 0].mean() > log_p[success == 0].mean()


def test_argmax_selection_returns_highest_density_inside_box(success_gmm):
    _, _, gmm = success_gmm
    low, high = np.full(D, -0.01, np.float32), np.full(D, 0.01, np.float32)
    inits, log_p = select_initialisations(jax.random.key(7), gmm, low, high, top_k=5)
    assert inits.shape == (5, D) and np.all(np.diff(np.asarray(log_p)) <= 0)  # best first
    assert np.all((inits >= low) & (inits <= high))
    np.testing.assert_allclose(gmm_log_prob(gmm, inits), log_p, rtol=1e-5)
    # The argmax beats a random GMM sample (Refinery's public code) on density.
    random_cfg = DeploymentConfig(selection="random")
    keys = jax.random.split(jax.random.key(8), 32)
    rand = jax.vmap(lambda k: select_initialisations(k, gmm, low, high, random_cfg)[1][0])(keys)
    assert float(log_p[0]) >= float(jnp.max(rand))


def test_deployment_sampler_is_a_pure_key_to_init_function(success_gmm):
    _, _, gmm = success_gmm
    low, high = np.full(D, -0.01, np.float32), np.full(D, 0.01, np.float32)
    sampler = make_deployment_sampler(gmm, low, high, DeploymentConfig(num_candidates=200))
    keys = jax.random.split(jax.random.key(9), 6)
    inits = jax.jit(jax.vmap(sampler))(keys)
    assert inits.shape == (6, D) and np.all((inits >= low) & (inits <= high))
    np.testing.assert_array_equal(jax.jit(sampler)(keys[0]), inits[0])
    assert len({tuple(np.asarray(r)) for r in inits}) > 1  # different keys, different inits


def test_reject_mode_with_fewer_inside_than_top_k_stays_in_box(success_gmm):
    """Inside samples come first (by density); the rest are clipped fill-ins, never outside."""
    _, _, gmm = success_gmm
    low, high = np.full(D, 0.0065, np.float32), np.full(D, 0.01, np.float32)
    key = jax.random.key(11)
    # The selection draws exactly these M = 1000 samples from the same key.
    samples = np.asarray(gmm_sample(key, gmm, DeploymentConfig().num_candidates))
    inside = samples[np.all((samples >= low) & (samples <= high), axis=1)]
    assert 0 < len(inside) < 5, len(inside)  # the case under test
    inits, log_p = select_initialisations(key, gmm, low, high, top_k=5)
    assert np.all((inits >= low) & (inits <= high))
    order = np.argsort(-np.asarray(gmm_log_prob(gmm, inside)))
    np.testing.assert_array_equal(inits[: len(inside)], inside[order])
    np.testing.assert_allclose(gmm_log_prob(gmm, inits), log_p, rtol=1e-5)


def test_clip_mode_projects_onto_a_small_box(success_gmm):
    _, _, gmm = success_gmm
    low, high = np.full(D, 0.008, np.float32), np.full(D, 0.009, np.float32)
    inits, log_p = select_initialisations(jax.random.key(10), gmm, low, high, DeploymentConfig(out_of_box="clip"))
    assert np.all((inits >= low) & (inits <= high)) and np.all(np.isfinite(log_p))


# ---------------------------------------------------------------------------
# Errors raised in Python before compiling
# ---------------------------------------------------------------------------


def test_clear_errors():
    config = CONFIGS["full"]
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="zero successful"):
        fit_gmm_bic(key, np.zeros((0, D)), config=config)
    with pytest.raises(ValueError, match="zero successes"):
        fit_success_gmm(key, np.zeros((10, D)), np.zeros(10), config)
    with pytest.raises(ValueError, match="only 3 data points for 4 components"):
        fit_gmm_bic(key, np.zeros((3, D)), config=config)
    with pytest.raises(ValueError, match="only 2 data points"):
        fit_gmm(key, np.zeros((10, D)), 3, weights=(np.arange(10) < 2), config=config)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        fit_gmm(key, np.zeros(10), 1, config=config)
    with pytest.raises(ValueError, match="weights must have shape"):
        fit_gmm(key, np.zeros((10, D)), 1, weights=np.ones(9), config=config)
    with pytest.raises(ValueError, match="num_components"):
        fit_gmm(key, np.zeros((10, D)), K_MAX + 1, config=config)
    with pytest.raises(ValueError, match="covariance_type"):
        GMMConfig(covariance_type="spherical")
