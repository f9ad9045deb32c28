"""`evaluate(policy, inits, key) -> EvalResult`: success over given initial conditions.

The single function the GP and the GMM consume: one fixed-length episode per row of
`inits` [N, d] (θ requested; the result holds the θ reached at reset, which is what
the GP and the GMM learn from: an arm's IK can miss), jitted and batched (a `lax.map` over batches of `batch_size`
vmapped episodes, so N is not limited by memory). Success is the environment's
success flag at the final step of the episode; an episode whose simulation diverged
(`terminated`) counts as a failure, and its length is the step it diverged. Episodes
run through `envs.episodes.run_episode`, the loop chained sequences and scripted runs use.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from refinery_jax.envs.assembly_env import AssemblyEnv
from refinery_jax.envs.episodes import Actor, run_episode
from refinery_jax.ppo.base import BasePolicy
from refinery_jax.ppo.networks import ActorCritic, Policy, policy_actor


class EvalResult(NamedTuple):
    inits: jax.Array     # [N, d] θ each episode started from: reached by IK, what success models learn from
    ik_residual: jax.Array  # [N] m, how far the tip reached is from the tip asked for
    success: jax.Array   # [N] bool, success at the final step
    returns: jax.Array   # [N] sum of the environment's reward (its own weights) until the episode ended
    lengths: jax.Array   # [N] int, steps until the episode ended (episode_steps unless it diverged)


def make_evaluate_actor(env: AssemblyEnv, actor: Actor, batch_size: int = 256, episode_steps: Optional[int] = None):
    """Build `evaluate(params, inits [N, d], key) -> EvalResult` (jitted) for any episode-loop
    `Actor` (a PPO policy, a chunked diffusion base, a base plus residual, a script).
    episode_steps: defaults to the environment's episode length (75 at 15 Hz x 5 s)."""

    def episode(params, key: jax.Array, init: jax.Array):
        out = run_episode(env, actor, params, key, init, steps=episode_steps)
        return EvalResult(inits=out.state.info.init, ik_residual=out.state.info.ik_residual, success=out.success,
                          returns=out.returns, lengths=out.length)

    @jax.jit
    def evaluate(params, inits: jax.Array, key: jax.Array) -> EvalResult:
        inits = jnp.asarray(inits, jnp.float32)
        if inits.ndim != 2 or inits.shape[1] != env.theta_size:
            raise ValueError(f"inits must be [N, {env.theta_size}] initial conditions θ, got shape {inits.shape}")
        n = inits.shape[0]
        keys = jax.random.split(key, n)
        run = jax.vmap(lambda k, i: episode(params, k, i))
        if n <= batch_size:
            return run(keys, inits)
        # pad to whole batches (one compiled batch shape, no remainder path), then drop the padding.
        # Batch j holds episodes j, j + m, j + 2m, ... (m batches): consecutive episodes stay in one
        # row of the [batch_size, m] layout, so a mesh's split of the episodes is a split of every batch.
        pad = -n % batch_size

        def batches(x):  # [n, ...] -> [m, batch_size, ...]
            x = jnp.concatenate([x, x[:pad]])
            return jnp.swapaxes(x.reshape((batch_size, -1) + x.shape[1:]), 0, 1)

        out = jax.lax.map(lambda xs: run(*xs), (batches(keys), batches(inits)))
        return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])[:n], out)

    return evaluate


def make_evaluate(env: AssemblyEnv, model: ActorCritic, batch_size: int = 256, obs_clip: float = 5.0,
                  episode_steps: Optional[int] = None, base: Optional[BasePolicy] = None):
    """Build `evaluate(policy, inits [N, 3], key, deterministic=True) -> EvalResult` for a PPO policy
    (`trainer.policy(state)`; with `base`, the trainer's, a residual on its frozen base).

    deterministic ([] bool, traced: both modes share one compile): act with the
    Gaussian's mean, or sample actions."""
    run = make_evaluate_actor(env, policy_actor(model, env.observation_size, obs_clip, base), batch_size, episode_steps)

    def evaluate(policy: Policy, inits: jax.Array, key: jax.Array, deterministic=True) -> EvalResult:
        return run((policy, jnp.asarray(deterministic, bool)), inits, key)

    return evaluate
