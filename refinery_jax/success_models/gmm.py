"""Gaussian mixture of successful initial conditions, fitted by EM in JAX (Algorithm 2).

Refinery fits a GMM to the initial conditions from which the policy succeeded,
``D_succ``, and at deployment samples M candidates from it and starts from the one
of highest density. Here:

* EM with full or diagonal covariances mirrors scikit-learn's ``GaussianMixture``
  (same defaults: ``reg_covar=1e-6``, ``tol=1e-3``, ``max_iter=100``; same stopping
  rule on the change of the mean log-likelihood), with log-sum-exp responsibilities.
* Every array has a padded shape: ``K_max = config.max_components`` component slots,
  of which the first ``num_components`` are active (``component_mask``), and ``N``
  data rows with ``weights`` (0 = padding, or a weighted EM). Passing
  ``weights=success`` fits ``D_succ`` without changing shapes, and fits for
  K = 1..K_max are one ``vmap`` (:func:`fit_gmm_bic`) sharing one compile.
* Initialisation: k-means++ seeding plus a few Lloyd iterations, in JAX.
* Empty components (no responsibility mass) keep their previous mean and covariance
  and get a negligible weight, instead of producing NaN.
* Densities and samples go through ``distrax.MixtureSameFamily``.
* Float32 throughout: EM runs on data centred at their weighted mean (covariances
  come from second moments, see ``_m_step``) and the means are shifted back.

Public API: :class:`GMMConfig`, :class:`GMMParams`, :class:`GMMState`,
:func:`init_gmm`, :func:`run_em`, :func:`fit_gmm`, :func:`fit_gmm_bic`,
:func:`fit_success_gmm`, :func:`num_parameters`, :func:`gmm_distribution`,
:func:`gmm_log_prob`, :func:`gmm_sample`, :class:`DeploymentConfig`,
:func:`select_initialisations`, :func:`make_deployment_sampler`.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Callable

import distrax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

COVARIANCE_TYPES = ("full", "diag")
_EPS = float(np.finfo(np.float32).eps)


@dataclasses.dataclass(frozen=True)
class GMMConfig:
    """Static EM settings (hashable). Defaults follow scikit-learn where it has them.

    Attributes:
      max_components: K_max, the number of padded component slots (and the largest K
        tried by :func:`fit_gmm_bic`).
      covariance_type: ``"full"`` or ``"diag"``.
      reg_covar: added to covariance diagonals (sklearn: 1e-6).
      tol: stop when the mean log-likelihood changes by less than this (sklearn: 1e-3).
      max_iter: EM iterations at most (sklearn: 100).
      kmeans_iters: Lloyd iterations after k-means++ seeding.
    """

    max_components: int = 8
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    tol: float = 1e-3
    max_iter: int = 100
    kmeans_iters: int = 10

    def __post_init__(self):
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        if self.max_components < 1:
            raise ValueError(f"max_components must be >= 1, got {self.max_components}")
        if self.max_iter < 1 or self.kmeans_iters < 0 or self.reg_covar < 0 or self.tol < 0:
            raise ValueError("need max_iter >= 1, kmeans_iters >= 0, reg_covar >= 0, tol >= 0")


@flax.struct.dataclass
class GMMParams:
    """Mixture parameters in padded form.

    Attributes:
      weights: [K] mixing weights (0 on inactive slots; sum to 1).
      means: [K, d].
      covariances: [K, d, d] (full) or [K, d] (diag variances). Inactive slots hold
        the identity so every component density stays finite.
      component_mask: [K] bool, True on the active slots.
    """

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array
    component_mask: jax.Array


@flax.struct.dataclass
class GMMState:
    """A fitted mixture and its diagnostics.

    Attributes:
      params: :class:`GMMParams`.
      log_likelihood: [] weighted mean log-likelihood per sample (final params), as
        sklearn's ``score``.
      bic: [] Bayesian information criterion (sklearn's formula, n = sum of weights).
      n_iter: [] EM iterations run.
      converged: [] bool.
      num_components: [] int, the number of active slots.
    """

    params: GMMParams
    log_likelihood: jax.Array
    bic: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    num_components: jax.Array


# ---------------------------------------------------------------------------
# Densities, E-step and M-step
# ---------------------------------------------------------------------------


def _is_full(covariances) -> bool:
    return covariances.ndim == 3


def _component_log_prob(params: GMMParams, x):
    """[N, K] log N(x_n | μ_k, Σ_k).

    Full covariances go through the Cholesky factor of the *precision*, P_k with
    P_k P_kᵀ = Σ_k⁻¹ (as sklearn does): the Mahalanobis term is then a batched
    matmul ``||(x - μ_k) P_k||²`` rather than a triangular solve with N right-hand
    sides, which is several times faster on CPU.
    """
    d = x.shape[1]
    if _is_full(params.covariances):
        chol = jnp.linalg.cholesky(params.covariances)  # [K, d, d]
        eye = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), chol.shape)
        prec_chol = jnp.swapaxes(jax.scipy.linalg.solve_triangular(chol, eye, lower=True), 1, 2)
        log_det = -2.0 * jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=1, axis2=2)), axis=1)
        z = jnp.einsum("nd,kde->kne", x, prec_chol) - jnp.einsum("kd,kde->ke", params.means, prec_chol)[:, None, :]
        maha = jnp.sum(z**2, axis=2)
    else:
        diff = x[None, :, :] - params.means[:, None, :]  # [K, N, d]
        log_det = jnp.sum(jnp.log(params.covariances), axis=1)
        maha = jnp.sum(diff**2 / params.covariances[:, None, :], axis=2)
    return (-0.5 * (d * math.log(2.0 * math.pi) + log_det[:, None] + maha)).T


def _e_step(params: GMMParams, x):
    """Returns (log p(x_n) [N], responsibilities [N, K]) via log-sum-exp."""
    log_w = jnp.log(jnp.where(params.component_mask, params.weights, 1.0))
    joint = jnp.where(params.component_mask, _component_log_prob(params, x) + log_w, -jnp.inf)
    log_norm = jax.scipy.special.logsumexp(joint, axis=1)
    return log_norm, jnp.exp(joint - log_norm[:, None])


def _m_step(x, weights, resp, previous: GMMParams, reg_covar: float) -> GMMParams:
    """Weighted M-step; inactive or empty components keep their previous values."""
    d = x.shape[1]
    r = resp * weights[:, None]  # [N, K]
    nk_raw = jnp.sum(r, axis=0)
    nk = nk_raw + 10.0 * _EPS  # as sklearn: keeps divisions finite
    means = (r.T @ x) / nk[:, None]
    # Covariances from second moments, E[x xᵀ] - μ μᵀ: one [K, N] x [N, d²] matmul
    # instead of K scatter matrices of (x - μ_k). The callers centre x first, which
    # keeps the float32 cancellation small (relative error ~ eps · |μ_k|² / σ_k²).
    if _is_full(previous.covariances):
        outer = (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], d * d)
        second = (r.T @ outer).reshape(-1, d, d) / nk[:, None, None]
        cov = second - means[:, :, None] * means[:, None, :]
        cov = 0.5 * (cov + jnp.swapaxes(cov, 1, 2)) + reg_covar * jnp.eye(d, dtype=x.dtype)
    else:
        cov = (r.T @ (x * x)) / nk[:, None] - means**2 + reg_covar
    # "Empty": less than a millionth of the data's weight (sklearn would collapse it
    # onto a point; we freeze it instead).
    keep = (~previous.component_mask) | (nk_raw < 1e-6 * jnp.sum(weights))
    means = jnp.where(keep[:, None], previous.means, means)
    cov = jnp.where(keep.reshape((-1,) + (1,) * (cov.ndim - 1)), previous.covariances, cov)
    mix = jnp.where(previous.component_mask, nk, 0.0)
    return GMMParams(mix / jnp.sum(mix), means, cov, previous.component_mask)


def num_parameters(num_components, d: int, covariance_type: str):
    """Free parameters of a K-component mixture (sklearn's ``_n_parameters``)."""
    cov = num_components * d * (d + 1) / 2 if covariance_type == "full" else num_components * d
    return cov + num_components * d + num_components - 1


# ---------------------------------------------------------------------------
# Initialisation: k-means++ seeding + Lloyd iterations
# ---------------------------------------------------------------------------


def _sq_dists(x, centres):
    """[N, K] squared distances (only compared with each other, so the ||x||² term,
    identical along each row, is left out)."""
    return jnp.sum(centres**2, axis=1)[None, :] - 2.0 * x @ centres.T


def _kmeans_plusplus(key, x, weights, k_max: int):
    """[K_max, d] centres: first ∝ weight, then ∝ weight · squared distance."""
    keys = jax.random.split(key, k_max)
    log_w = jnp.log(weights)  # -inf on padding
    first = jax.random.categorical(keys[0], log_w)
    centres = jnp.zeros((k_max, x.shape[1]), x.dtype).at[0].set(x[first])
    d2 = jnp.sum((x - x[first]) ** 2, axis=1)

    def add_centre(carry, inp):
        centres, d2 = carry
        k, key_k = inp
        logits = jnp.log(weights * d2)
        # All remaining points coincide with centres: fall back to weights.
        logits = jnp.where(jnp.any(jnp.isfinite(logits)), logits, log_w)
        c = x[jax.random.categorical(key_k, logits)]
        return (centres.at[k].set(c), jnp.minimum(d2, jnp.sum((x - c) ** 2, axis=1))), None

    (centres, _), _ = jax.lax.scan(add_centre, (centres, d2), (jnp.arange(1, k_max), keys[1:]))
    return centres


def _assign(x, centres, component_mask):
    return jnp.argmin(jnp.where(component_mask, _sq_dists(x, centres), jnp.inf), axis=1)


def _lloyd(x, weights, centres, component_mask, iters: int):
    k_max = centres.shape[0]

    def step(centres, _):
        onehot = jax.nn.one_hot(_assign(x, centres, component_mask), k_max) * weights[:, None]
        counts = jnp.sum(onehot, axis=0)
        new = (onehot.T @ x) / jnp.maximum(counts, 1e-30)[:, None]
        return jnp.where((counts > 0)[:, None], new, centres), None

    centres, _ = jax.lax.scan(step, centres, None, length=iters)
    return centres


def _init_params(key, x, weights, num_components, config: GMMConfig) -> GMMParams:
    seeds = _kmeans_plusplus(key, x, weights, config.max_components)
    return _init_from_seeds(seeds, x, weights, num_components, config)


def _init_from_seeds(seeds, x, weights, num_components, config: GMMConfig) -> GMMParams:
    """Lloyd iterations from the first ``num_components`` seeds, then one M-step on the
    hard assignment."""
    k_max, d = config.max_components, x.shape[1]
    mask = jnp.arange(k_max) < num_components
    centres = _lloyd(x, weights, seeds, mask, config.kmeans_iters)
    resp = jax.nn.one_hot(_assign(x, centres, mask), k_max)
    # Fallback for components that own no point: the centre and the data's spread.
    mean_all = jnp.sum(weights[:, None] * x, axis=0) / jnp.sum(weights)
    var_all = jnp.sum(weights[:, None] * (x - mean_all) ** 2, axis=0) / jnp.sum(weights) + config.reg_covar
    if config.covariance_type == "full":
        spread = jnp.broadcast_to(jnp.diag(var_all), (k_max, d, d))
        inactive = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), (k_max, d, d))
        fallback_cov = jnp.where(mask[:, None, None], spread, inactive)
    else:
        fallback_cov = jnp.where(mask[:, None], var_all, 1.0)
    fallback = GMMParams(
        weights=jnp.zeros((k_max,), x.dtype),
        means=jnp.where(mask[:, None], centres, 0.0),
        covariances=fallback_cov,
        component_mask=mask,
    )
    return _m_step(x, weights, resp, fallback, config.reg_covar)


