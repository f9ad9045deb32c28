"""Algorithm 2: deployment-time selection of initial conditions with a success GMM.

Offline: evaluate the policy from N uniform θ, fit a GMM (components chosen by BIC)
to the successful ones. Online: every episode samples M candidates from the GMM and
starts from the one of highest density (`DeploymentConfig(selection="argmax")`, the
paper) or from a random one (`"random"`, what Refinery's public code does). The
result is a reset distribution `key -> init`, so `evaluate` and PPO take it as is.

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

MIN_SUCCESSES = 4  # a full covariance in 3-D needs d + 1 points


@struct.dataclass
class DeploymentModel:
    gmm: GMMState
    fit_inits: jax.Array      # [N, 3] θ evaluated to fit the GMM (never reused for reporting)
    fit_success: jax.Array    # [N] bool
    num_successes: jax.Array  # [] int32
    usable: jax.Array         # [] bool: enough successes for the GMM (else the sampler is uniform)


def fit_deployment(key: jax.Array, evaluate: Callable, policy, low, high, num_inits: int = 1000,
                   gmm_config: GMMConfig = GMMConfig()) -> DeploymentModel:
    """Algorithm 2, lines 1–4: N uniform θ → evaluate (deterministic) → GMM on the successes."""
    k_inits, k_eval, k_gmm = jax.random.split(key, 3)
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
    inits = jax.random.uniform(k_inits, (num_inits, low.shape[0]), minval=low, maxval=high)
    return fit_success_model(k_gmm, inits, evaluate(policy, inits, k_eval).success, gmm_config)


def fit_success_model(key: jax.Array, inits: jax.Array, success: jax.Array,
                      gmm_config: GMMConfig = GMMConfig()) -> DeploymentModel:
    """Algorithm 2, line 4: the GMM of the successful θ among evaluated `inits` [N, d] (d = 3 per
    stage; `sequence.fit_joint_model` uses whole chains). Usable with at least d + 1 successes."""
    count = jnp.sum(success).astype(jnp.int32)
    enough = count >= inits.shape[1] + 1
    # fit on the successes; when there are too few, fit on all θ only so the arrays stay finite
    weights = jnp.where(enough, success.astype(jnp.float32), 1.0)
    gmm = fit_success_gmm(key, inits, weights, gmm_config)
    return DeploymentModel(gmm=gmm, fit_inits=inits, fit_success=success, num_successes=count,
                           usable=enough)


def deployment_sampler(model: DeploymentModel, low, high, config: DeploymentConfig = DeploymentConfig()) -> Sampler:
    """Algorithm 2, lines 5–8, as `key -> init [3]`: a fresh selection per call, inside the box."""
    from_gmm = make_deployment_sampler(model.gmm, low, high, config)
    uniform = uniform_box(low, high)

    def sample(key):
        return jnp.where(model.usable, from_gmm(key), uniform(key))

    return sample


def concentration(inits, low, high) -> dict:
    """How concentrated chosen initial conditions [N, 3] are, relative to the uniform box."""
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
