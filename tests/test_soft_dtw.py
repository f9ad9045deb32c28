"""Soft-DTW against a direct O(n·m) dynamic programme, and the imitation reward built on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.imitation import (
    fresh_window,
    imitation_reward,
    push_window,
    soft_dtw,
    soft_dtw_prefixes,
)


def reference_soft_dtw(x, y, gamma):
    """Textbook recursion in float64; gamma = 0 gives classic DTW (hard minimum)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    r = np.full((n + 1, m + 1), np.inf)
    r[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            prev = np.array([r[i - 1, j - 1], r[i - 1, j], r[i, j - 1]])
            if gamma == 0:
                best = prev.min()
            else:
                finite = prev[np.isfinite(prev)]
                lo = finite.min()
                best = lo - gamma * np.log(np.sum(np.exp(-(finite - lo) / gamma)))
            r[i, j] = np.sum((x[i - 1] - y[j - 1]) ** 2) + best
    return r[n, m]


def _pair(seed, n, m, d=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(m, d)).astype(np.float32)


@pytest.mark.parametrize("n,m", [(1, 1), (1, 4), (4, 1), (3, 5), (6, 6), (10, 7)])
@pytest.mark.parametrize("gamma", [0.01, 0.1, 1.0])
def test_soft_dtw_matches_reference(n, m, gamma):
    x, y = _pair(n * 10 + m, n, m)
    expected = reference_soft_dtw(x, y, gamma)
    assert float(soft_dtw(x, y, gamma)) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_hand_computed_two_by_two():
    # 1-D: x = [0, 1], y = [0, 2]. D = [[0, 4], [1, 1]]; classic DTW takes the diagonal: 0 + 1 = 1
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    assert float(soft_dtw(x, y, 1e-4)) == pytest.approx(1.0, abs=1e-3)
    # with gamma = 1: R11 = 0, R12 = 4, R21 = 1, R22 = 1 + softmin(0, 4, 1)
    softmin = -np.log(np.exp(0.0) + np.exp(-4.0) + np.exp(-1.0))
    assert float(soft_dtw(x, y, 1.0)) == pytest.approx(1.0 + softmin, abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_small_gamma_limit_is_classic_dtw(seed):
    x, y = _pair(seed, 7, 9)
    classic = reference_soft_dtw(x, y, 0.0)
    # soft-min undershoots the min by at most γ log 3 per cell on the path
    assert float(soft_dtw(x, y, 1e-4)) == pytest.approx(classic, abs=1e-4 * np.log(3) * 16 + 1e-4)
    assert float(soft_dtw(x, y, 1e-2)) < classic  # smoothing lowers the value


def test_dtw_ignores_repetitions_in_the_limit():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 1.0]], np.float32)
    stretched = np.repeat(x, [1, 3, 2], axis=0)
    assert float(soft_dtw(x, stretched, 1e-5)) == pytest.approx(0.0, abs=1e-3)
    assert float(soft_dtw(x, x[::-1], 1e-5)) > 1.0


def test_prefixes_are_soft_dtw_of_each_prefix():
    x, y = _pair(7, 5, 8)
    prefixes = np.asarray(soft_dtw_prefixes(x, y, 0.05))
    for j in range(8):
        assert prefixes[j] == pytest.approx(reference_soft_dtw(x, y[: j + 1], 0.05), rel=1e-4, abs=1e-4)


def test_jit_vmap_and_traced_gamma():
    xs = np.stack([_pair(s, 4, 6)[0] for s in range(3)])
    ys = np.stack([_pair(s, 4, 6)[1] for s in range(3)])
    gammas = jnp.array([0.01, 0.1, 1.0])
    batched = jax.jit(jax.vmap(soft_dtw))(xs, ys, gammas)
    for b in range(3):
        assert float(batched[b]) == pytest.approx(reference_soft_dtw(xs[b], ys[b], float(gammas[b])), rel=1e-4)


def test_agrees_with_ott_if_installed():
    costs = pytest.importorskip("ott.geometry.costs")
    x, y = _pair(3, 6, 9)
    assert float(soft_dtw(x, y, 0.1)) == pytest.approx(float(costs.SoftDTW(0.1)(x, y)), rel=1e-4)


# ---------------------------------------------------------------------------
# imitation reward
# ---------------------------------------------------------------------------

