"""Refinery over a simulator it does not own: the GP and GMM steps with NumPy in and out.

All the loop needs of a simulator is an evaluator

    evaluate(inits [N, d] numpy) -> success [N] bool numpy

(run one episode from each initial condition θ with the policy being refined). `gym_evaluator`
builds one from any Gymnasium vector environment whose `reset(options={"init": θ})` places
the episodes, e.g. `interop.gymnasium_env.AssemblyVectorEnv` (this project's tasks on C
MuJoCo) or an Isaac Lab environment wrapped the same way (its tensors go to NumPy, or
through DLPack, at the evaluator's boundary). Then:

- Algorithm 2 (deployment): `fit_deployment_external` evaluates N uniform θ and fits the
  success GMM; `draw_starts` samples where to start (`deploy_external` does both and reports
  success from GMM starts against uniform starts on the same episode budget).
- Algorithm 1 (fine-tuning): `propose_finetuning_starts` fits the GP to evaluated (θ,
  success) and returns the q θ the acquisition proposes; the simulator's own trainer resets
  its episodes there for a round of fine-tuning, evaluates again, and asks again.

The models are the ones the JAX experiments use (`refinery.deployment`, `success_models`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import jax
import numpy as np

from refinery_jax.refinery.deployment import DeploymentModel, deployment_sampler, fit_deployment
from refinery_jax.success_models import ProposalConfig, fit_gp, propose

Evaluator = Callable[[np.ndarray], np.ndarray]


def gym_evaluator(vector_env, policy: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> Evaluator:
    """An evaluator from a Gymnasium vector environment (reset takes options["init"]; episodes
    of a fixed length, success in info["success"] on the last step) and a policy
    obs [num_envs, O] -> actions [num_envs, A]. θ beyond one batch run in successive batches
    (the last one padded)."""
    n_envs = vector_env.num_envs
    calls = [0]

    def evaluate(inits: np.ndarray) -> np.ndarray:
        inits = np.asarray(inits, np.float32)
        out = []
        for start in range(0, len(inits), n_envs):
            batch = inits[start: start + n_envs]
            padded = np.concatenate([batch, np.repeat(batch[-1:], n_envs - len(batch), axis=0)])
            obs, _ = vector_env.reset(seed=seed + calls[0], options={"init": padded})
            calls[0] += 1
            while True:
                obs, _, _, truncated, info = vector_env.step(policy(obs))
                if np.all(truncated):
                    success = np.asarray(info["success"], bool)
                    break
            out.append(success[: len(batch)])
        return np.concatenate(out)

    return evaluate


def fit_deployment_external(key: jax.Array, evaluate: Evaluator, low, high, num_inits: int = 1000) -> DeploymentModel:
    """Algorithm 2, lines 1–4 (`refinery.deployment.fit_deployment`) with an outside evaluator:
    `num_inits` uniform θ in [low, high], evaluated there, the GMM of the successes."""
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    if low.shape != high.shape or low.ndim != 1 or not np.all(low < high):
        raise ValueError(f"low {low} and high {high} must be [d] with low < high")

    def outside(_policy, inits, _key):  # fit_deployment's evaluate(policy, inits, key), θ crossing as NumPy
        success = np.asarray(evaluate(np.asarray(inits)), bool)
        if success.shape != (num_inits,):
            raise ValueError(f"the evaluator returned shape {success.shape}, expected ({num_inits},)")
        return SimpleNamespace(inits=inits, success=success)

    return fit_deployment(key, outside, None, low, high, num_inits)


def draw_starts(key: jax.Array, model: DeploymentModel, n: int) -> np.ndarray:
    """Algorithm 2, lines 5–8: n starts [n, d] (uniform over the box when the model had too few successes)."""
    return np.asarray(jax.vmap(deployment_sampler(model))(jax.random.split(key, n)))


def deploy_external(key: jax.Array, evaluate: Evaluator, low, high, fit_trials: int = 1000,
                    trials: int = 1000) -> dict:
    """Algorithm 2 end to end on an outside simulator, with a uniform-start control on the same
    number of fresh episodes: {"uniform", "gmm"} success rates, the GMM's fit successes, usable."""
    k_fit, k_gmm, k_uniform = jax.random.split(key, 3)
    model = fit_deployment_external(k_fit, evaluate, low, high, fit_trials)
    gmm_starts = draw_starts(k_gmm, model, trials)
    uniform_starts = np.asarray(jax.random.uniform(k_uniform, (trials, len(low)), minval=np.asarray(low, np.float32),
                                                   maxval=np.asarray(high, np.float32)))
    gmm_success, uniform_success = evaluate(gmm_starts), evaluate(uniform_starts)
    return {"uniform": float(np.mean(uniform_success)), "gmm": float(np.mean(gmm_success)),
            "fit_successes": int(model.num_successes), "usable": bool(model.usable),
            "gmm_outcomes": np.asarray(gmm_success), "uniform_outcomes": np.asarray(uniform_success)}


def propose_finetuning_starts(key: jax.Array, inits, success, low, high,
                              config: ProposalConfig = ProposalConfig(q=64)) -> np.ndarray:
    """Algorithm 1's choice of where to fine-tune: the GP of success over evaluated θ [N, d] and
    outcomes [N], and the `config.q` θ its acquisition proposes [q, d]."""
    inits, success = np.asarray(inits, np.float32), np.asarray(success, np.float32)
    if inits.ndim != 2 or success.shape != (inits.shape[0],):
        raise ValueError(f"inits must be [N, d] and success [N]; got {inits.shape} and {success.shape}")
    k_fit, k_propose = jax.random.split(key)
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return np.asarray(propose(k_propose, fit_gp(k_fit, inits, success, low, high), low, high, config))
