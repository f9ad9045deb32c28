"""The simplest behaviour-cloning baseline: an MLP from observation to one action, no chunks,
no diffusion (the "BC with an MLP" row of `experiments/residual.py`).

Same data and normalisation as the diffusion base (`diffusion.policy.Normalizer`, min-max to
[-1, 1], stored with the policy), mean squared error on the normalised action, Adam with
cosine decay; the action is `tanh` of the last layer, so it stays inside the demonstrated
box. It regresses the mean of the teacher's actions at each observation, which is what a
multi-modal teacher (several ways around the socket) punishes, and why ResiP starts from a
diffusion model instead.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from refinery_jax.diffusion.policy import Normalizer, fit_normalizer
from refinery_jax.envs.episodes import Actor


class ActionMLP(nn.Module):
    action_size: int
    hidden: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs_u):
        x = obs_u
        for width in self.hidden:
            x = nn.elu(nn.Dense(width)(x))
        return jnp.tanh(nn.Dense(self.action_size)(x))


@struct.dataclass
class MLPPolicy:
    params: dict
    obs_norm: Normalizer
    act_norm: Normalizer


def init_mlp_policy(key, obs_size: int, action_size: int, hidden: Sequence[int] = (256, 256)) -> MLPPolicy:
    """Fresh weights and empty normalisers (the shapes of a trained policy, to restore one)."""
    params = ActionMLP(action_size, tuple(hidden)).init(key, jnp.zeros((1, obs_size)))
    empty = lambda d: Normalizer(low=jnp.zeros(d), high=jnp.zeros(d))  # noqa: E731
    return MLPPolicy(params=params, obs_norm=empty(obs_size), act_norm=empty(action_size))


def train_mlp_bc(obs, actions, key, num_updates: int, hidden: Sequence[int] = (256, 256),
                 learning_rate: float = 1e-3, batch_size: int = 256) -> tuple[MLPPolicy, jax.Array]:
    """Fit the MLP to (obs [M, O], actions [M, A]) pairs; returns (MLPPolicy, losses [num_updates]).
    Minibatches are drawn with replacement, all updates in one jitted scan."""
    obs, actions = jnp.asarray(obs, jnp.float32), jnp.asarray(actions, jnp.float32)
    if obs.ndim != 2 or actions.ndim != 2 or obs.shape[0] != actions.shape[0]:
        raise ValueError(f"need obs [M, O] and actions [M, A] with the same M; got {obs.shape} and {actions.shape}")
    if num_updates < 1:
        raise ValueError(f"num_updates must be positive, got {num_updates}")
    obs_norm, act_norm = fit_normalizer(obs), fit_normalizer(actions)
    obs_u, act_u = obs_norm.to_unit(obs), act_norm.to_unit(actions)
    net = ActionMLP(actions.shape[-1], tuple(hidden))
    k_init, k_train = jax.random.split(key)
    params = init_mlp_policy(k_init, obs.shape[-1], actions.shape[-1], hidden).params
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_updates))

    def body(carry, key):
        params, opt_state = carry
        pick = jax.random.randint(key, (batch_size,), 0, obs_u.shape[0])
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((net.apply(p, obs_u[pick]) - act_u[pick]) ** 2))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.jit(lambda p, k: jax.lax.scan(body, (p, optimizer.init(p)),
                                                            jax.random.split(k, num_updates)))(params, k_train)
    return MLPPolicy(params=params, obs_norm=obs_norm, act_norm=act_norm), losses


def mlp_actor(action_size: int, hidden: Sequence[int] = (256, 256)) -> Actor:
    """The MLP policy as an episode-loop `Actor` (params: `MLPPolicy`; no carry)."""
    net = ActionMLP(action_size, tuple(hidden))

    def act(policy: MLPPolicy, carry, state, key):
        return carry, policy.act_norm.from_unit(net.apply(policy.params, policy.obs_norm.to_unit(state.obs)))

    return Actor(start=lambda policy: jnp.zeros(()), act=act)
