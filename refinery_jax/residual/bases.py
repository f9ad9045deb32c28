"""Bases for residual learning, in the two forms the code needs:

- batched, for PPO's rollout (`ppo.base.BasePolicy`: every environment at once, a diffusion
  base re-planning only the environments whose queue ran out, `diffusion.chunks`);
- per environment, for the episode loop (`envs.episodes.Actor`, vmapped by evaluation).

`residual_actor(base_actor, model, scale)` is the base plus the trained residual as an
`Actor` (params: (base params, residual `Policy`, deterministic)), so evaluation, BO
fine-tuning and GMM deployment run a residual policy like any other.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from refinery_jax.diffusion.chunks import empty_queue, next_actions
from refinery_jax.diffusion.policy import DiffusionConfig, chunk_actor, make_planner
from refinery_jax.envs.episodes import Actor
from refinery_jax.ppo.base import BasePolicy, memoryless_base
from refinery_jax.ppo.networks import ActorCritic, Policy, initial_carry, policy_action, policy_actor


def diffusion_base(config: DiffusionConfig, action_size: int, scale: float = 0.1) -> BasePolicy:
    """A `DiffusionPolicy` (its params) as PPO's base: per-environment queues, restarted with each episode."""
    plan = make_planner(config, action_size)

    def act(policy, queue, obs, key):
        restart = jnp.zeros(obs.shape[0], bool)  # restarts were applied by `restart` when the episode ended
        return next_actions(functools.partial(plan, policy), key, queue, obs, restart)

    return BasePolicy(action_size=action_size, start=lambda batch: empty_queue(batch, config.execution, action_size),
                      act=act, restart=lambda queue, done: queue.replace(index=jnp.where(done, config.execution,
                                                                                         queue.index)),
                      scale=scale)


def diffusion_base_actor(config: DiffusionConfig, action_size: int) -> Actor:
    """The same base for one environment (params: the `DiffusionPolicy`)."""
    return chunk_actor(make_planner(config, action_size), config.execution, action_size)


def specialist_base(model: ActorCritic, obs_clip: float = 5.0, scale: float = 0.1) -> BasePolicy:
    """A memoryless PPO specialist's mean action as PPO's base (params: its `Policy`)."""
    if model.memory != "none":
        raise ValueError(f"a specialist base must be memoryless (an MLP actor); this one has memory {model.memory!r}")

    def act(policy: Policy, obs):
        _, mean = policy_action(model, policy, initial_carry(model, obs.shape[:-1], obs.shape[-1]), obs,
                                jax.random.key(0), True, obs_clip)
        return mean

    return memoryless_base(act, model.action_size, scale)


def specialist_base_actor(model: ActorCritic, obs_size: int, obs_clip: float = 5.0) -> Actor:
    """The specialist's mean action for one environment (params: its `Policy`)."""
    actor = policy_actor(model, obs_size, obs_clip)
    return Actor(start=lambda policy: actor.start((policy, True)),
                 act=lambda policy, carry, state, key: actor.act((policy, True), carry, state, key))


def residual_actor(base: Actor, model: ActorCritic, obs_size: int, scale: float = 0.1, obs_clip: float = 5.0) -> Actor:
    """Base action plus `scale` x the residual's action (its mean when deterministic), per environment.

    params: (base params, residual `Policy`, deterministic [] bool); `obs_size` is the
    environment's (the residual sees obs_size + action size)."""
    residual_input = obs_size + model.action_size

    def start(params):
        base_params, _, _ = params
        return base.start(base_params), initial_carry(model, (), residual_input)

    def act(params, carry, state, key):
        base_params, policy, deterministic = params
        base_carry, residual_carry = carry
        k_base, k_residual = jax.random.split(key)
        base_carry, base_action = base.act(base_params, base_carry, state, k_base)
        x = jnp.concatenate([state.obs, base_action], axis=-1)
        residual_carry, correction = policy_action(model, policy, residual_carry, x, k_residual, deterministic, obs_clip)
        return (base_carry, residual_carry), base_action + scale * correction

    return Actor(start=start, act=act)
