"""AutoMate's imitation reward, one environment at a time (vmap at the call site).

The learner keeps the last `history` fingertip positions (relative to the goal
fingertip, world axes: the frame of `Demos.assembly_paths()`) in its rollout state.
Against demonstration paths [N, T, 3] ordered from free space to the goal:

1. the anchor (oldest position of the window) is matched to its nearest demo point:
   demo n*, index k*;
2. the current position is matched to its nearest point of demo n* at or after k*:
   index k* + c;
3. the segment is demo n* from k* to k* + c (c points; for c = 0 the matched point
   twice), capped at `max_segment` points so every shape is static;
4. r_imit = (1 - tanh(max(sdtw(window / s, segment / s) / H, 0))) * (1 - k*/T),
   with positions measured in units of `length_scale` s (1 cm) and the soft-DTW
   divided by the window length H: the mean squared deviation from the demo, in s².

As in AutoMate, the progress weight 1 - k*/T is largest at the start of a demo (far
from the goal) and falls towards the goal; the dense and success terms reward the
goal itself. AutoMate compares positions in metres with γ = 0.01: a centimetre is then
1e-4 against a soft-min smoothing of order γ, so sdtw is dominated by the smoothing,
slightly negative whatever the path, and the reward barely depends on following the
demo (measured: a 1 cm offset changed it by < 0.01, or raised it). In units of s and
per window point, following the demo gives ~1 x the progress weight, a 1 cm offset
~0.3 x, and following it at half or twice its speed ~1 x (tests/test_soft_dtw.py).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from refinery_jax.imitation.soft_dtw import soft_dtw, soft_dtw_prefixes


@dataclasses.dataclass(frozen=True)
class ImitationConfig:
    """Static settings of the imitation reward (its weight lives with the traced reward weights)."""

    history: int = 10        # fingertip positions in the window (AutoMate: 10)
    gamma: float = 0.01      # soft-DTW smoothing (AutoMate: 0.01, squared Euclidean), in length_scale units
    length_scale: float = 0.01  # m: positions are compared in this unit (a deviation of one costs ~tanh(1))
    max_segment: int = 32    # longest demo segment compared (static shape)
    num_demos: int = 32      # disassembly attempts generated for the reference paths

    def __post_init__(self):
        if self.history < 2 or self.max_segment < 1 or self.num_demos < 1 or self.gamma <= 0 or self.length_scale <= 0:
            raise ValueError(f"bad imitation config: {self}")


class ImitationInfo(NamedTuple):
    reward: jax.Array   # [] r_imit
    sdtw: jax.Array     # [] soft-DTW between the window and the matched segment
    demo: jax.Array     # [] int, matched demo n*
    index: jax.Array    # [] int, matched start index k*


def fresh_window(position: jax.Array, history: int) -> jax.Array:
    """Window at an episode's start: the first position repeated. position [3] -> [H, 3]."""
    return jnp.broadcast_to(position, (history, position.shape[-1]))


def push_window(window: jax.Array, position: jax.Array) -> jax.Array:
    """Drop the oldest position, append the newest. window [H, 3], position [3] -> [H, 3]."""
    return jnp.concatenate([window[1:], position[None]], axis=0)


def imitation_reward(window: jax.Array, paths: jax.Array, gamma, max_segment: int,
                     length_scale: float = 0.01) -> ImitationInfo:
    """r_imit for one environment. window [H, 3] (oldest first), paths [N, T, 3] (towards the goal), in m."""
    window, paths = window / length_scale, paths / length_scale
    num_paths, length, dim = paths.shape
    anchor, current = window[0], window[-1]
    nearest = jnp.argmin(jnp.sum((paths - anchor) ** 2, axis=-1).ravel())
    demo, start = nearest // length, nearest % length
    path = paths[demo]

    steps = jnp.arange(length)
    to_current = jnp.where(steps >= start, jnp.sum((path - current) ** 2, axis=-1), jnp.inf)
    offset = jnp.argmin(to_current) - start  # c >= 0

    padded = jnp.concatenate([path, jnp.broadcast_to(path[-1], (max_segment, dim))])
    segment = jax.lax.dynamic_slice(padded, (start, 0), (max_segment, dim))
    by_prefix = soft_dtw_prefixes(window, segment, gamma)          # [max_segment]
    matched = by_prefix[jnp.clip(offset - 1, 0, max_segment - 1)]
    single = soft_dtw(window, jnp.stack([path[start], path[start]]), gamma)
    sdtw = jnp.where(offset == 0, single, matched)
    progress = 1.0 - start / length
    deviation = jnp.maximum(sdtw / window.shape[0], 0.0)
    return ImitationInfo(reward=(1.0 - jnp.tanh(deviation)) * progress, sdtw=sdtw, demo=demo, index=start)
