"""Acquisition functions and batch proposals of initial conditions (Algorithm 1, Eq. 3).

Each acquisition scores ONE candidate from its posterior mean ``mu`` and std
``sigma`` (scalars); batch versions are ``jax.vmap`` at the boundary.

Direction (``target``)
----------------------
The paper (Sec. IV-A, Eq. 3 and the UCB/PI/EI definitions) writes the acquisitions
on the predicted *success* rate: ``A_UCB = μ + βσ``, ``PI = Φ((μ - J⁺)/σ)`` with
``J⁺ = max J`` "the best observed success rate", and Algorithm 1 line 6 takes
``θ' = argmax A(θ)``. Read literally, Algorithm 1 therefore fine-tunes where success
is already *high* (``target="success"``). Its stated intent ("prioritise task initial
states with high uncertainty of success", "fine-tuning where the policy fails") and
Refinery's public code (it ranks by ``2σ - μ``) point the other way: model the
*failure* rate ``1 - J`` and seek low predicted success / high uncertainty. That is
``target="failure"``, the default here; with β = 2, UCB on the failure rate,
``(1 - μ) + 2σ``, ranks candidates exactly like the code's ``2σ - μ``.

Incumbent ``J⁺`` for PI/EI
--------------------------
``incumbent="observed"`` is the paper's definition (best observed value, in the
target's orientation). With binary outcomes that is always 1 (or 0), which makes PI
and EI nearly constant, so the default ``"posterior_mean"`` uses the best posterior
mean at the observed points (the usual noisy-EI convention).

Batch proposals (diversity rule)
--------------------------------
:func:`propose` returns ``q`` points chosen greedily with *kriging-believer*
fantasies: after choosing a point, pretend it was observed with value equal to its
posterior mean. That leaves the posterior mean unchanged everywhere and shrinks the
posterior variance around the chosen point, which is a rank-one update of the
posterior covariance (done exactly on the candidate pool, O(N · pool) per pick).
Points closer than ``min_separation`` (box widths) to a chosen one are excluded too,
so the q proposals are always pairwise distinct.

Public API: :func:`ucb`, :func:`probability_of_improvement`,
:func:`log_probability_of_improvement`, :func:`expected_improvement`,
:func:`log_expected_improvement`, :func:`log_h`, :class:`AcquisitionParams`,
:class:`ProposalConfig`, :func:`acquisition_values`, :func:`propose`.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import erfcx, log_ndtr, ndtr

from refinery_jax.success_models.gp import GPState, _masked_kernel, _normalise_inputs, posterior_standardised

ACQUISITIONS = ("ucb", "pi", "ei", "log_ei")
TARGETS = ("failure", "success")
INCUMBENTS = ("posterior_mean", "observed")

# Below this std the acquisitions treat the candidate as (numerically) certain.
SIGMA_MIN = 1e-10

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_HALF_LOG_PI_OVER_2 = 0.5 * math.log(math.pi / 2.0)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)


# ---------------------------------------------------------------------------
# Single-candidate acquisitions
# ---------------------------------------------------------------------------


def _safe_sigma(sigma):
    return jnp.maximum(sigma, SIGMA_MIN)


def ucb(mu, sigma, beta=2.0):
    """Upper confidence bound ``μ + βσ`` for one candidate (scalars)."""
    return mu + beta * sigma


def probability_of_improvement(mu, sigma, best, xi=0.0):
    """``Φ((μ - J⁺ - ξ) / σ)`` for one candidate (scalars)."""
    return ndtr((mu - best - xi) / _safe_sigma(sigma))


def log_probability_of_improvement(mu, sigma, best, xi=0.0):
    """``log Φ((μ - J⁺ - ξ) / σ)``: same argmax as PI, useful gradients far below J⁺."""
    return log_ndtr((mu - best - xi) / _safe_sigma(sigma))


def expected_improvement(mu, sigma, best, xi=0.0):
    """``(μ - J⁺ - ξ) Φ(Z) + σ φ(Z)`` with ``Z = (μ - J⁺ - ξ)/σ`` (scalars).

    Finite for σ → 0 (σ is floored at ``SIGMA_MIN``); underflows to 0 for Z ≲ -13 in
    float32, where :func:`log_expected_improvement` should be used instead.
    """
    sigma = _safe_sigma(sigma)
    diff = mu - best - xi
    z = diff / sigma
    return diff * ndtr(z) + sigma * _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)


def _log1mexp(w):
    """``log(1 - exp(w))`` for w < 0, accurate on both sides of -log 2."""
    near_zero = w > -math.log(2.0)
    w_near = jnp.where(near_zero, w, -1.0)
    w_far = jnp.where(near_zero, -1.0, w)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(w_near)), jnp.log1p(-jnp.exp(w_far)))


def log_h(z):
    """``log(φ(z) + zΦ(z))``, stable for all float32 z (Ament et al. 2023, "LogEI").

    Three branches, each fed a clamped input so the unused branches never produce
    NaN gradients:

    * z > -1: the direct formula.
    * -10 < z ≤ -1: BoTorch's erfcx branch, ``log φ(z) + log1mexp(w)`` with
      ``w = log(|z| Φ(z)/φ(z)) = log(erfcx(-z/√2) |z|) + log √(π/2)``.
    * z ≤ -10: ``log φ(z) + log(1 - |z| Φ(z)/φ(z))`` with the bracket from the
      asymptotic series of erfcx, ``s (1 - 3s + 15s² - 105s³ + ...)``, ``s = 1/z²``.
      BoTorch keeps the erfcx branch down to z = -1e3 and then only the leading term
      ``log φ(z) - 2 log|z|``; in float32 that branch's gradient drifts by ~6% near
      -1e3 (``w`` → 0 loses all its digits), while the series is accurate to float32
      precision in value and gradient for every z ≤ -10.
    """
    bound, tail = -1.0, -10.0
    in_upper, in_tail = z > bound, z <= tail
    # jnp.where (not max/clip) so the selected branch gets the full gradient at ties.
    z_up = jnp.where(in_upper, z, bound)
    upper = jnp.log(_INV_SQRT_2PI * jnp.exp(-0.5 * z_up * z_up) + z_up * ndtr(z_up))

    z_mid = jnp.where(in_upper | in_tail, -2.0, z)
    w = jnp.log(erfcx(-_INV_SQRT_2 * z_mid) * jnp.abs(z_mid)) + _HALF_LOG_PI_OVER_2
    middle = -0.5 * z_mid * z_mid - _HALF_LOG_2PI + _log1mexp(w)

    z_tail = jnp.where(in_tail, z, tail)
    s = 1.0 / (z_tail * z_tail)
    # 1 - |z|Φ/φ = s Σ_n (-1)^n (2n+1)!! s^n ; first omitted term < 4e-9 at z = -10.
    series = 1.0 + s * (-3.0 + s * (15.0 + s * (-105.0 + s * (945.0 + s * (-10395.0 + s * (135135.0 + s * -2027025.0))))))
    tail_value = -0.5 * z_tail * z_tail - _HALF_LOG_2PI - 2.0 * jnp.log(jnp.abs(z_tail)) + jnp.log(series)
    return jnp.where(in_upper, upper, jnp.where(in_tail, tail_value, middle))


def log_expected_improvement(mu, sigma, best, xi=0.0):
    """``log EI = log σ + log_h(Z)``: finite values and gradients even where EI underflows."""
    sigma = _safe_sigma(sigma)
    return jnp.log(sigma) + log_h((mu - best - xi) / sigma)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@flax.struct.dataclass
class AcquisitionParams:
    """Traced acquisition settings (vmappable; changing them does not recompile).

    Attributes:
      beta: UCB exploration weight (paper: β = 2).
      xi: PI/EI improvement margin ξ (0 = the paper's formulas).
    """

    beta: float = 2.0
    xi: float = 0.0


@dataclasses.dataclass(frozen=True)
class ProposalConfig:
    """Static settings of :func:`propose` (hashable).

    Attributes:
      kind: ``"ucb"``, ``"pi"``, ``"ei"`` or ``"log_ei"``.
      target: ``"failure"`` (model 1 - J: seek low success / high uncertainty; the
        default and what Refinery's code does) or ``"success"`` (the paper's text).
      incumbent: ``"posterior_mean"`` or ``"observed"`` (see module docstring).
      q: number of proposals returned.
      num_candidates: random (Latin-hypercube) candidates scored over the box.
      num_starts: best candidates refined by projected gradient ascent.
      num_steps: gradient-ascent (Adam) steps.
      step_size: Adam learning rate, in box widths.
      min_separation: minimum distance between proposals, in box widths.
    """

    kind: str = "ucb"
    target: str = "failure"
    incumbent: str = "posterior_mean"
    q: int = 8
    num_candidates: int = 1024
    num_starts: int = 16
    num_steps: int = 20
    step_size: float = 0.01
    min_separation: float = 1e-3

    def __post_init__(self):
        if self.kind not in ACQUISITIONS:
            raise ValueError(f"kind must be one of {ACQUISITIONS}, got {self.kind!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.incumbent not in INCUMBENTS:
            raise ValueError(f"incumbent must be one of {INCUMBENTS}, got {self.incumbent!r}")
        if self.q < 1 or self.num_candidates < self.q or not 0 <= self.num_starts <= self.num_candidates:
            raise ValueError("need 1 <= q <= num_candidates and 0 <= num_starts <= num_candidates")


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def _orient(mean, target):
    """Success rate → the quantity being maximised (failure rate 1 - J, or J)."""
    return 1.0 - mean if target == "failure" else mean


def _utility(mu, sigma, best, kind, params: AcquisitionParams):
    """Score maximised by the optimiser: each acquisition itself, with its own gradients.

    EI (and PI) underflow to exactly 0 where the candidate is hopeless (Z ≲ -13 in
    float32), so gradient ascent started there cannot move and ties among zeros are
    broken by pool order; that is the acquisition the paper names. `log_ei` is the
    numerically stable variant (Ament et al. 2023): same argmax wherever EI is
    representable, useful gradients everywhere (tests/test_acquisition.py shows both).
    """
    if kind == "ucb":
        return ucb(mu, sigma, params.beta)
    if kind == "pi":
        return probability_of_improvement(mu, sigma, best, params.xi)
    if kind == "ei":
        return expected_improvement(mu, sigma, best, params.xi)
    return log_expected_improvement(mu, sigma, best, params.xi)


def _incumbent(state: GPState, config: ProposalConfig):
    """J⁺ in the target's orientation and original units (max over valid points)."""
    valid = state.weights > 0
    if config.incumbent == "observed":
        values = state.y
    else:
        mask = valid.astype(state.x.dtype)
        k = _masked_kernel(state.kernel, state.params)
        xm = jnp.concatenate([state.x, mask[:, None]], axis=1)
        values = k(xm, xm) @ state.alpha
    oriented = _orient(values * state.y_scale + state.y_mean, config.target)
    return jnp.max(jnp.where(valid, oriented, -jnp.inf))


def _as_float32(params: AcquisitionParams) -> AcquisitionParams:
    """One dtype for β and ξ, so Python floats and NumPy/JAX scalars share a compile."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def acquisition_values(state: GPState, x, config: ProposalConfig = ProposalConfig(),
                       params: AcquisitionParams = AcquisitionParams()):
    """Acquisition ``config.kind`` (oriented by ``config.target``) at candidates.

    Args:
      state: fitted GP.
      x: [M, d] candidates, original units.
      config: static :class:`ProposalConfig` (``kind``, ``target``, ``incumbent``).
      params: :class:`AcquisitionParams` (β, ξ; traced).

    Returns:
      [M] acquisition values (log EI for ``"log_ei"``).
    """
    return _acquisition_values_jit(state, x, config, _as_float32(params))


@partial(jax.jit, static_argnames=("config",))
def _acquisition_values_jit(state: GPState, x, config: ProposalConfig, params: AcquisitionParams):
    best = _incumbent(state, config)

    def one(xi):
        mean, var, _ = posterior_standardised(state, xi)
        mu = _orient(mean * state.y_scale + state.y_mean, config.target)
        return _utility(mu, jnp.sqrt(var) * state.y_scale, best, config.kind, params)

    return jax.vmap(one)(x)


# ---------------------------------------------------------------------------
# Proposals
# ---------------------------------------------------------------------------


def _latin_hypercube(key, n, d):
    """[n, d] stratified uniform samples in [0, 1]^d (one per row-stratum per dim)."""
    k_perm, k_jit = jax.random.split(key)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(k_perm, d)).T
    return (perms + jax.random.uniform(k_jit, (n, d))) / n


@partial(jax.jit, static_argnames=("config",))
def _propose_jit(key, state: GPState, box_low, box_high, config: ProposalConfig, params):
    d = box_low.shape[0]
    width = box_high - box_low
    to_x = lambda u: box_low + u * width
    best = _incumbent(state, config)

    def oriented_posterior(u):
        """Pool point in [0,1]^d → (μ, σ) oriented & in original units, var, v."""
        mean, var, v = posterior_standardised(state, to_x(u))
        mu = _orient(mean * state.y_scale + state.y_mean, config.target)
        return mu, jnp.sqrt(var) * state.y_scale, var, v

    def utility_at(u):
        mu, sigma, _, _ = oriented_posterior(u)
        return _utility(mu, sigma, best, config.kind, params)

    score_all = jax.vmap(_utility, in_axes=(0, 0, None, None, None))

    # 1) Score space-filling random candidates; keep v = L^{-1} k(X, x) for step 4.
    pool = _latin_hypercube(key, config.num_candidates, d)
    mu, sigma, var_s, v = jax.vmap(oriented_posterior)(pool)

    # 2) Refine the best ones with projected (clipped) Adam ascent inside the box.
    if config.num_starts > 0 and config.num_steps > 0:
        _, top = jax.lax.top_k(score_all(mu, sigma, best, config.kind, params), config.num_starts)
        opt = optax.adam(config.step_size)
        grad_fn = jax.vmap(jax.grad(lambda u: -utility_at(u)))

        def ascent_step(carry, _):
            u, opt_state = carry
            g = jnp.nan_to_num(grad_fn(u))
            updates, opt_state = opt.update(g, opt_state, u)
            return (jnp.clip(optax.apply_updates(u, updates), 0.0, 1.0), opt_state), None

        u0 = pool[top]
        (u_ref, _), _ = jax.lax.scan(ascent_step, (u0, opt.init(u0)), None, length=config.num_steps)
        # 3) Add the refined points to the pool.
        extra = jax.vmap(oriented_posterior)(u_ref)
        pool = jnp.concatenate([pool, u_ref], axis=0)
        mu, sigma, var_s, v = (jnp.concatenate([a, b], axis=0) for a, b in zip((mu, sigma, var_s, v), extra))

    x_pool = to_x(pool)
    kernel = _masked_kernel(state.kernel, state.params)
    u_gp = _normalise_inputs(x_pool, state.box_low, state.box_high)
    u_gp_m = jnp.concatenate([u_gp, jnp.ones((u_gp.shape[0], 1), u_gp.dtype)], axis=1)
    noise_var = jnp.exp(2.0 * state.params.log_noise)  # standardised units
    var_floor = 1e-10 * jnp.exp(2.0 * state.params.log_amplitude)

    # 4) Greedy kriging-believer selection with exact rank-one covariance updates.
    def pick(carry, j):
        var, excluded, rows, best = carry
        score = score_all(mu, jnp.sqrt(var) * state.y_scale, best, config.kind, params)
        score = jnp.where(excluded | ~jnp.isfinite(score), -jnp.inf, score)
        # If everything is excluded, fall back to the first non-excluded point.
        p = jnp.argmax(jnp.where(jnp.all(score == -jnp.inf), jnp.where(excluded, -1.0, 0.0), score))
        # Posterior covariance between every pool point and p, after earlier fantasies.
        k_p = jax.vmap(kernel.evaluate, in_axes=(0, None))(u_gp_m, u_gp_m[p])
        cov_p = k_p - v @ v[p] - rows.T @ rows[:, p]
        row = cov_p / jnp.sqrt(jnp.maximum(cov_p[p], 0.0) + noise_var)
        var = jnp.maximum(var - row**2, var_floor)
        rows = rows.at[j].set(row)
        too_close = jnp.linalg.norm(pool - pool[p], axis=1) < config.min_separation
        excluded = excluded | too_close | (jnp.arange(pool.shape[0]) == p)
        best = jnp.maximum(best, mu[p])  # the fantasy value enters the incumbent
        return (var, excluded, rows, best), pool[p]

    rows0 = jnp.zeros((config.q, pool.shape[0]), pool.dtype)
    init = (var_s, jnp.zeros(pool.shape[0], bool), rows0, best)
    _, chosen = jax.lax.scan(pick, init, jnp.arange(config.q))
    return to_x(chosen)


def propose(key, gp_state: GPState, box_low, box_high, config: ProposalConfig = ProposalConfig(),
            params: AcquisitionParams = AcquisitionParams()):
    """Propose ``q`` initial conditions for fine-tuning by maximising the acquisition.

    Latin-hypercube candidates over the box → projected Adam ascent from the best
    ``num_starts`` → greedy kriging-believer batch of ``q`` distinct points. One
    ``jit`` end to end (static ``config``; ``params`` is traced).

    Args:
      key: PRNG key.
      gp_state: fitted GP (:func:`~refinery_jax.success_models.gp.fit_gp`).
      box_low, box_high: [d] search box, original units (usually the GP's box).
      config: :class:`ProposalConfig`.
      params: :class:`AcquisitionParams` (β, ξ).

    Returns:
      [q, d] proposals inside the box, pairwise at least ``min_separation`` box
      widths apart.
    """
    box_low = jnp.asarray(box_low, jnp.float32)
    box_high = jnp.asarray(box_high, jnp.float32)
    d = gp_state.x.shape[1]
    if box_low.shape != (d,) or box_high.shape != (d,):
        raise ValueError(f"box_low/box_high must have shape [d] = [{d}], got {box_low.shape}, {box_high.shape}")
    if not isinstance(box_low, jax.core.Tracer) and not isinstance(box_high, jax.core.Tracer):
        # numpy: inside an enclosing jit even a comparison of constants is traced
        if not np.all(np.asarray(box_high) > np.asarray(box_low)):
            raise ValueError("box_high must be strictly greater than box_low in every dimension")
    return _propose_jit(key, gp_state, box_low, box_high, config, _as_float32(params))
