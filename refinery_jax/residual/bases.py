"""Bases for residual learning (`ppo.base.BasePolicy`), each in the two forms the code needs:

- batched, for PPO's rollout: every environment at once, a diffusion base re-planning only
  the environments whose queue ran out (`diffusion.chunks`);
- per environment, for the episode loop (`BasePolicy.actor`, an `envs.episodes.Actor`
  vmapped by evaluation).

A residual trained on one of them is then acted, evaluated, fine-tuned and deployed like any
PPO policy: `trainer.policy(state)` carries the base's parameters and
`ppo.networks.policy_actor(..., base=trainer.base)` / `evaluation.make_evaluate(..., base=...)`
add the base's action to the scaled correction.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from refinery_jax.diffusion.chunks import empty_queue, next_actions
from refinery_jax.diffusion.policy import DiffusionConfig, chunk_actor, make_planner
from refinery_jax.envs.episodes import Actor
from refinery_jax.ppo.base import BasePolicy, memoryless_base
from refinery_jax.ppo.networks import ActorCritic, Policy, initial_carry, policy_action


def diffusion_base(config: DiffusionConfig, action_size: int, scale: float = 0.1) -> BasePolicy:
    """A `DiffusionPolicy` (its params) as a base: per-environment queues, restarted with each episode."""
    plan = make_planner(config, action_size)

    def act(policy, queue, obs, key):
        restart = jnp.zeros(obs.shape[0], bool)  # restarts were applied by `restart` when the episode ended
        return next_actions(functools.partial(plan, policy), key, queue, obs, restart)

    return BasePolicy(action_size=action_size, start=lambda batch: empty_queue(batch, config.execution, action_size),
                      act=act, restart=lambda queue, done: queue.replace(index=jnp.where(done, config.execution,
                                                                                         queue.index)),
                      scale=scale, actor=diffusion_base_actor(config, action_size))


def diffusion_base_actor(config: DiffusionConfig, action_size: int) -> Actor:
    """The diffusion base for one environment (params: the `DiffusionPolicy`)."""
    return chunk_actor(make_planner(config, action_size), config.execution, action_size)


def specialist_base(model: ActorCritic, obs_clip: float = 5.0, scale: float = 0.1) -> BasePolicy:
    """A memoryless PPO specialist's mean action as a base (params: its `Policy`)."""
    if model.memory != "none":
        raise ValueError(f"a specialist base must be memoryless (an MLP actor); this one has memory {model.memory!r}")

    def act(policy: Policy, obs):
        _, mean = policy_action(model, policy, initial_carry(model, obs.shape[:-1], obs.shape[-1]), obs,
                                jax.random.key(0), True, obs_clip)
        return mean

    return memoryless_base(act, model.action_size, scale)
