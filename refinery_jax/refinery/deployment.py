"""Algorithm 2: deployment-time selection of initial conditions with a success GMM.

Offline: evaluate the policy from N uniform θ, fit a GMM (components chosen by BIC)
to the successful ones. Online: every episode samples M candidates from the GMM and
starts from the one of highest density (`DeploymentConfig(selection="argmax")`, the
paper) or from a random one (`"random"`, what Refinery's public code does). The
result is a reset distribution `key -> init`, so `evaluate` and PPO take it as is.

The mixture lives in the unit box: θ is mapped to u = (θ − low) / (high − low) before
EM and samples are mapped back, so its covariance regularisation (`GMMConfig.reg_covar`,
`SUCCESS_GMM`) is a share of the box width squared whatever the units or size of the box
(an absolute 1e-6 m² is a 1 mm floor on every component's std: 5 % of a ±1 cm box and
all of a ±0.5 mm one).

With fewer than d + 1 successful θ (`MIN_SUCCESSES` = 4 for θ in 3-D) a
full-covariance mixture is not defined; the sampler then falls back to the uniform box (and says so through
`DeploymentModel.usable`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from refinery_jax.envs.samplers import Sampler, uniform_box
from refinery_jax.success_models import DeploymentConfig, GMMConfig, GMMState, fit_success_gmm, make_deployment_sampler

MIN_SUCCESSES = 4  # a full covariance needs d + 1 points: 4 for θ in 3-D (the check uses d + 1)
# EM in the unit box with every component's std floored at 5 % of the box width (reg_covar is a
# variance): a narrower component fits which few trials happened to succeed, and BIC rewards
# such collapsed components. (The floor the old absolute 1e-6 m² gave on the default ±1 cm box.)
SUCCESS_GMM = GMMConfig(reg_covar=0.05 ** 2)


@struct.dataclass
class DeploymentModel:
    gmm: GMMState             # over u = (θ − box_low) / (box_high − box_low)
    box_low: jax.Array        # [d] the box θ was drawn from (original units)
    box_high: jax.Array       # [d]
    fit_inits: jax.Array      # [N, d] θ evaluated to fit the GMM (never reused for reporting)
    fit_success: jax.Array    # [N] bool
    num_successes: jax.Array  # [] int32
    usable: jax.Array         # [] bool: enough successes for the GMM (else the sampler is uniform)


def fit_deployment(key: jax.Array, evaluate: Callable, policy, low, high, num_inits: int = 1000,
                   gmm_config: GMMConfig = SUCCESS_GMM) -> DeploymentModel:
    """Algorithm 2, lines 1–4: N uniform θ → evaluate (deterministic) → GMM on the successes."""
    k_inits, k_eval, k_gmm = jax.random.split(key, 3)
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
    inits = jax.random.uniform(k_inits, (num_inits, low.shape[0]), minval=low, maxval=high)
    result = evaluate(policy, inits, k_eval)
    return fit_success_model(k_gmm, result.inits, result.success, low, high, gmm_config)  # the θ reached


def fit_success_model(key: jax.Array, inits: jax.Array, success: jax.Array, low, high,
                      gmm_config: GMMConfig = SUCCESS_GMM) -> DeploymentModel:
    """Algorithm 2, line 4: the GMM of the successful θ among evaluated `inits` [N, d] drawn from
    the box [low, high] (d = 3 per stage; `sequence.fit_joint_model` uses whole chains). Usable
    with at least d + 1 successes. The same eagerly and under `jit`."""
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
    inits, success = jnp.asarray(inits, jnp.float32), jnp.asarray(success, bool)
    count = jnp.sum(success).astype(jnp.int32)
    enough = count >= inits.shape[1] + 1
    # fit on the successes; when there are too few, fit on all θ only so the arrays stay finite
    weights = jnp.where(enough, success.astype(jnp.float32), 1.0)
    gmm = fit_success_gmm(key, (inits - low) / (high - low), weights, gmm_config)
    return DeploymentModel(gmm=gmm, box_low=low, box_high=high, fit_inits=inits, fit_success=success,
                           num_successes=count, usable=enough)


def deployment_sampler(model: DeploymentModel, config: DeploymentConfig = DeploymentConfig()) -> Sampler:
    """Algorithm 2, lines 5–8, as `key -> init [d]`: a fresh selection per call, inside the model's
    box (uniform over it when the model is not usable)."""
    d = model.box_low.shape[-1]
    from_gmm = make_deployment_sampler(model.gmm, np.zeros(d, np.float32), np.ones(d, np.float32), config)
    uniform = uniform_box(model.box_low, model.box_high)

    def sample(key):
        theta = model.box_low + from_gmm(key) * (model.box_high - model.box_low)
        return jnp.where(model.usable, theta, uniform(key))

    return sample


def concentration(inits, low, high) -> dict:
    """How concentrated chosen initial conditions [N, d] are, relative to the uniform box ("_mm"
    entries are 1000 x θ: millimetres, and milliradians for θ_yaw)."""
    inits, low, high = np.asarray(inits, np.float64), np.asarray(low, np.float64), np.asarray(high, np.float64)
    std = inits.std(axis=0)
    uniform_std = (high - low) / np.sqrt(12.0)
    centre = inits.mean(axis=0)
    return {
        "mean_mm": (1000 * centre).tolist(),
        "std_mm": (1000 * std).tolist(),
        "std_over_uniform_std": (std / uniform_std).tolist(),  # 1 = as spread as uniform, 0 = one point
        "mean_distance_to_centroid_mm": float(1000 * np.linalg.norm(inits - centre, axis=1).mean()),
        "distinct_fraction": float(len(np.unique(np.round(inits, 7), axis=0)) / len(inits)),
    }
