"""Reset distributions (`key -> init`) and the auto-reset step that draws from them.

A sampler is a plain function of a key. Training, BO fine-tuning, GMM deployment and
evaluation differ only in which sampler they pass; nothing here caches a first state,
so every reset draws a fresh init.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvState

Sampler = Callable[[jax.Array], jax.Array]


def uniform_box(low, high) -> Sampler:
    """Uniform over the axis-aligned box [low, high] (each [d])."""
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
    if low.shape != high.shape or low.ndim != 1 or bool(jnp.any(low > high)):
        raise ValueError(f"need 1-D low <= high of equal shape, got {low} and {high}")

    def sample(key: jax.Array) -> jax.Array:
        return jax.random.uniform(key, low.shape, minval=low, maxval=high)

    return sample


def env_uniform(env: AssemblyEnv) -> Sampler:
    """The task's default reset distribution: uniform over its θ box."""
    return uniform_box(env.init_low, env.init_high)


def step_with_reset(env: AssemblyEnv, sampler: Sampler):
    """`(key, states, actions) -> states` for a batch [B]: step, and restart finished episodes.

    Finished episodes restart from a fresh `sampler` draw. The state returned for a
    finished episode is the new episode's first state, with the finished step's reward,
    reward terms, success and termination flags kept so a learner still sees how the
    episode ended. Resets (IK included) cost about as much as a step, so they run only
    when some episode in the batch has finished.
    """
    batch_step = jax.vmap(env.step)

    def batch_reset(keys):
        keys_init, keys_reset = jnp.split(jax.vmap(jax.random.split)(keys), 2, axis=1)
        inits = jax.vmap(sampler)(keys_init[:, 0])
        return jax.vmap(env.reset)(keys_reset[:, 0], inits)

    def step(key: jax.Array, states: EnvState, actions: jax.Array) -> EnvState:
        stepped = batch_step(states, actions)

        def restart(stepped):
            fresh = batch_reset(jax.random.split(key, actions.shape[0]))
            fresh = fresh.replace(reward=stepped.reward, terms=stepped.terms, success=stepped.success,
                                  terminated=stepped.terminated, truncated=stepped.truncated)
            done = stepped.done
            return jax.tree.map(lambda f, s: jnp.where(done.reshape(done.shape + (1,) * (s.ndim - 1)), f, s),
                                fresh, stepped)

        return jax.lax.cond(jnp.any(stepped.done), restart, lambda s: s, stepped)

    return step
