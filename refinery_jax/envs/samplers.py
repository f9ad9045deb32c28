"""Reset distributions (`key -> init`) and the auto-reset step that draws from them.

A sampler is a plain function of a key. Training, BO fine-tuning, GMM deployment and
evaluation differ only in which sampler they pass; nothing here caches a first state,
so every reset draws a fresh init.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvState

Sampler = Callable[[jax.Array], jax.Array]


def uniform_box(low, high) -> Sampler:
    """Uniform over the axis-aligned box [low, high] (each [d])."""
    if not any(isinstance(a, jax.core.Tracer) for a in (low, high)):  # validate concrete bounds
        lo, hi = np.asarray(low), np.asarray(high)
        if lo.shape != hi.shape or lo.ndim != 1 or np.any(lo > hi):
            raise ValueError(f"need 1-D low <= high of equal shape, got {lo} and {hi}")
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)

    def sample(key: jax.Array) -> jax.Array:
        return jax.random.uniform(key, low.shape, minval=low, maxval=high)

    return sample


def env_uniform(env: AssemblyEnv) -> Sampler:
    """The task's default reset distribution: uniform over its θ box."""
    return uniform_box(env.init_low, env.init_high)


def step_with_reset(env: AssemblyEnv, sampler: Sampler):
    """`(key, states, actions) -> (next_states, stepped)` for a batch [B].

    `stepped` is the plain result of `env.step`: its reward, flags and observations
    belong to the step just taken (a learner bootstraps from `stepped.critic_obs` at a
    time-limit truncation). `next_states` equals `stepped` except where an episode
    finished: there it is a new episode's first state, from a fresh `sampler` draw.

    A reset (IK included) costs a good part of a step, and with staggered episodes a few
    environments finish at every step, so only those are reset: up to `slots` of them
    (twice the average number per step, B / episode length, plus 2), packed into a small
    batch and scattered back. When more finish at once, the whole batch is reset.
    """
    batch_step = jax.vmap(env.step)
    reset = jax.vmap(env.reset)

    def fresh_states(key, count):
        key_init, key_reset = jax.random.split(key)
        inits = jax.vmap(sampler)(jax.random.split(key_init, count))
        return reset(jax.random.split(key_reset, count), inits)

    def step(key: jax.Array, states: EnvState, actions: jax.Array):
        stepped = batch_step(states, actions)
        done = stepped.done
        batch = actions.shape[0]
        slots = min(batch, 2 * -(-batch // env.config.episode_steps) + 2)
        finished = jnp.sum(done)

        def reset_all(stepped):
            fresh = fresh_states(key, batch)
            return jax.tree.map(lambda f, s: jnp.where(done.reshape(done.shape + (1,) * (s.ndim - 1)), f, s),
                                fresh, stepped)

        def reset_few(stepped):
            (where,) = jnp.nonzero(done, size=slots, fill_value=batch)  # out of range: dropped below
            fresh = fresh_states(key, slots)
            return jax.tree.map(lambda s, f: s.at[where].set(f, mode="drop"), stepped, fresh)

        branch = jnp.where(finished == 0, 0, jnp.where(finished <= slots, 1, 2))
        next_states = jax.lax.switch(branch, [lambda s: s, reset_few, reset_all], stepped)
        return next_states, stepped

    return step