# ---------------------------------------------------------------------------
# EM loop (mirrors sklearn's BaseMixture.fit stopping rule)
# ---------------------------------------------------------------------------


def _weighted_mean(values, weights):
    return jnp.sum(jnp.where(weights > 0, weights * values, 0.0)) / jnp.sum(weights)


def _run_em(params: GMMParams, x, weights, config: GMMConfig) -> GMMState:
    def cond(carry):
        _, _, n_iter, converged = carry
        return (n_iter < config.max_iter) & ~converged

    def body(carry):
        params, previous_ll, n_iter, _ = carry
        log_norm, resp = _e_step(params, x)
        ll = _weighted_mean(log_norm, weights)  # of the params before this M-step
        params = _m_step(x, weights, resp, params, config.reg_covar)
        return params, ll, n_iter + 1, jnp.abs(ll - previous_ll) < config.tol

    init = (params, jnp.asarray(-jnp.inf, x.dtype), jnp.asarray(0), jnp.asarray(False))
    params, _, n_iter, converged = jax.lax.while_loop(cond, body, init)
    log_norm, _ = _e_step(params, x)
    ll = _weighted_mean(log_norm, weights)
    k = jnp.sum(params.component_mask)
    n = jnp.sum(weights)
    bic = -2.0 * ll * n + num_parameters(k, x.shape[1], config.covariance_type) * jnp.log(n)
    return GMMState(params=params, log_likelihood=ll, bic=bic, n_iter=n_iter, converged=converged, num_components=k)


