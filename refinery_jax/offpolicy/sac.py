"""Soft actor-critic as RLPD runs it (Ball et al. 2023): SPARR's residual learner.

What makes it RLPD rather than plain SAC (facts: shared/next-wave-notes.md §2):
- an ensemble of `num_critics` Q-networks (default 10) with LayerNorm after each hidden
  Dense; the TD target takes the minimum over a random subset of `num_min_critics` (2);
- `utd` critic updates per environment step (update-to-data ratio, default 20), done as
  one jitted `lax.scan` over the slices of one batch of `utd x batch_size` rows, each
  followed by the Polyak update of the target critics; then one actor and one temperature
  step on the last slice, the actor maximising the ensemble's mean Q;
- the batch is half demonstrations, half online experience (`offpolicy.replay`).

The actor is a tanh-squashed Gaussian; `mask` in a transition is 0 only where the episode
really ended (success), so a time limit still bootstraps. Everything is a pure function of
`SACState` and explicit keys: vmap it over seeds.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

LOG_STD_RANGE = (-20.0, 2.0)  # the actor's log-std is clipped to this (RLPD's tanh-Gaussian)


@dataclasses.dataclass(frozen=True)
class SACConfig:
    hidden: tuple[int, ...] = (256, 256)
    num_critics: int = 10
    num_min_critics: int = 2          # the TD target's minimum is over this many random critics
    critic_layer_norm: bool = True
    learning_rate: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005                # Polyak rate of the target critics
    init_temperature: float = 1.0
    target_entropy: Optional[float] = None  # None: -|A| / 2
    utd: int = 20                     # critic updates per environment step
    batch_size: int = 256             # rows per critic update (half demonstrations, half online)

    def __post_init__(self):
        if not 1 <= self.num_min_critics <= self.num_critics:
            raise ValueError(f"num_min_critics must be in [1, num_critics = {self.num_critics}], "
                             f"got {self.num_min_critics}")
        if self.utd < 1 or self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"utd must be >= 1 and batch_size even (half demonstrations, half online), "
                             f"got utd={self.utd}, batch_size={self.batch_size}")
        if not 0.0 < self.tau <= 1.0 or not 0.0 <= self.discount < 1.0:
            raise ValueError(f"need 0 < tau <= 1 and 0 <= discount < 1, got tau={self.tau}, "
                             f"discount={self.discount}")


class Transition(NamedTuple):
    """One step of experience (any leading batch dimensions)."""

    obs: jax.Array          # [O] the actor's input
    critic_obs: jax.Array   # [C] the critics' input (may hold more than the actor's)
    action: jax.Array       # [A] the actor's action (the residual)
    reward: jax.Array       # []
    mask: jax.Array         # [] 0 where the episode ended for real (no bootstrap), else 1
    next_obs: jax.Array
    next_critic_obs: jax.Array


class MLP(nn.Module):
    hidden: Sequence[int]
    out: int
    layer_norm: bool = False  # LayerNorm after each hidden Dense, before the activation (RLPD's critics)

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = nn.relu(x)
        return nn.Dense(self.out)(x)


class Critics(nn.Module):
    """`num` independent Q(s, a) networks: [num, ...] values, one parameter set each."""

    hidden: Sequence[int]
    num: int
    layer_norm: bool = True

    @nn.compact
    def __call__(self, obs, action):
        ensemble = nn.vmap(MLP, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                           out_axes=0, axis_size=self.num)
        return ensemble(self.hidden, 1, self.layer_norm)(jnp.concatenate([obs, action], axis=-1))[..., 0]


class Actor(nn.Module):
    hidden: Sequence[int]
    action_size: int

    @nn.compact
    def __call__(self, obs) -> tuple[jax.Array, jax.Array]:
        """The Gaussian's (mean, log-std), before the tanh."""
        mean, log_std = jnp.split(MLP(self.hidden, 2 * self.action_size)(obs), 2, axis=-1)
        return mean, jnp.clip(log_std, *LOG_STD_RANGE)


def tanh_gaussian(mean: jax.Array, log_std: jax.Array) -> distrax.Distribution:
    return distrax.Transformed(distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)),
                               distrax.Block(distrax.Tanh(), ndims=1))


@struct.dataclass
class SACState:
    actor: dict
    critics: dict
    target_critics: dict
    log_temperature: jax.Array
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    temperature_opt: optax.OptState


