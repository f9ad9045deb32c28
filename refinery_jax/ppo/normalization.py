"""Running mean / variance of observations (part of the train state, saved in checkpoints)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RunningStats:
    mean: jax.Array   # [d]
    var: jax.Array    # [d]
    count: jax.Array  # [] number of samples seen (float, starts at a tiny prior)


def init_stats(size: int) -> RunningStats:
    return RunningStats(mean=jnp.zeros(size), var=jnp.ones(size), count=jnp.asarray(1e-4, jnp.float32))


def update_stats(stats: RunningStats, batch: jax.Array) -> RunningStats:
    """Merge a batch [N, d] into the statistics (Chan et al.'s parallel update)."""
    batch = batch.reshape(-1, stats.mean.shape[-1])
    n = batch.shape[0]
    batch_mean, batch_var = jnp.mean(batch, axis=0), jnp.var(batch, axis=0)
    total = stats.count + n
    delta = batch_mean - stats.mean
    mean = stats.mean + delta * n / total
    m2 = stats.var * stats.count + batch_var * n + delta ** 2 * stats.count * n / total
    return RunningStats(mean=mean, var=m2 / total, count=total)


def normalize(stats: RunningStats, x: jax.Array, clip: float = 5.0) -> jax.Array:
    """clip((x - mean) / sqrt(var + 1e-5), ±clip), as rl_games. x [..., d]."""
    return jnp.clip((x - stats.mean) / jnp.sqrt(stats.var + 1e-5), -clip, clip)