# The jitted entry points run EM on centred data (see _m_step) and shift back.


def _centre(x, weights):
    """Zero the padded rows (they may hold anything), then subtract the weighted mean."""
    x = jnp.where(weights[:, None] > 0, x, 0.0)
    shift = jnp.sum(weights[:, None] * x, axis=0) / jnp.sum(weights)
    return x - shift, shift


def _shift_means(params: GMMParams, delta) -> GMMParams:
    return params.replace(means=params.means + delta)


def _shift_state(state: GMMState, delta) -> GMMState:
    return state.replace(params=_shift_means(state.params, delta))


@partial(jax.jit, static_argnames=("config",))
def _init_jit(key, x, weights, num_components, config):
    weights = _clean_weights(weights)
    xc, shift = _centre(x, weights)
    return _shift_means(_init_params(key, xc, weights, num_components, config), shift)


@partial(jax.jit, static_argnames=("config",))
def _em_jit(params, x, weights, config):
    weights = _clean_weights(weights)
    xc, shift = _centre(x, weights)
    return _shift_state(_run_em(_shift_means(params, -shift), xc, weights, config), shift)


@partial(jax.jit, static_argnames=("config",))
def _fit_jit(key, x, weights, num_components, config):
    weights = _clean_weights(weights)
    xc, shift = _centre(x, weights)
    state = _run_em(_init_params(key, xc, weights, num_components, config), xc, weights, config)
    return _shift_state(state, shift)


