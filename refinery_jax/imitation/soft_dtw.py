"""Soft dynamic time warping (Cuturi & Blondel 2017) in pure JAX.

    R[i, j] = D[i, j] + softmin_γ(R[i-1, j-1], R[i-1, j], R[i, j-1]),   R[-1, -1] = 0,
    softmin_γ(a) = -γ log Σ exp(-a / γ),

with D the squared Euclidean distance between x[i] and y[j]. As γ → 0 the soft
minimum becomes a hard one and soft-DTW becomes classic DTW. The recursion is run
one anti-diagonal at a time (cells i + j = d depend only on the two previous
anti-diagonals), so a `lax.scan` of n + m - 1 vector steps replaces the n·m loop.

Why not a library: ott-jax 0.6 has `ott.geometry.costs.SoftDTW` (it works with this
JAX), but it brings lineax and the optimal-transport toolbox for one recursion, and
it returns only the full-length value while the imitation reward needs soft-DTW
against every prefix of a demo segment; this module is the recursion alone. The
tests check it against a direct O(n·m) loop in numpy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """Pairwise squared Euclidean distances: x [n, d], y [m, d] -> [n, m]."""
    return jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)


def softmin(values: jax.Array, gamma, axis: int = -1) -> jax.Array:
    """-γ log Σ exp(-v/γ) along `axis`; +inf entries are ignored (all +inf gives +inf)."""
    return -gamma * jax.nn.logsumexp(-values / gamma, axis=axis)


def soft_dtw_prefixes(x: jax.Array, y: jax.Array, gamma) -> jax.Array:
    """Soft-DTW of x against every prefix of y.

    Args:
      x: [n, d] sequence. y: [m, d] sequence. gamma: [] smoothing (> 0, may be traced).
    Returns:
      [m] with entry j = soft-DTW(x, y[: j + 1]) (squared Euclidean ground cost).
    """
    cost = squared_distances(x, y)
    n, m = cost.shape
    # cost along anti-diagonal d at row i (column d - i), +inf outside the matrix: [n+m-1, n]
    d = jnp.arange(n + m - 1)[:, None]
    rows = jnp.arange(n)[None, :]
    cols = d - rows
    inside = (cols >= 0) & (cols < m)
    diag_cost = jnp.where(inside, cost[rows, jnp.clip(cols, 0, m - 1)], jnp.inf)

    # R on one anti-diagonal as a vector of n + 1 entries: entry k is row k - 1, so entry
    # 0 is the virtual row -1 (the border). Diagonal -2 holds only R[-1, -1] = 0;
    # diagonal -1 is all border (+inf).
    inf_row = jnp.full(n + 1, jnp.inf, cost.dtype)
    before_prev = inf_row.at[0].set(0.0)

    def next_diagonal(carry, c):
        two_back, one_back = carry
        up, left, diagonal = one_back[:-1], one_back[1:], two_back[:-1]
        best = softmin(jnp.stack([diagonal, up, left]), gamma, axis=0)
        new = jnp.concatenate([jnp.full(1, jnp.inf, cost.dtype), c + best])
        return (one_back, new), new[n]  # new[n] is row n - 1: the last row, column d - (n - 1)

    _, last_row = jax.lax.scan(next_diagonal, (before_prev, inf_row), diag_cost)
    return last_row[n - 1:]


def soft_dtw(x: jax.Array, y: jax.Array, gamma) -> jax.Array:
    """Soft-DTW discrepancy between x [n, d] and y [m, d] -> []."""
    return soft_dtw_prefixes(x, y, gamma)[-1]
