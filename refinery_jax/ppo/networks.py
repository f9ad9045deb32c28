"""Actor and critic (Flax) and the Gaussian policy (distrax).

The actor reads the (normalised) policy observation, optionally through a memory of
the episode so far; the critic is an MLP on the privileged observation when the critic
is asymmetric (as AutoMate's). The log-std is a learned state-independent vector
(`sigma="fixed"`, AutoMate's) or a linear head on the actor's last hidden layer
(`sigma="linear"`, Factory's).

Memory (`ActorCritic.memory`):
- "none": an MLP on the current observation;
- "lstm": LSTM layers before the MLP (AutoMate's actor: LSTM 256 x 2, then MLP), optionally
  with a LayerNorm on the last layer's output (`memory_layer_norm`, Factory's);
- "history": the MLP reads the last `memory_size` observations, stacked.

Acting is one step at a time, `policy(obs, carry) -> (carry, mean, log_std)`; whoever
runs episodes starts each with `initial_carry` (zeros) and carries it along. PPO's loss
replays a rollout's steps from the carry it started with (`policy_sequence`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from refinery_jax.envs.episodes import Actor
from refinery_jax.ppo.normalization import RunningStats, normalize

if TYPE_CHECKING:
    from refinery_jax.ppo.base import BasePolicy

ACTIVATIONS = {"elu": nn.elu, "relu": nn.relu, "tanh": nn.tanh, "silu": nn.silu}
MEMORIES = ("none", "lstm", "history")
SIGMAS = ("fixed", "linear")
LAYER_NORM_EPSILON = 1e-5  # torch's default (Flax's is 1e-6), so rl_games' networks port exactly


class MLP(nn.Module):
    hidden: Sequence[int]
    out: int
    activation: str = "elu"
    head_scale: float = 1.0
    sigma_head: bool = False  # also a linear head "sigma" [out] on the last hidden layer: returns (head, sigma)

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2.0)))(x))
        head = nn.Dense(self.out, kernel_init=nn.initializers.orthogonal(self.head_scale))(x)
        if not self.sigma_head:
            return head
        # starts state-independent (zero kernel); the trainer sets the bias to the initial log-std
        return head, nn.Dense(self.out, kernel_init=nn.initializers.zeros, name="sigma")(x)


class ActorCritic(nn.Module):
    action_size: int
    actor_hidden: Sequence[int]
    critic_hidden: Sequence[int]
    activation: str = "elu"
    memory: str = "none"
    memory_size: int = 128     # LSTM width, or observations in the history
    memory_layers: int = 1     # LSTM layers
    actor_head_scale: float = 0.01  # orthogonal gain of the actor's last layer (0: a residual starts at zero)
    memory_layer_norm: bool = False  # LayerNorm on the LSTM's output (Factory's actor)
    sigma: str = "fixed"       # log-std: "fixed" (a learned vector) or "linear" (a head on the last hidden layer)

    def setup(self):
        if self.memory not in MEMORIES:
            raise ValueError(f"unknown memory {self.memory!r}; choose one of {MEMORIES}")
        if self.sigma not in SIGMAS:
            raise ValueError(f"unknown sigma {self.sigma!r}; choose one of {SIGMAS}")
        if self.memory_layer_norm and self.memory != "lstm":
            raise ValueError("memory_layer_norm needs memory='lstm'")
        self.actor = MLP(self.actor_hidden, self.action_size, self.activation, head_scale=self.actor_head_scale,
                         sigma_head=self.sigma == "linear")
        self.critic = MLP(self.critic_hidden, 1, self.activation, head_scale=1.0)
        if self.sigma == "fixed":
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_size,))
        if self.memory == "lstm":
            self.cells = [nn.OptimizedLSTMCell(self.memory_size) for _ in range(self.memory_layers)]
            if self.memory_layer_norm:
                self.memory_norm = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON)

    def __call__(self, obs, critic_obs, carry):
        carry, mean, log_std = self.policy(obs, carry)
        return mean, log_std, self.value(critic_obs)

    def policy(self, obs, carry):
        """One step. obs [..., d], carry (`initial_carry` of the same leading shape)
        -> (carry, mean [..., A], log_std: [A] when fixed, [..., A] when linear)."""
        if self.memory == "lstm":
            x, carry = obs, list(carry)
            for i, cell in enumerate(self.cells):
                carry[i], x = cell(carry[i], x)
            if self.memory_layer_norm:
                x = self.memory_norm(x)
            return (tuple(carry),) + self._heads(x)
        if self.memory == "history":  # carry: the previous memory_size - 1 observations, oldest first
            frames = jnp.concatenate([carry, obs[..., None, :]], axis=-2)
            return (frames[..., 1:, :],) + self._heads(frames.reshape(frames.shape[:-2] + (-1,)))
        return (carry,) + self._heads(obs)

    def _heads(self, x):
        """(mean, log_std) of the actor MLP on features x."""
        if self.sigma == "linear":
            return self.actor(x)
        return self.actor(x), self.log_std

    def value(self, critic_obs):
        """critic_obs [..., d_c] -> [...]."""
        return self.critic(critic_obs)[..., 0]


def initial_carry(model: ActorCritic, batch_shape: tuple, obs_size: int):
    """The memory at the start of an episode (zeros), for `batch_shape` environments."""
    if model.memory == "lstm":
        zeros = jnp.zeros(batch_shape + (model.memory_size,))
        return tuple((zeros, zeros) for _ in range(model.memory_layers))
    if model.memory == "history":
        return jnp.zeros(batch_shape + (model.memory_size - 1, obs_size))
    return jnp.zeros(batch_shape + (0,))


def restart_carry(carry, first: jax.Array):
    """Zero the memory of the environments whose episode starts now (first [...] bool)."""
    return jax.tree.map(lambda c: jnp.where(first.reshape(first.shape + (1,) * (c.ndim - first.ndim)), 0.0, c),
                        carry)


def policy_sequence(model: ActorCritic, params, obs: jax.Array, carry, first: jax.Array):
    """Replay T steps: obs [T, B, d], carry at step 0 [B, ...], first [T, B] (the step starts an
    episode: the memory restarts) -> (means [T, B, A], log_std [A], or [T, B, A] when linear)."""
    if model.memory == "none":  # nothing to carry: one batched call
        _, mean, log_std = model.apply(params, obs, carry, method=ActorCritic.policy)
        return mean, log_std

    def step(carry, inputs):
        o, f = inputs
        carry, mean, log_std = model.apply(params, o, restart_carry(carry, f), method=ActorCritic.policy)
        return carry, (mean, log_std)

    _, (means, log_std) = jax.lax.scan(step, carry, (obs, first))
    return means, (log_std[0] if model.sigma == "fixed" else log_std)


def action_distribution(mean: jax.Array, log_std: jax.Array) -> distrax.MultivariateNormalDiag:
    """Diagonal Gaussian over raw actions (the environment clips to [-1, 1])."""
    return distrax.MultivariateNormalDiag(mean, jnp.broadcast_to(jnp.exp(log_std), mean.shape))


@struct.dataclass
class Policy:
    """What acting needs: network parameters and the observation statistics."""

    params: dict
    obs_stats: RunningStats
    base_params: Any = None  # a residual's frozen base (`ppo.base`); None for a plain policy


def policy_action(model: ActorCritic, policy: Policy, carry, obs: jax.Array, key: jax.Array, deterministic,
                  obs_clip: float = 5.0):
    """One step of acting: (carry, action [..., A]), the mean (deterministic) or a sample."""
    carry, mean, log_std = model.apply(policy.params, normalize(policy.obs_stats, obs, obs_clip), carry,
                                       method=ActorCritic.policy)
    action = jnp.where(deterministic, mean, action_distribution(mean, log_std).sample(seed=key))
    return carry, action


def policy_actor(model: ActorCritic, obs_size: int, obs_clip: float = 5.0, base: Optional[BasePolicy] = None) -> Actor:
    """The policy as an `envs.episodes.Actor` whose params are `(Policy, deterministic [] bool)`:
    the mean action when deterministic, a sample otherwise.

    base: the frozen base a residual was trained on (`make_trainer(..., base=...)`, with its
    per-environment `actor`): the action is then base + `base.scale` x the residual's action
    on [observation, base action], the base acting with `Policy.base_params`. `obs_size` is the
    environment's."""
    if base is None:
        def act(params, carry, state, key):
            policy, deterministic = params
            return policy_action(model, policy, carry, state.obs, key, deterministic, obs_clip)

        return Actor(start=lambda params: initial_carry(model, (), obs_size), act=act)
    if base.actor is None:
        raise ValueError("this base has no per-environment actor (BasePolicy.actor), so it cannot act in episodes")

    def start(params):
        policy, _ = params
        return base.actor.start(policy.base_params), initial_carry(model, (), obs_size + base.action_size)

    def act_with_base(params, carry, state, key):
        policy, deterministic = params
        base_carry, residual_carry = carry
        k_base, k_residual = jax.random.split(key)
        base_carry, base_action = base.actor.act(policy.base_params, base_carry, state, k_base)
        x = jnp.concatenate([state.obs, base_action], axis=-1)
        residual_carry, correction = policy_action(model, policy, residual_carry, x, k_residual, deterministic, obs_clip)
        return (base_carry, residual_carry), base_action + base.scale * correction

    return Actor(start=start, act=act_with_base)