@partial(jax.jit, static_argnames=("config",))
def _fit_bic_jit(key, x, weights, config):
    weights = _clean_weights(weights)
    xc, shift = _centre(x, weights)
    ks = jnp.arange(1, config.max_components + 1)
    # Seed once: the k-means++ seeds of K are the first K of those of K_max (the same
    # as seeding each K with the same key), so every K reuses one seeding.
    seeds = _kmeans_plusplus(key, xc, weights, config.max_components)
    fit_k = lambda k: _run_em(_init_from_seeds(seeds, xc, weights, k, config), xc, weights, config)
    states = jax.vmap(fit_k)(ks)
    # argmin would return a NaN entry (a K whose EM broke down numerically): never choose one
    best = jnp.argmin(jnp.where(jnp.isfinite(states.bic), states.bic, jnp.inf))
    return _shift_state(jax.tree.map(lambda a: a[best], states), shift), states.bic


def _clean_weights(weights):
    return jnp.where(weights > 0, weights, 0.0)


# ---------------------------------------------------------------------------
# Python-side validation (before any compile) and public fitting functions
# ---------------------------------------------------------------------------


def _validate(x, weights, num_components: int | None, config: GMMConfig):
    if any(isinstance(a, jax.core.Tracer) for a in (x, weights)):
        x = jnp.asarray(x, jnp.float32)
        w = jnp.ones(x.shape[0], jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
        return x, w
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must have shape [N, d], got {x.shape}")
    n, d = x.shape
    if n == 0 or d == 0:
        raise ValueError(
            f"no data to fit a GMM to (x has shape {x.shape}); with Refinery's Algorithm 2 "
            "this means there were zero successful initial conditions"
        )
    w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape [N] = [{n}], got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0 (0 marks padding / failures)")
    n_valid = int(np.sum(w > 0))
    if n_valid == 0:
        raise ValueError("all weights are 0: no data to fit (zero successes?)")
    if not np.all(np.isfinite(x[w > 0])):
        raise ValueError("x must be finite on rows with weight > 0")
    k = config.max_components if num_components is None else int(num_components)
    if num_components is not None and not 1 <= k <= config.max_components:
        raise ValueError(f"num_components must be in [1, max_components={config.max_components}], got {k}")
    if n_valid < k:
        raise ValueError(
            f"only {n_valid} data points for {k} components; collect more successes or "
            "lower num_components / config.max_components"
        )
    return x, w


def init_gmm(key, x, num_components: int, weights=None, config: GMMConfig = GMMConfig()) -> GMMParams:
    """k-means++ (+ Lloyd) initial parameters, with ``num_components`` active slots.

    Args:
      key: PRNG key.
      x: [N, d] data.
      num_components: active components (1..config.max_components).
      weights: [N] optional sample weights (0 = padding).

    Returns:
      :class:`GMMParams` with ``config.max_components`` slots.
    """
    x, w = _validate(x, weights, num_components, config)
    return _init_jit(key, x, w, jnp.asarray(num_components), config)


def run_em(params: GMMParams, x, weights=None, config: GMMConfig = GMMConfig()) -> GMMState:
    """Run EM from given parameters (e.g. :func:`init_gmm`'s) until converged."""
    if params.covariances.ndim != (3 if config.covariance_type == "full" else 2):
        raise ValueError(f"params.covariances shape {params.covariances.shape} does not match "
                         f"covariance_type={config.covariance_type!r}")
    if params.weights.shape != (config.max_components,):
        raise ValueError(f"params have {params.weights.shape[0]} slots, config.max_components is "
                         f"{config.max_components}")
    x, w = _validate(x, weights, 1, config)
    if params.means.shape[1] != x.shape[1]:
        raise ValueError(f"params are {params.means.shape[1]}-dimensional, x is {x.shape[1]}-dimensional")
    return _em_jit(params, x, w, config)


def fit_gmm(key, x, num_components: int, weights=None, config: GMMConfig = GMMConfig()) -> GMMState:
    """Fit a ``num_components`` mixture (k-means++ init, then EM). Shapes as :func:`init_gmm`."""
    x, w = _validate(x, weights, num_components, config)
    return _fit_jit(key, x, w, jnp.asarray(num_components), config)


def fit_gmm_bic(key, x, weights=None, config: GMMConfig = GMMConfig()):
    """Fit K = 1..config.max_components in one vmapped EM and keep the lowest finite BIC.

    Args:
      key: PRNG key.
      x: [N, d] data.
      weights: [N] optional sample weights / padding mask.

    Returns:
      (best :class:`GMMState`, bic [K_max] with ``bic[k-1]`` for k components).
    """
    x, w = _validate(x, weights, None, config)
    return _fit_bic_jit(key, x, w, config)


def fit_success_gmm(key, x, success, config: GMMConfig = GMMConfig(), num_components: int | None = None):
    """Algorithm 2, lines 1–4: fit the GMM to the successful initial conditions.

    Args:
      key: PRNG key.
      x: [N, d] evaluated initial conditions.
      success: [N] binary outcomes (or success counts); failures get weight 0, so
        the shapes do not depend on how many succeeded.
      num_components: fixed K, or None to choose K by BIC over 1..max_components.

    Returns:
      :class:`GMMState`.
    """
    success = np.asarray(success, np.float32) if not isinstance(success, jax.core.Tracer) else success
    if num_components is None:
        return fit_gmm_bic(key, x, success, config)[0]
    return fit_gmm(key, x, num_components, success, config)


# ---------------------------------------------------------------------------
# Distribution, densities, samples (distrax)
# ---------------------------------------------------------------------------


def _params_of(model) -> GMMParams:
    return model.params if isinstance(model, GMMState) else model


def gmm_distribution(model: GMMState | GMMParams) -> distrax.MixtureSameFamily:
    """The mixture as ``distrax.MixtureSameFamily`` (inactive slots get -inf logits)."""
    p = _params_of(model)
    logits = jnp.where(p.component_mask, jnp.log(jnp.where(p.component_mask, p.weights, 1.0)), -jnp.inf)
    if _is_full(p.covariances):
        components = distrax.MultivariateNormalTri(loc=p.means, scale_tri=jnp.linalg.cholesky(p.covariances))
    else:
        components = distrax.MultivariateNormalDiag(loc=p.means, scale_diag=jnp.sqrt(p.covariances))
    return distrax.MixtureSameFamily(distrax.Categorical(logits=logits), components)


@jax.jit
def gmm_log_prob(model: GMMState | GMMParams, x):
    """[N] log density of [N, d] points."""
    return gmm_distribution(model).log_prob(x)


@partial(jax.jit, static_argnames=("num_samples",))
def gmm_sample(key, model: GMMState | GMMParams, num_samples: int):
    """[num_samples, d] samples."""
    return gmm_distribution(model).sample(seed=key, sample_shape=(num_samples,))


# ---------------------------------------------------------------------------
# Deployment-time selection (Algorithm 2, lines 5–8)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeploymentConfig:
    """How a deployment initial condition is drawn from the success GMM.

    Attributes:
      num_candidates: M samples drawn from the GMM (paper: 1000).
      selection: ``"argmax"`` (the paper: highest GMM density among the samples) or
        ``"random"`` (one GMM sample, what Refinery's public code does).
      out_of_box: with a box given, ``"reject"`` (drop samples outside it; if fewer
        than ``top_k`` are inside, fill up with the best of the outside samples
        clipped onto the box), ``"clip"`` (project samples onto it) or ``"ignore"``.
    """

    num_candidates: int = 1000
    selection: str = "argmax"
    out_of_box: str = "reject"

    def __post_init__(self):
        if self.selection not in ("argmax", "random"):
            raise ValueError(f"selection must be 'argmax' or 'random', got {self.selection!r}")
        if self.out_of_box not in ("reject", "clip", "ignore"):
            raise ValueError(f"out_of_box must be 'reject', 'clip' or 'ignore', got {self.out_of_box!r}")
        if self.num_candidates < 1:
            raise ValueError("num_candidates must be >= 1")


@partial(jax.jit, static_argnames=("config", "top_k", "has_box"))
def _select_jit(key, model, box_low, box_high, config, top_k, has_box):
    dist = gmm_distribution(model)
    samples = dist.sample(seed=key, sample_shape=(config.num_candidates,))
    in_box = jnp.ones(config.num_candidates, bool)
    if has_box and config.out_of_box != "ignore":
        clipped = jnp.clip(samples, box_low, box_high)
        if config.out_of_box == "reject":
            in_box = jnp.all((samples >= box_low) & (samples <= box_high), axis=1)
        # "reject": outside samples are clipped too, but ranked after every inside
        # one, so they are used only when fewer than top_k samples fall inside.
        samples = clipped
    log_p = dist.log_prob(samples)
    if config.selection == "argmax":
        score = log_p
    else:  # samples are i.i.d., so "the first acceptable ones" are a random draw
        score = -jnp.arange(config.num_candidates, dtype=log_p.dtype)
    idx = jnp.lexsort((-score, ~in_box))[:top_k]  # inside first, then by score
    return samples[idx], log_p[idx]


def select_initialisations(key, model: GMMState | GMMParams, box_low=None, box_high=None,
                           config: DeploymentConfig = DeploymentConfig(), top_k: int = 1):
    """Sample M candidates from the GMM and keep the ``top_k`` best (Algorithm 2).

    Args:
      key: PRNG key.
      model: fitted mixture.
      box_low, box_high: optional [d] initialisation box (see ``config.out_of_box``).
      top_k: how many to return, best first (highest density for ``"argmax"``;
        with ``out_of_box="reject"``, samples inside the box before clipped fill-ins).

    Returns:
      (inits [top_k, d], log_density [top_k]).
    """
    if not 1 <= top_k <= config.num_candidates:
        raise ValueError(f"top_k must be in [1, num_candidates={config.num_candidates}], got {top_k}")
    d = _params_of(model).means.shape[1]
    has_box = box_low is not None or box_high is not None
    if has_box:
        if box_low is None or box_high is None:
            raise ValueError("give both box_low and box_high, or neither")
        box_low, box_high = jnp.asarray(box_low, jnp.float32), jnp.asarray(box_high, jnp.float32)
        if box_low.shape != (d,) or box_high.shape != (d,):
            raise ValueError(f"box_low/box_high must have shape [d] = [{d}], got {box_low.shape}, {box_high.shape}")
    else:
        box_low = box_high = jnp.zeros((d,), jnp.float32)
    return _select_jit(key, model, box_low, box_high, config, top_k, has_box)


def make_deployment_sampler(model: GMMState | GMMParams, box_low=None, box_high=None,
                            config: DeploymentConfig = DeploymentConfig()) -> Callable[[jax.Array], jax.Array]:
    """A reset distribution ``key -> init [d]`` for deployment (Algorithm 2, lines 6–8).

    The returned function is pure and jittable/vmappable: ``jax.vmap(sampler)(keys)``
    gives one initial condition per environment.
    """
    select_initialisations(jax.random.key(0), model, box_low, box_high, config)  # validate now

    def sampler(key):
        inits, _ = select_initialisations(key, model, box_low, box_high, config)
        return inits[0]

    return sampler
