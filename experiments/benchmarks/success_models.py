"""Benchmark the success models against scikit-learn doing the same job.

GMM: N = 1000 points in d = 6, K = 1..8 chosen by BIC. Ours is one vmapped EM over
K (``fit_gmm_bic``); scikit-learn loops ``GaussianMixture(k).fit`` over k.

GP: 1000 observations in d = 3 (Bernoulli outcomes of a smooth success landscape
over a ±1 cm box), 1000 candidates, q = 8 proposals. Ours is ``fit_gp`` +
``propose`` (UCB on the failure rate); scikit-learn fits a
``GaussianProcessRegressor`` with a Matern(5/2) + White kernel, predicts on 1000
random candidates and takes the top-q of ``(1 - μ) + 2σ``.

Steady-state times are medians of several runs (``block_until_ready``); compile
time is the first call minus the steady-state time. Usage::

    python experiments/benchmarks/success_models.py --json   # last stdout line: JSON
"""

import argparse
import json
import math
import os
import statistics
import time

# JAX's CPU Cholesky and scikit-learn both call OpenBLAS, and sklearn's KMeans uses
# OpenMP. On a shared machine these worker threads (spinning next to XLA's own pool
# and other processes) made single calls up to 100x slower and the timings
# meaningless, for both libraries. One BLAS/OpenMP thread is the fair, stable
# default (it made sklearn itself 4-10x faster here); export the variables to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.mixture import GaussianMixture

from refinery_jax.success_models import (
    GMMConfig,
    GPConfig,
    GPParams,
    ProposalConfig,
    condition_gp,
    fit_gmm_bic,
    fit_gp,
    posterior,
    propose,
)


def _timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def _median_time(fn, repeats):
    return statistics.median(_timed(fn)[1] for _ in range(repeats))


# ---------------------------------------------------------------------------
# GMM
# ---------------------------------------------------------------------------


def gmm_data(seed=0, n=1000, d=6, k=4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 4.0, (k, d))
    mixing = rng.normal(0.0, 1.0, (k, d, d)) / math.sqrt(d)
    labels = rng.integers(0, k, n)
    noise = np.einsum("nij,nj->ni", mixing[labels], rng.normal(size=(n, d)))
    return (centres[labels] + noise).astype(np.float32)


def sklearn_gmm_bic(x, max_k):
    fits = [GaussianMixture(k, covariance_type="full", random_state=0).fit(x) for k in range(1, max_k + 1)]
    bics = [g.bic(x) for g in fits]
    return fits[int(np.argmin(bics))]


def bench_gmm(repeats, sk_repeats):
    x = gmm_data()
    config = GMMConfig(max_components=8, covariance_type="full")
    key = jax.random.key(0)
    run = lambda: fit_gmm_bic(key, x, config=config)
    (best, _), first = _timed(run)
    ours_s = _median_time(run, repeats)
    sk_best, _ = _timed(lambda: sklearn_gmm_bic(x.astype(np.float64), 8))
    sk_s = _median_time(lambda: sklearn_gmm_bic(x.astype(np.float64), 8), sk_repeats)
    return {
        "gmm_fit_s_ours": ours_s,
        "gmm_fit_s_sklearn": sk_s,
        "gmm_speedup": sk_s / ours_s,
        "gmm_compile_s": max(first - ours_s, 0.0),
        "gmm_loglik_gap": float(best.log_likelihood) - float(sk_best.score(x.astype(np.float64))),
        "gmm_k_ours": int(best.num_components),
        "gmm_k_sklearn": int(sk_best.n_components),
    }


# ---------------------------------------------------------------------------
# GP
# ---------------------------------------------------------------------------

BOX_LOW = np.full(3, -0.01, np.float32)
BOX_HIGH = np.full(3, 0.01, np.float32)
Q = 8


def true_success(x):
    u = x / 0.01
    return 1.0 / (1.0 + np.exp(-(2.5 - 3.0 * u[:, 0] ** 2 - 2.0 * (u[:, 1] - 0.3) ** 2)))


