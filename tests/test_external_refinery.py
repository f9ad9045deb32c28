"""Refinery over a simulator it does not own (`refinery.external`), and the project's tasks as
a Gymnasium vector environment (`interop.gymnasium_env`, needs the interop extra)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.refinery.external import (deploy_external, draw_starts, fit_deployment_external,
                                            propose_finetuning_starts)
from refinery_jax.success_models import ProposalConfig

LOW, HIGH = np.array([-0.01, -0.01, 0.02]), np.array([0.01, 0.01, 0.04])


def _corner_evaluator(inits):
    """An outside simulator whose policy succeeds only from the low-x third of the box."""
    return np.asarray(inits)[:, 0] < LOW[0] + (HIGH[0] - LOW[0]) / 3


def test_algorithm_2_on_an_outside_evaluator_starts_where_it_succeeds():
    # (one number of trials throughout: one compiled GMM fit and one sampler)
    result = deploy_external(jax.random.key(0), _corner_evaluator, LOW, HIGH, fit_trials=300, trials=300)
    assert result["usable"] and result["fit_successes"] > 50
    assert abs(result["uniform"] - 1 / 3) < 0.08 and result["gmm"] > 0.8
    # no successes at all: the sampler says so and falls back to the uniform box
    never = fit_deployment_external(jax.random.key(3), lambda x: np.zeros(len(x), bool), LOW, HIGH, 300)
    assert not bool(never.usable) and int(never.num_successes) == 0
    starts = draw_starts(jax.random.key(4), never, 300)
    assert starts.shape == (300, 3) and np.all(starts >= LOW - 1e-7) and np.all(starts <= HIGH + 1e-7)
    assert abs(float(np.mean(_corner_evaluator(starts))) - 1 / 3) < 0.08  # uniform


def test_finetuning_proposals_go_where_the_policy_fails():
    inits = np.asarray(jax.random.uniform(jax.random.key(5), (200, 3), minval=LOW, maxval=HIGH))
    success = ~_corner_evaluator(inits) | (inits[:, 0] > 0)  # fails only in the middle third of x
    proposals = propose_finetuning_starts(jax.random.key(6), inits, success, LOW, HIGH, ProposalConfig(q=16))
    assert proposals.shape == (16, 3) and np.all(proposals >= LOW - 1e-7) and np.all(proposals <= HIGH + 1e-7)
    in_failing = (proposals[:, 0] > LOW[0]) & (proposals[:, 0] < 0.002)  # the failing band, with a margin
    assert in_failing.mean() > 0.5
    with pytest.raises(ValueError, match="inits must be"):
        propose_finetuning_starts(jax.random.key(6), inits, success[:10], LOW, HIGH)


def test_bad_evaluators_and_boxes_are_refused():
    with pytest.raises(ValueError, match="low < high"):
        fit_deployment_external(jax.random.key(0), _corner_evaluator, HIGH, LOW, 10)
    with pytest.raises(ValueError, match="evaluator returned shape"):
        fit_deployment_external(jax.random.key(0), lambda x: np.zeros(3, bool), LOW, HIGH, 10)


# ---------------------------------------------------------------------------- Gymnasium


def _toward_goal(obs, xp=np):
    """A policy anyone could write on the observation: move the fingertip to the observed goal."""
    from refinery_jax.envs.assembly_env import observation_slice

    step = xp.clip(obs[..., observation_slice("goal_minus_fingertip")] / 0.01, -1.0, 1.0)
    return xp.concatenate([step, xp.zeros(step.shape[:-1] + (3,), step.dtype)], axis=-1)


def test_gymnasium_env_runs_the_projects_episodes_and_algorithm_2():
    pytest.importorskip("gymnasium", reason="the interop extra is not installed (pip install -e '.[interop]')")
    from refinery_jax.envs.assembly_env import EnvConfig
    from refinery_jax.envs.episodes import memoryless
    from refinery_jax.evaluation import make_evaluate_actor
    from refinery_jax.interop.gymnasium_env import AssemblyVectorEnv
    from refinery_jax.refinery.external import gym_evaluator

    n = 16
    venv = AssemblyVectorEnv(EnvConfig(task="square_peg_loose", episode_seconds=1.0), n)
    assert venv.observation_space.shape == (n, venv.env.observation_size) and venv.action_space.shape == (n, 6)
    inits = np.asarray(jax.random.uniform(jax.random.key(7), (n, 3), minval=venv.theta_low, maxval=venv.theta_high))
    # the same episodes (θ and nuisance keys) through the project's own jitted evaluation
    key = jax.random.key(8)
    jax_result = make_evaluate_actor(venv.env, memoryless(lambda params, state, k: _toward_goal(state.obs, jnp)))(
        None, inits, key)
    reset_keys = jax.vmap(lambda k: jax.random.split(k)[0])(jax.random.split(key, n))
    obs, info = venv.reset(options={"init": inits, "keys": reset_keys})
    np.testing.assert_allclose(info["init"], np.asarray(jax_result.inits), atol=1e-6)
    for _ in range(venv.env.config.episode_steps):
        obs, reward, terminated, truncated, info = venv.step(_toward_goal(obs))
    assert np.all(truncated) and 0 < info["success"].sum() < n  # a policy that succeeds sometimes
    np.testing.assert_array_equal(info["success"], np.asarray(jax_result.success))
    # Algorithm 2 through the Gymnasium interface (θ count not a multiple of the batch: padded)
    result = deploy_external(jax.random.key(9), gym_evaluator(venv, _toward_goal), venv.theta_low, venv.theta_high,
                             fit_trials=32, trials=24)
    assert result["fit_successes"] > 0 and result["gmm_outcomes"].shape == (24,)
    with pytest.raises(ValueError, match="options\\['init'\\]"):
        venv.reset(options={"init": inits[:3]})
