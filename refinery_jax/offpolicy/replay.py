"""Replay for RLPD: a demonstration buffer and an online buffer, sampled half and half.

Storage and uniform sampling are flashbax's item buffers (a fixed-capacity ring of
transitions in JAX arrays, usable inside jit and scan); this module adds what RLPD and
SPARR need on top:
- `add_episode`: an episode's first `length` transitions, `length` traced (episodes end at
  success, so their lengths vary);
- `sample_half_and_half`: one batch for RLPD's `utd` critic updates in which every slice
  is half demonstrations, half online rows;
- `grows_demos`: SPARR's growth rule, an online episode joins the demonstrations when it
  succeeded in fewer steps than the median demonstration.
"""

from __future__ import annotations

import flashbax as fbx
import jax
import jax.numpy as jnp


def transition_buffer(capacity: int, sample_size: int):
    """A flashbax item buffer of single transitions that samples `sample_size` rows with replacement."""
    return fbx.make_item_buffer(max_length=capacity, min_length=1, sample_batch_size=sample_size, add_batches=False)


def add_episode(buffer, state, episode, length: jax.Array):
    """`state` with the first `length` rows of `episode` (a pytree of [T, ...] arrays) added, in order."""
    return jax.lax.fori_loop(0, length, lambda i, s: buffer.add(s, jax.tree.map(lambda x: x[i], episode)), state)


def sample_half_and_half(demo_buffer, demo_state, online_buffer, online_state, key: jax.Array, utd: int):
    """utd x batch rows (leading dimension), slice i = rows [i batch, (i+1) batch) holding batch/2
    demonstration rows then batch/2 online rows; both buffers sample utd x batch/2 rows."""
    k_demo, k_online = jax.random.split(key)
    demo = demo_buffer.sample(demo_state, k_demo).experience
    online = online_buffer.sample(online_state, k_online).experience

    def interleave(d, o):
        d, o = d.reshape((utd, -1) + d.shape[1:]), o.reshape((utd, -1) + o.shape[1:])
        both = jnp.concatenate([d, o], axis=1)
        return both.reshape((-1,) + both.shape[2:])

    return jax.tree.map(interleave, demo, online)


def grows_demos(success: jax.Array, length: jax.Array, demo_lengths: jax.Array) -> jax.Array:
    """Whether a finished episode joins the demonstrations: it succeeded, in fewer steps than
    the median of `demo_lengths` (the lengths of the episodes in the buffer; NaN = empty slot)."""
    return success & (length < jnp.nanmedian(demo_lengths))