def gp_data(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.uniform(BOX_LOW, BOX_HIGH, (n, 3)).astype(np.float32)
    y = (rng.uniform(size=n) < true_success(x)).astype(np.float32)
    return x, y


def sklearn_fit_propose(x, y, candidates):
    kernel = ConstantKernel() * Matern(length_scale=np.full(3, 0.005), nu=2.5) + WhiteKernel()
    gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0).fit(x, y)
    mean, std = gp.predict(candidates, return_std=True)
    top = np.argsort(-((1.0 - mean) + 2.0 * std))[:Q]
    return gp, candidates[top]


def heldout_nll(mean, std, noise_std, y):
    var = np.asarray(std, np.float64) ** 2 + noise_std**2
    return float(np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * (y - np.asarray(mean)) ** 2 / var))


def bench_gp(repeats, sk_repeats):
    x, y = gp_data(0, 1000)
    x_test, y_test = gp_data(1, 2000)
    fit_config = GPConfig()
    prop_config = ProposalConfig(kind="ucb", target="failure", q=Q, num_candidates=1000)

    def ours():
        k_fit, k_prop = jax.random.split(jax.random.key(0))
        state = fit_gp(k_fit, x, y, BOX_LOW, BOX_HIGH, config=fit_config)
        return state, propose(k_prop, state, BOX_LOW, BOX_HIGH, prop_config)

    (state, proposals), first = _timed(ours)
    ours_s = _median_time(ours, repeats)

    candidates = np.random.default_rng(2).uniform(BOX_LOW, BOX_HIGH, (1000, 3))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    (sk_gp, _), _ = _timed(lambda: sklearn_fit_propose(x64, y64, candidates))
    sk_s = _median_time(lambda: sklearn_fit_propose(x64, y64, candidates), sk_repeats)

    # Quality: held-out predictive NLL of the Bernoulli outcomes.
    mean, std = posterior(state, x_test)
    nll_ours = heldout_nll(mean, std, float(state.noise_std), y_test)
    sk_mean, sk_std = sk_gp.predict(x_test.astype(np.float64), return_std=True)
    sk_noise = math.sqrt(sk_gp.kernel_.k2.noise_level) * sk_gp._y_train_std
    sk_latent_std = np.sqrt(np.maximum(sk_std**2 - sk_noise**2, 0.0))  # predict() includes the White noise
    nll_sk = heldout_nll(sk_mean, sk_latent_std, sk_noise, y_test)
    fixed = GPParams(jnp.full(3, math.log(50.0)), state.params.log_amplitude, state.params.log_noise)
    baseline = condition_gp(fixed, x, y, BOX_LOW, BOX_HIGH)  # Refinery's fixed 1 m length-scale
    b_mean, b_std = posterior(baseline, x_test)
    nll_fixed = heldout_nll(b_mean, b_std, float(baseline.noise_std), y_test)
    p_mean, _ = posterior(state, proposals)
    return {
        "gp_fit_propose_s_ours": ours_s,
        "gp_fit_propose_s_sklearn": sk_s,
        "gp_speedup": sk_s / ours_s,
        "gp_compile_s": max(first - ours_s, 0.0),
        "gp_heldout_nll_ours": nll_ours,
        "gp_heldout_nll_sklearn": nll_sk,
        "gp_heldout_nll_fixed_1m": nll_fixed,
        "gp_corr_true_success_ours": float(np.corrcoef(mean, true_success(x_test))[0, 1]),
        "gp_corr_true_success_fixed_1m": float(np.corrcoef(b_mean, true_success(x_test))[0, 1]),
        "gp_proposal_mean_success": float(np.mean(p_mean)),
        "gp_box_mean_success": float(np.mean(true_success(x_test))),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of our code")
    parser.add_argument("--sklearn-repeats", type=int, default=3, help="timed runs of scikit-learn")
    args = parser.parse_args()
    results = {**bench_gmm(args.repeats, args.sklearn_repeats), **bench_gp(args.repeats, args.sklearn_repeats)}
    results["device"] = str(jax.devices()[0])
    results["openblas_num_threads"] = os.environ["OPENBLAS_NUM_THREADS"]
    results["omp_num_threads"] = os.environ["OMP_NUM_THREADS"]
    for name, value in results.items():
        print(f"{name:32s} {value:.4g}" if isinstance(value, float) else f"{name:32s} {value}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
