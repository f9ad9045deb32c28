"""One fixed-length episode under any actor: the rollout loop of evaluation, chained
sequences and scripted runs (PPO's training rollout, with auto-resets, is `ppo.train`'s).

An `Actor` is a pair of pure functions: `start(params) -> carry` (its memory at the
start of an episode: an LSTM state, an observation history, or nothing) and
`act(params, carry, state, key) -> (carry, action)`. `run_episode` resets the
environment (from `init`, optionally from a chained `StageStart`), acts for `steps`
control steps and summarises the episode; vmap it over keys and inits for batches.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvState, StageStart, max_penetration


class Actor(NamedTuple):
    start: Callable[[Any], Any]                                   # params -> carry
    act: Callable[[Any, Any, EnvState, jax.Array], tuple]        # (params, carry, state, key) -> (carry, action)


class Episode(NamedTuple):
    state: EnvState             # the final state
    success: jax.Array          # [] bool: success at the last step, and the simulation never diverged
    returns: jax.Array          # [] sum of the environment's reward until the episode ended
    length: jax.Array           # [] int steps until it ended (the episode length unless it diverged)
    penetration: jax.Array      # [] deepest contact penetration seen (m; MJX only, NaN on the C backend)
    displacement: jax.Array     # [] largest loose-part displacement from assembled over the episode (m; 0 if none)
    trajectory: Any = None      # with record=True: (observations [steps, O] the actor saw, actions [steps, A])


def run_episode(env: AssemblyEnv, actor: Actor, params, key: jax.Array, init: jax.Array,
                start: Optional[StageStart] = None, steps: Optional[int] = None, record: bool = False) -> Episode:
    """Reset at `init` (and `start`), act for `steps` (default the episode length), summarise;
    with `record`, also return the observation before each action and the action.

    An episode whose simulation diverged counts as a failure and stops accumulating at
    that step (the environment keeps stepping its safe fallback state to the end).
    """
    steps = env.config.episode_steps if steps is None else steps
    k_reset, k_act = jax.random.split(key)
    state = env.reset(k_reset, init, start)
    penetration = max_penetration if env.backend_name == "mjx" else (lambda physics: jnp.full((), jnp.nan))

    def body(carry, k):
        state, memory, ret, length, alive, deepest, moved = carry
        memory, action = actor.act(params, memory, state, k)
        seen = (state.obs, action) if record else None
        state = env.step(state, action)
        ret = ret + jnp.where(alive, state.reward, 0.0)
        length = length + alive.astype(jnp.int32)
        deepest = jnp.maximum(deepest, penetration(state.physics))
        moved = jnp.maximum(moved, env.prior_part_displacement(state.physics))
        return (state, memory, ret, length, alive & ~state.terminated, deepest, moved), seen

    zero = jnp.zeros(())
    carry = (state, actor.start(params), zero, jnp.zeros((), jnp.int32), jnp.ones((), bool), zero,
             env.prior_part_displacement(state.physics))
    (state, _, ret, length, alive, deepest, moved), seen = jax.lax.scan(body, carry, jax.random.split(k_act, steps))
    return Episode(state=state, success=state.success & alive, returns=ret, length=length, penetration=deepest,
                   displacement=moved, trajectory=seen)


def memoryless(act: Callable[[Any, EnvState, jax.Array], jax.Array]) -> Actor:
    """An `Actor` from `act(params, state, key) -> action` (a script, a constant action)."""
    return Actor(start=lambda params: jnp.zeros(0), act=lambda params, carry, state, key: (carry, act(params, state, key)))
