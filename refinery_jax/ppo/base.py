"""A frozen base policy under the PPO policy, which then learns a residual (ResiP).

With a base, the PPO actor observes [observation, base action] and its (Gaussian) action
is a correction: the environment receives `base action + scale * residual`. The base is
any batched policy with its own per-environment state (a diffusion base's action queues,
or nothing for a memoryless `obs -> action` policy); its parameters are a traced input of
the trainer (`init(key, hparams, base_params)`), never trained.

    start(batch) -> carry                              the base's state for `batch` environments
    act(params, carry, obs [B, O], key) -> (actions [B, A], carry)
    restart(carry, done [B]) -> carry                  environments whose episode just ended start afresh
    actor                                              the same base for one environment (`envs.episodes.Actor`,
                                                       params: the base's), so evaluation and Refinery run base +
                                                       residual (`ppo.networks.policy_actor`)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from refinery_jax.envs.episodes import Actor


class BasePolicy(NamedTuple):
    action_size: int
    start: Callable[[int], Any]
    act: Callable[[Any, Any, jax.Array, jax.Array], tuple]
    restart: Callable[[Any, jax.Array], Any]
    scale: float = 0.1   # the residual's scale (ResiP: 0.1)
    actor: Optional[Actor] = None  # per environment, for the episode loop (None: training only)


def memoryless_base(act: Callable[[Any, jax.Array], jax.Array], action_size: int, scale: float = 0.1) -> BasePolicy:
    """A base from `act(params, obs [..., O]) -> actions [..., A]` (e.g. a PPO specialist's mean
    action), batched for PPO and per environment for the episode loop."""
    actor = Actor(start=lambda params: jnp.zeros(0), act=lambda params, carry, state, key: (carry, act(params, state.obs)))
    return BasePolicy(action_size=action_size, start=lambda batch: jnp.zeros((batch, 0)),
                      act=lambda params, carry, obs, key: (act(params, obs), carry),
                      restart=lambda carry, done: carry, scale=scale, actor=actor)
