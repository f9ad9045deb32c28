"""Residual PPO on a frozen base (ResiP's scheme, `ppo.base`): the actor sees the base's
action, starts at a zero correction, the environment gets base + scale * residual, and the
base's per-environment state restarts with every episode."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ppo import SMOKE, SMOKE_HP

from refinery_jax.ppo import default_hyperparams, make_trainer
from refinery_jax.ppo.base import BasePolicy, memoryless_base
from refinery_jax.ppo.networks import ActorCritic

PUSH = jnp.array([0.0, 0.0, -1.0, 0.0, 0.0, 0.0])  # solves the smoke task on its own (straight down)


def _counting_base(scale):
    """Pushes down scaled by its parameter; its carry counts the steps since the episode began."""
    return BasePolicy(action_size=6, start=lambda batch: jnp.zeros(batch, jnp.int32),
                      act=lambda params, carry, obs, key: (jnp.broadcast_to(params * PUSH, obs.shape[:-1] + (6,)),
                                                           carry + 1),
                      restart=lambda carry, done: jnp.where(done, 0, carry), scale=scale)


@pytest.fixture(scope="module")
def residual():
    trainer = make_trainer(SMOKE, base=_counting_base(0.1))
    hp = default_hyperparams(SMOKE, **SMOKE_HP)
    state = jax.jit(trainer.init)(jax.random.key(0), hp, jnp.asarray(1.0))
    after, metrics = jax.jit(trainer.update)(state)
    return trainer, state, after, metrics


def test_residual_starts_at_zero_and_the_base_acts(residual):
    trainer, state, after, metrics = residual
    obs_size = trainer.env.observation_size
    x = jax.random.normal(jax.random.key(1), (5, obs_size + 6))
    _, mean, _ = trainer.model.apply(state.params, x, jnp.zeros((5, 0)), method=ActorCritic.policy)
    np.testing.assert_array_equal(np.asarray(mean), 0.0)  # zero-initialised head: no correction yet
    # the base alone inserts the plug: every episode of the first rollout succeeds
    assert int(metrics.episodes) == SMOKE.num_envs and float(metrics.success_rate) == 1.0
    # the actor's input ends with the base action (its running mean is the push)
    np.testing.assert_allclose(np.asarray(after.obs_stats.mean[obs_size:]), np.asarray(PUSH), atol=1e-6)


def test_base_state_restarts_with_each_episode(residual):
    _, state, after, _ = residual
    assert np.all(np.asarray(state.base_carry) == 1)   # one action taken at init (for the statistics)
    # lockstep 15-step episodes in a 15-step rollout: every episode ended at the last step
    assert np.all(np.asarray(after.base_carry) == 0)


def test_the_base_is_a_traced_input_and_its_scale_matters():
    """A base that does nothing leaves the smoke task unsolved: the success came from the base."""
    trainer = make_trainer(SMOKE, base=_counting_base(0.1))
    hp = default_hyperparams(SMOKE, **SMOKE_HP)
    state = jax.jit(trainer.init)(jax.random.key(0), hp, jnp.asarray(0.0))
    _, metrics = jax.jit(trainer.update)(state)
    assert float(metrics.success_rate) < 0.2
    with pytest.raises(ValueError, match="base_params"):
        trainer.init(jax.random.key(0), hp)
    with pytest.raises(ValueError, match="acts in 3 dimensions"):
        make_trainer(SMOKE, base=memoryless_base(lambda p, o: o[..., :3], 3))