def reference_imitation(window, paths, gamma, max_segment, scale=0.01):
    """AutoMate's matching, written as loops in numpy (positions in units of `scale`)."""
    window, paths = window / scale, paths / scale
    num, length, _ = paths.shape
    best = (np.inf, 0, 0)
    for n in range(num):
        for t in range(length):
            dist = np.sum((paths[n, t] - window[0]) ** 2)
            if dist < best[0]:
                best = (dist, n, t)
    _, demo, start = best
    path = paths[demo]
    dists = [np.sum((path[t] - window[-1]) ** 2) for t in range(start, length)]
    offset = int(np.argmin(dists))
    if offset == 0:
        segment = np.stack([path[start], path[start]])
    else:
        padded = np.concatenate([path, np.repeat(path[-1:], max_segment, 0)])
        segment = padded[start: start + min(offset, max_segment)]
    sdtw = reference_soft_dtw(window, segment, gamma)
    return (1 - np.tanh(max(sdtw / len(window), 0.0))) * (1 - start / length), demo, start


def _demo_paths(seed, num=3, length=20):
    rng = np.random.default_rng(seed)
    ends = rng.uniform(-0.05, 0.05, size=(num, 1, 3)) + np.array([0, 0, 0.05])
    s = np.linspace(1.0, 0.0, length)[None, :, None]
    return (ends * s + 0.002 * rng.normal(size=(num, length, 3))).astype(np.float32)  # towards 0


@pytest.mark.parametrize("seed", range(5))
def test_imitation_reward_matches_loop_reference(seed):
    paths = _demo_paths(seed)
    rng = np.random.default_rng(100 + seed)
    # a window that follows demo 1 for a few steps, plus noise
    start = rng.integers(0, 8)
    window = (paths[1, start: start + 10] + 0.001 * rng.normal(size=(10, 3))).astype(np.float32)
    info = imitation_reward(jnp.asarray(window), jnp.asarray(paths), 0.01, 8)
    reward, demo, k = reference_imitation(window, paths, 0.01, 8)
    assert int(info.demo) == demo and int(info.index) == k
    assert float(info.reward) == pytest.approx(reward, rel=1e-4, abs=1e-5)


def test_imitation_reward_prefers_following_the_demo_and_is_vmappable():
    paths = _demo_paths(0)
    on_path = jnp.asarray(paths[0, 2:12])
    off_path = on_path + jnp.array([0.05, -0.05, 0.0])  # 7 cm away from every demo point
    rewards = jax.jit(jax.vmap(lambda w: imitation_reward(w, jnp.asarray(paths), 0.01, 16).reward))(
        jnp.stack([on_path, off_path]))
    # the progress weight: matched at index 2 of 20 -> 0.9; following the demo keeps nearly all of it
    assert float(rewards[0]) == pytest.approx(0.9, abs=0.05)
    assert float(rewards[1]) < 0.01


def test_imitation_reward_is_sensitive_to_a_centimetre_not_to_speed():
    """Following the demo earns the progress weight; 1 cm off it, ~30 % of it; and following it at
    half or twice the demo's speed (a segment of 5 or 20 points for a 10-point window) earns about
    what following it at its own speed does. In metres with γ = 0.01 (AutoMate's units) the 1 cm
    offset would cost almost nothing: the soft-min smoothing, not the distance, sets soft-DTW."""
    length = 60
    s = np.linspace(1.0, 0.0, length)[:, None]
    paths = jnp.asarray((np.array([[0.02, -0.03, 0.06]]) * s)[None].astype(np.float32))  # one straight demo, 7 cm
    window = paths[0, 10:20]
    reward = lambda w, scale=0.01: float(imitation_reward(w, paths, 0.01, 32, scale).reward)  # noqa: E731
    progress = 1 - 10 / length
    assert reward(window) == pytest.approx(progress, rel=0.05)
    assert reward(window + jnp.array([0.01, 0.0, 0.0])) < 0.35 * progress  # measured: 0.29 x
    for faster in (paths[0, 10:30:2], paths[0, 10:15].repeat(2, axis=0)):  # 20 or 5 demo points
        assert reward(faster) > 0.8 * progress
    # AutoMate's units: the same centimetre barely matters
    metres = reward(window, 1.0), reward(window + jnp.array([0.01, 0.0, 0.0]), 1.0)
    assert metres[0] - metres[1] < 0.01


def test_window_helpers():
    w = fresh_window(jnp.array([1.0, 2.0, 3.0]), 4)
    assert w.shape == (4, 3) and bool(jnp.all(w == jnp.array([1.0, 2.0, 3.0])))
    w = push_window(w, jnp.array([9.0, 9.0, 9.0]))
    assert bool(jnp.all(w[-1] == 9.0)) and bool(jnp.all(w[:3] == jnp.array([1.0, 2.0, 3.0])))
