"""`evaluate(policy, inits, key) -> EvalResult`: success over given initial conditions.

The single function the GP and the GMM consume: one fixed-length episode per row of
`inits` [N, 3] (θ), jitted and batched (a `lax.map` over batches of `batch_size`
vmapped episodes, so N is not limited by memory). Success is the environment's
success flag at the final step of the episode; an episode whose simulation diverged
(`terminated`) counts as a failure, and its length is the step it diverged.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from refinery_jax.envs.assembly_env import AssemblyEnv
from refinery_jax.ppo.networks import ActorCritic, Policy, action_distribution
from refinery_jax.ppo.normalization import normalize


class EvalResult(NamedTuple):
    success: jax.Array   # [N] bool, success at the final step
    returns: jax.Array   # [N] sum of the environment's reward (its own weights) until the episode ended
    lengths: jax.Array   # [N] int, steps until the episode ended (episode_steps unless it diverged)


def make_evaluate(env: AssemblyEnv, model: ActorCritic, batch_size: int = 256, obs_clip: float = 5.0,
                  episode_steps: Optional[int] = None):
    """Build `evaluate(policy, inits [N, 3], key, deterministic=True) -> EvalResult` (jitted).

    deterministic ([] bool, traced: both modes share one compile): act with the
    Gaussian's mean, or sample actions. episode_steps: defaults to the environment's
    episode length (75 at 15 Hz x 5 s).
    """
    steps = env.config.episode_steps if episode_steps is None else episode_steps

    def episode(policy: Policy, deterministic: jax.Array, key: jax.Array, init: jax.Array):
        k_reset, k_act = jax.random.split(key)
        state = env.reset(k_reset, init)

        def body(carry, k):
            state, ret, length, alive = carry
            mean, log_std = model.apply(policy.params, normalize(policy.obs_stats, state.obs, obs_clip),
                                        method=ActorCritic.policy)
            action = jnp.where(deterministic, mean, action_distribution(mean, log_std).sample(seed=k))
            state = env.step(state, action)
            ret = ret + jnp.where(alive, state.reward, 0.0)
            length = length + alive.astype(jnp.int32)
            return (state, ret, length, alive & ~state.terminated), None

        carry = (state, jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.ones((), bool))
        (state, ret, length, alive), _ = jax.lax.scan(body, carry, jax.random.split(k_act, steps))
        return EvalResult(success=state.success & alive, returns=ret, lengths=length)

    @jax.jit
    def evaluate(policy: Policy, inits: jax.Array, key: jax.Array, deterministic=True) -> EvalResult:
        inits = jnp.asarray(inits, jnp.float32)
        if inits.ndim != 2 or inits.shape[1] != 3:
            raise ValueError(f"inits must be [N, 3] initial conditions θ, got shape {inits.shape}")
        n = inits.shape[0]
        keys = jax.random.split(key, n)
        deterministic = jnp.asarray(deterministic, bool)
        run = jax.vmap(lambda k, i: episode(policy, deterministic, k, i))
        if n <= batch_size:
            return run(keys, inits)
        # pad to whole batches (one compiled batch shape, no remainder path), then drop the padding
        pad = -n % batch_size
        keys, inits = (jnp.concatenate([x, x[:pad]]) for x in (keys, inits))
        out = jax.lax.map(lambda xs: run(*xs), (keys.reshape(-1, batch_size), inits.reshape(-1, batch_size, 3)))
        return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:n], out)

    return evaluate
