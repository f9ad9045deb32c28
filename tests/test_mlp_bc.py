"""Behaviour cloning with an MLP (`imitation.mlp_bc`): it fits a deterministic teacher, and
where the teacher is bimodal it regresses the mean (the closed-form minimiser of the MSE),
which is the failure the diffusion base avoids."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.imitation.mlp_bc import mlp_actor, train_mlp_bc


class _Obs(NamedTuple):  # what an Actor reads of the environment state
    obs: jax.Array


def _act(policy, obs):
    actor = mlp_actor(policy.act_norm.low.shape[0], hidden=(64, 64))
    return jax.vmap(lambda o: actor.act(policy, actor.start(policy), _Obs(o), None)[1])(obs)


@pytest.fixture(scope="module")
def fitted():
    key = jax.random.key(0)
    obs = jax.random.uniform(key, (4000, 3), minval=-2.0, maxval=2.0)
    # a smooth teacher in the action box's interior, plus one bimodal dimension: ±0.8 at random
    sign = jnp.where(jax.random.bernoulli(jax.random.key(1), 0.5, (4000,)), 1.0, -1.0)
    actions = jnp.stack([0.4 * jnp.sin(obs[:, 0]), 0.3 * obs[:, 1] - 0.2 * obs[:, 2], 0.8 * sign], axis=-1)
    policy, losses = train_mlp_bc(obs, actions, jax.random.key(2), 1500, hidden=(64, 64))
    return obs, actions, policy, losses


def test_mlp_bc_fits_a_deterministic_teacher_and_averages_a_bimodal_one(fitted):
    obs, actions, policy, losses = fitted
    assert float(losses[-100:].mean()) < float(losses[:100].mean())
    predicted = np.asarray(_act(policy, obs[:500]))
    error = np.abs(predicted[:, :2] - np.asarray(actions[:500, :2]))
    assert np.all(error.mean(axis=0) < 0.04) and error.max() < 0.25, error.mean(axis=0)  # (the coin's label noise)
    # the MSE minimiser of a ±0.8 coin is 0: the MLP lands between the modes, on neither
    assert np.mean(np.abs(predicted[:, 2])) < 0.08 and np.max(np.abs(predicted[:, 2])) < 0.3


def test_mlp_bc_refuses_bad_shapes():
    with pytest.raises(ValueError, match="same M"):
        train_mlp_bc(jnp.zeros((5, 3)), jnp.zeros((4, 2)), jax.random.key(0), 10)
    with pytest.raises(ValueError, match="positive"):
        train_mlp_bc(jnp.zeros((5, 3)), jnp.zeros((5, 2)), jax.random.key(0), 0)