class SAC:
    """The networks and update rule for one observation/action layout (static; build once)."""

    def __init__(self, config: SACConfig, obs_size: int, critic_obs_size: int, action_size: int):
        self.config = config
        self.obs_size, self.critic_obs_size, self.action_size = obs_size, critic_obs_size, action_size
        self.actor = Actor(config.hidden, action_size)
        self.critics = Critics(config.hidden, config.num_critics, config.critic_layer_norm)
        self.optimizer = optax.adam(config.learning_rate)
        self.target_entropy = (-action_size / 2.0 if config.target_entropy is None else config.target_entropy)

    def init(self, key: jax.Array) -> SACState:
        k_actor, k_critic = jax.random.split(key)
        actor = self.actor.init(k_actor, jnp.zeros(self.obs_size))
        critics = self.critics.init(k_critic, jnp.zeros(self.critic_obs_size), jnp.zeros(self.action_size))
        log_temperature = jnp.log(jnp.asarray(self.config.init_temperature, jnp.float32))
        return SACState(actor=actor, critics=critics, target_critics=critics, log_temperature=log_temperature,
                        actor_opt=self.optimizer.init(actor), critic_opt=self.optimizer.init(critics),
                        temperature_opt=self.optimizer.init(log_temperature))

    # ------------------------------------------------------------------ acting

    def policy(self, actor_params: dict, obs: jax.Array) -> distrax.Distribution:
        return tanh_gaussian(*self.actor.apply(actor_params, obs))

    def sample(self, state: SACState, obs: jax.Array, key: jax.Array) -> jax.Array:
        return self.policy(state.actor, obs).sample(seed=key)

    def mode(self, state: SACState, obs: jax.Array) -> jax.Array:
        """The deterministic action: tanh of the Gaussian's mean."""
        return jnp.tanh(self.actor.apply(state.actor, obs)[0])

    # ------------------------------------------------------------------ learning

    def td_target(self, state: SACState, batch: Transition, key: jax.Array) -> jax.Array:
        """r + γ mask (min over a random `num_min_critics` of the target critics of
        Q(s', a') - α log π(a'|s')), a' ~ π(s'): [B]."""
        k_action, k_subset = jax.random.split(key)
        next_action, next_log_prob = self.policy(state.actor, batch.next_obs).sample_and_log_prob(seed=k_action)
        next_q = self.critics.apply(state.target_critics, batch.next_critic_obs, next_action)  # [E, B]
        next_v = ensemble_minimum(next_q, k_subset, self.config.num_min_critics)
        next_v = next_v - jnp.exp(state.log_temperature) * next_log_prob
        return batch.reward + self.config.discount * batch.mask * next_v

    def critic_step(self, state: SACState, batch: Transition, key: jax.Array) -> tuple[SACState, jax.Array]:
        target = jax.lax.stop_gradient(self.td_target(state, batch, key))

        def loss(critics):
            q = self.critics.apply(critics, batch.critic_obs, batch.action)  # [E, B]
            return jnp.mean((q - target) ** 2)

        value, grads = jax.value_and_grad(loss)(state.critics)
        updates, critic_opt = self.optimizer.update(grads, state.critic_opt, state.critics)
        critics = optax.apply_updates(state.critics, updates)
        target_critics = optax.incremental_update(critics, state.target_critics, self.config.tau)
        return state.replace(critics=critics, target_critics=target_critics, critic_opt=critic_opt), value

    def actor_step(self, state: SACState, batch: Transition, key: jax.Array) -> tuple[SACState, dict]:
        """One actor step (maximise the ensemble's mean Q minus α log π) and one temperature step."""
        temperature = jnp.exp(state.log_temperature)

        def actor_loss(actor):
            action, log_prob = self.policy(actor, batch.obs).sample_and_log_prob(seed=key)
            q = self.critics.apply(state.critics, batch.critic_obs, action).mean(axis=0)
            return jnp.mean(temperature * log_prob - q), -jnp.mean(log_prob)

        (a_loss, entropy), grads = jax.value_and_grad(actor_loss, has_aux=True)(state.actor)
        updates, actor_opt = self.optimizer.update(grads, state.actor_opt, state.actor)
        actor = optax.apply_updates(state.actor, updates)

        def temperature_loss(log_temperature):
            return jnp.exp(log_temperature) * (entropy - self.target_entropy)

        t_grad = jax.grad(temperature_loss)(state.log_temperature)
        t_updates, temperature_opt = self.optimizer.update(t_grad, state.temperature_opt, state.log_temperature)
        state = state.replace(actor=actor, actor_opt=actor_opt, temperature_opt=temperature_opt,
                              log_temperature=optax.apply_updates(state.log_temperature, t_updates))
        return state, {"actor_loss": a_loss, "entropy": entropy, "temperature": temperature}

    def update(self, state: SACState, batch: Transition, key: jax.Array) -> tuple[SACState, dict]:
        """RLPD's update: `batch` holds utd x batch_size rows (leading dimension); `utd` critic
        steps on consecutive slices, then the actor and temperature on the last slice."""
        utd = self.config.utd
        slices = jax.tree.map(lambda x: x.reshape((utd, -1) + x.shape[1:]), batch)
        k_critic, k_actor = jax.random.split(key)

        def step(state, inputs):
            part, k = inputs
            return self.critic_step(state, part, k)

        state, critic_losses = jax.lax.scan(step, state, (slices, jax.random.split(k_critic, utd)))
        state, metrics = self.actor_step(state, jax.tree.map(lambda x: x[-1], slices), k_actor)
        return state, {**metrics, "critic_loss": critic_losses.mean()}


def ensemble_minimum(q: jax.Array, key: jax.Array, count: int) -> jax.Array:
    """The minimum over `count` critics drawn without replacement from the ensemble: q [E, B] -> [B]
    (the same draw for every row of the batch, as RLPD)."""
    chosen = jax.random.choice(key, q.shape[0], (count,), replace=False)
    return jnp.min(q[chosen], axis=0)
